"""OTLP requests -> column batches (Arrow) for the landing.

One pass over each span's attributes does everything: it builds the raw-attribute dict (kept
as JSON), looks every name up once in the alias table, and keeps the best-ranked value per
canonical field. Rows are tuples, transposed once per batch with `zip(*rows)` and converted to
Arrow with explicit types: no per-span dicts of columns, no type inference.

A span or log record that cannot be stored faithfully (bad ids, a start in the far future,
negative token counts, absurd attribute sizes, a usage row without id) is rejected on its own;
the request still lands the rest and reports a partial success with the reasons.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from comptroller import semconv as sc
from comptroller.analytics import _tables as tables
from comptroller.analytics._tables import arrow_schema
from comptroller.collector._aliases import (
    AGENT_MARKERS,
    ALIASES,
    COST_KEYS,
    EXCLUSIVE_INPUT,
    FINISH_REASON_KEYS,
    INT_FIELDS,
    LEAF_OPERATIONS,
    OPERATION_ALIASES,
    STR_FIELDS,
    TOKEN_FIELDS,
    attribute_dialect,
    canonical_operation,
    canonical_provider,
    scope_dialect,
)
from comptroller.pricing import UNPRICED_SOURCE, Pricer, Usage

_SCALAR: Final = frozenset({"string_value", "int_value", "double_value", "bool_value"})
_KINDS: Final = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS: Final = ("UNSET", "OK", "ERROR")
_STR = pa.string()

# --- Arrow schemas of the batches: declared once, with the tables, in analytics/_tables.py --
SPANS_SCHEMA: Final = arrow_schema(tables.SPANS)
USAGE_SCHEMA: Final = arrow_schema(tables.LLM_USAGE)
DERIVE_SCHEMA: Final = arrow_schema(tables.LLM_USAGE, extra=(("parent_span_id", _STR),))
"""Usage rows derived from third-party GenAI spans; the landing decides which are kept."""
CIRCUIT_SCHEMA: Final = arrow_schema(tables.CIRCUIT_EVENTS)
PROFILE_SCHEMA: Final = arrow_schema(tables.PROFILE_EVENTS)
BUDGET_SCHEMA: Final = arrow_schema(tables.BUDGET_EVENTS)

TABLE_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "spans": SPANS_SCHEMA,
    "llm_usage": USAGE_SCHEMA,
    "derive": DERIVE_SCHEMA,
    "circuit_events": CIRCUIT_SCHEMA,
    "profile_events": PROFILE_SCHEMA,
    "budget_events": BUDGET_SCHEMA,
}

_CIRCUIT_EVENTS: Final = {
    sc.EVENT_CIRCUIT_OPENED: "opened",
    sc.EVENT_CIRCUIT_HALF_OPENED: "half_opened",
    sc.EVENT_CIRCUIT_CLOSED: "closed",
}
_PROFILE_EVENTS: Final = {
    sc.EVENT_PROFILE_ACTIVATED: "activated",
    sc.EVENT_PROFILE_ROLLED_BACK: "rolled_back",
    sc.EVENT_PROFILE_WARNING: "warning",
    sc.EVENT_PURPOSE_UPGRADED: "purpose_upgraded",
}
_BUDGET_EVENTS: Final = {
    sc.EVENT_BUDGET_WARNING: "warning",
    sc.EVENT_BUDGET_EXCEEDED: "exceeded",
    sc.EVENT_BUDGET_REJECTED: "rejected",
}

_LOG_TABLES: Final = {
    sc.EVENT_USAGE: "llm_usage",
    **dict.fromkeys(_CIRCUIT_EVENTS, "circuit_events"),
    **dict.fromkeys(_PROFILE_EVENTS, "profile_events"),
    **dict.fromkeys(_BUDGET_EVENTS, "budget_events"),
}
"""The table each kind of log record lands in (for the quarantine of a rejected one)."""


LEAF_FLAG: Final = 1
"""A GenAI inference span (chat, text_completion, generate_content, embeddings)."""
COMPTROLLER_FLAG: Final = 2
"""A span of comptroller's own control plane."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What the normaliser accepts per span or record."""

    max_future_s: float = 86_400.0
    """A start more than this far ahead of the collector's clock is rejected."""
    max_attribute_bytes: int = 1 << 20
    """Largest single attribute value of a span (a span over this in total is inspected)."""
    max_span_attributes: int = 1024
    """Most attributes a span (or its resource) may hold; a span over it is rejected."""
    max_record_attribute_bytes: int = 1 << 20
    """Largest single attribute value of a log record."""
    max_record_attributes: int = 1024
    """Most attributes a log record (or its resource) may hold; a record over it is rejected."""
    max_spans: int = 16_384
    """Most spans one trace export may hold; every span of a bigger one is rejected."""
    max_records: int = 16_384
    """Most log records one log export may hold; every record of a bigger one is rejected."""
    max_resource_fanout_bytes: int = 64 << 20
    """A resource's attributes (JSON) times its spans: each span row stores them, so a big
    resource on many spans would cost gigabytes from a request of megabytes. Over it, the
    resource's spans are rejected."""


@dataclass(kw_only=True)
class Batch:
    """What one request (or one SDK export) becomes: Arrow tables plus the verdicts."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    """Table name (`spans`, `llm_usage`, `derive`, `*_events`) -> rows to land."""
    accepted: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    genai_refs: list[tuple[bytes, bytes | None, int]] = field(default_factory=list)
    """(key, parent key, flags) of leaf and comptroller GenAI spans, for the counting rules.
    A span's key is its trace id and span id, raw (24 bytes); its parent's key is the trace
    id and the parent span id (None without a parent)."""
    usage_refs: list[bytes] = field(default_factory=list)
    """Key of the span of each comptroller usage row (that names a valid span)."""
    derive_refs: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    """(key, parent key) of each derived candidate, in the order of `tables["derive"]`."""
    quarantine: list[tuple[str | None, str, str, str | None, dict[str, Any]]] = field(
        default_factory=list
    )
    """(table, reason, detail, scope, raw attributes) of each record rejected with its
    attributes: `collector/_validate.py` makes them `rejected_records` rows."""

    @property
    def rows(self) -> int:
        """Rows to land, over every table."""
        return sum(table.num_rows for table in self.tables.values())

    @property
    def nbytes(self) -> int:
        """Arrow memory of the rows to land, over every table."""
        return sum(table.get_total_buffer_size() for table in self.tables.values())

    def reject(
        self,
        reason: str,
        example: str,
        *,
        table: str | None = None,
        scope: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Count one rejected span or record (kept for quarantine when `attributes` is given)."""
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.examples.setdefault(reason, example)
        if attributes is not None:
            self.quarantine.append((table, reason, example, scope, attributes))

    def message(self) -> str:
        """The partial-success message: each reason with its count and one example."""
        return "; ".join(
            f"{count} rejected for {reason} ({self.examples[reason]})"
            for reason, count in sorted(self.reasons.items())
        )


class _Reject(Exception):
    def __init__(self, reason: str, example: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.example = example


def _complex(value: Any, which: str | None) -> Any:
    if which == "array_value":
        out = []
        for item in value.array_value.values:
            w = item.WhichOneof("value")
            out.append(getattr(item, w) if w in _SCALAR else _complex(item, w))
        return out
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def _value(value: Any) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which in _SCALAR else _complex(value, which)


def _attrs(kvs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        w = v.WhichOneof("value")
        out[kv.key] = getattr(v, w) if w in _SCALAR else _complex(v, w)
    return out


def _dumps(value: object) -> str:
    # orjson writes NaN/inf as null: the JSON column never receives invalid JSON.
    return orjson.dumps(value).decode()


_I64_MAX: Final = (1 << 63) - 1
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1


def _as_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if type(value) is int:
        out = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit()
    ):
        out = int(value)
    else:
        raise _Reject("bad_token_value", f"{name}={value!r} is not an integer")
    if out < 0:
        raise _Reject("negative_tokens", f"{name}={out} is negative")
    if out > _I64_MAX:  # a string of digits: Arrow's int64 column could not hold it
        raise _Reject("token_overflow", f"{name}={out} does not fit a 64-bit integer")
    return out


def _opt_int(value: Any) -> int | None:
    """An INTEGER column's value (None when not a number); out of its range is rejected."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not _I32_MIN <= out <= _I32_MAX:
        raise _Reject("int_out_of_range", f"{value!r} does not fit a 32-bit integer column")
    return out


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


_NO_ATTRIBUTION: Final = (None,) * 6
"""A derived row's fee cost, fees, user, session, feature and tags: not read from spans."""

REPORTED_SOURCE: Final = "reported"
"""`price_source` of a derived row no price was known for, costed at what its span reported
(`gen_ai.usage.cost`, `comptroller.cost.usd`)."""


def reported_cost(value: float | None) -> str | None:
    """A span's reported cost as the decimal text of a derived row's cost, or None when it
    is absent or could not be a cost (not finite, negative, beyond DECIMAL(20, 10))."""
    if value is None or not math.isfinite(value) or value < 0 or value >= 1e10:
        return None
    return format(Decimal(repr(value)), "f")


def _decimal_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _Reject("bad_decimal", f"{name}={value!r} is not a decimal") from None
    if not number.is_finite():
        raise _Reject("bad_decimal", f"{name}={value!r} is not finite")
    return str(number)


def _check_sizes(attrs: dict[str, Any], limit: int) -> None:
    for key, value in attrs.items():
        size = len(value) if isinstance(value, str | list) else 0
        if isinstance(value, list):
            size = sum(len(v) if isinstance(v, str) else 8 for v in value)
        if size > limit:
            raise _Reject("attribute_too_large", f"{key} holds {size} bytes, the limit is {limit}")


def _reject_all(batch: Batch, count: int, reason: str, example: str) -> None:
    """Reject `count` spans or records at once: their request or resource is over a limit."""
    if count:
        batch.rejected += count
        batch.reasons[reason] = batch.reasons.get(reason, 0) + count
        batch.examples.setdefault(reason, example)


_FIELD_NAMES: Final = (*STR_FIELDS, *INT_FIELDS)
_FIELD_INDEX: Final = {name: i for i, name in enumerate(_FIELD_NAMES)}
_ALIAS_INDEX: Final[dict[str, tuple[tuple[int, int], ...]]] = {
    key: tuple((_FIELD_INDEX[name], prio) for name, prio in hits) for key, hits in ALIASES.items()
}
_NO_PRIO: Final = [1 << 30] * len(_FIELD_NAMES)
_NO_VAL: Final[list[Any]] = [None] * len(_FIELD_NAMES)
_STR_IDX: Final = tuple(_FIELD_INDEX[name] for name in STR_FIELDS)
_TOKEN_IDX: Final = tuple(_FIELD_INDEX[name] for name in TOKEN_FIELDS)
_EXPECT: Final = tuple(
    "string_value" if name in STR_FIELDS else "int_value" for name in _FIELD_NAMES
)
_OPERATION: Final = _FIELD_INDEX["operation"]
_PROVIDER: Final = _FIELD_INDEX["provider"]
_REQUEST_MODEL: Final = _FIELD_INDEX["request_model"]
_RESPONSE_MODEL: Final = _FIELD_INDEX["response_model"]
_RESPONSE_ID: Final = _FIELD_INDEX["response_id"]
_ERROR_TYPE: Final = _FIELD_INDEX["error_type"]
_SERVER: Final = _FIELD_INDEX["server_address"]
_PURPOSE: Final = _FIELD_INDEX["purpose"]
_TENANT: Final = _FIELD_INDEX["tenant"]
_ORG: Final = _FIELD_INDEX["org"]
_CONTEXT: Final = _FIELD_INDEX["context"]
_PROFILE_ID: Final = _FIELD_INDEX["profile_id"]
_OUTCOME: Final = _FIELD_INDEX["outcome"]
_SEMCONV: Final = _FIELD_INDEX["semconv_version"]
_INPUT: Final = _FIELD_INDEX["input_tokens"]
_OUTPUT: Final = _FIELD_INDEX["output_tokens"]
_CACHE_READ: Final = _FIELD_INDEX["cache_read_tokens"]
_CACHE_WRITE: Final = _FIELD_INDEX["cache_write_tokens"]
_REASONING: Final = _FIELD_INDEX["reasoning_tokens"]
_PROFILE_VERSION: Final = _FIELD_INDEX["profile_version"]
_ATTEMPT: Final = _FIELD_INDEX["attempt"]
_FALLBACK: Final = _FIELD_INDEX["fallback_depth"]
_OPERATIONS: Final = OPERATION_ALIASES
_PROVIDERS: dict[str, str | None] = {}
"""Memo of canonical provider names (a handful of distinct values)."""
_GENAI_NONE: Final = (None,) * 25
"""dialect … outcome: the GenAI columns of a plain span."""


class _Coerce:
    """A value whose type is not its field's: converted after the hot loop (rare)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _coerce_all(vals: list[Any]) -> None:
    for i, x in enumerate(vals):
        if type(x) is not _Coerce:
            continue
        raw = x.value
        if i in _STR_IDX:
            vals[i] = None if raw is None else str(raw)
        elif i in _TOKEN_IDX:
            vals[i] = raw  # validated (and rejected if bad) with the other token counts
        else:
            vals[i] = _opt_int(raw)


class Normaliser:
    """Turns decoded OTLP requests into `Batch`es; stateless but for the price cache.

    Args:
        limits: What a span or record may hold.
        prices: The shared pricer (default: genai-prices, no fallback registry).
        clock_ns: Wall clock in ns since the epoch (injectable for tests).
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        prices: Pricer | None = None,
        clock_ns: Any = time.time_ns,
    ) -> None:
        self.limits = limits or Limits()
        self.prices = prices or Pricer()
        self._clock_ns = clock_ns

    def now_ns(self) -> int:
        """The normaliser's clock: ns since the epoch."""
        return int(self._clock_ns())

    def latest_ns(self) -> int:
        """The latest start or timestamp accepted now (ns since the epoch); later is rejected."""
        return int(self._clock_ns()) + int(self.limits.max_future_s * 1e9)

    # --- traces ------------------------------------------------------------------------------
    def traces(self, request: ExportTraceServiceRequest, *, size: int | None = None) -> Batch:
        """Normalise one trace export into span rows and derived usage candidates.

        Args:
            request: The decoded export.
            size: Its encoded size in bytes, if known (else measured: ~2 µs a span).
        """
        batch = Batch()
        rows: list[tuple[Any, ...]] = []
        derived: list[tuple[Any, ...]] = []
        max_start = self.latest_ns()
        limits = self.limits
        max_attr = limits.max_attribute_bytes
        max_count = limits.max_span_attributes
        # Over the span limit, every span is rejected unread: a hostile request of many
        # spans costs a count, not a normalisation.
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        if spans > limits.max_spans:
            _reject_all(
                batch,
                spans,
                "too_many_spans",
                f"the request holds {spans} spans, the limit is {limits.max_spans}: "
                "send smaller batches",
            )
            return batch
        # No span of a request under the limit can hold an attribute over it: one size for
        # the whole request instead of one per span.
        check_sizes = (request.ByteSize() if size is None else size) > max_attr
        alias_index = _ALIAS_INDEX
        no_prio = _NO_PRIO
        no_val = _NO_VAL
        scalar = _SCALAR
        complex_value = _complex
        expect = _EXPECT
        genai_refs = batch.genai_refs
        derive_refs = batch.derive_refs
        for rs in request.resource_spans:
            if len(rs.resource.attributes) > max_count:  # counted, not read
                _reject_all(
                    batch,
                    sum(len(ss.spans) for ss in rs.scope_spans),
                    "too_many_attributes",
                    f"a resource has more than {max_count} attributes (the limit)",
                )
                continue
            res_attrs = _attrs(rs.resource.attributes)
            service = _opt_str(res_attrs.get("service.name"))
            resource_json = _dumps(res_attrs)
            res_spans = sum(len(ss.spans) for ss in rs.scope_spans)
            if len(resource_json) * res_spans > limits.max_resource_fanout_bytes:
                _reject_all(
                    batch,
                    res_spans,
                    "resource_too_large",
                    f"a resource of {len(resource_json)} characters on {res_spans} spans is "
                    f"over the limit of {limits.max_resource_fanout_bytes} in all: send its "
                    "spans in smaller batches, or a smaller resource",
                )
                continue
            res_dialect = "openlit" if res_attrs.get("telemetry.sdk.name") == "openlit" else None
            for ss in rs.scope_spans:
                scope_name = ss.scope.name
                sdialect = scope_dialect(scope_name) or res_dialect
                for span in ss.spans:
                    if len(span.attributes) > max_count:  # counted, not read
                        batch.reject(
                            "too_many_attributes",
                            f"span {span.name!r} has more than {max_count} attributes (the limit)",
                        )
                        continue
                    start = span.start_time_unix_nano
                    attrs: dict[str, Any] = {}
                    prios = no_prio.copy()
                    vals = no_val.copy()
                    # The hot loop: one pass, one alias lookup per attribute.
                    for kv in span.attributes:
                        v = kv.value
                        w = v.WhichOneof("value")
                        val = getattr(v, w) if w in scalar else complex_value(v, w)
                        key = kv.key
                        attrs[key] = val
                        hit = alias_index.get(key)
                        if hit is not None:
                            for i, prio in hit:
                                if prio < prios[i]:
                                    prios[i] = prio
                                    vals[i] = val if w == expect[i] else _Coerce(val)
                    try:
                        if start == 0:
                            raise _Reject("missing_start_time", f"span {span.name!r}")
                        if start > max_start:
                            raise _Reject(
                                "future_timestamp",
                                f"span {span.name!r} starts {(start - max_start) / 1e9:.0f} s "
                                f"past the allowed {self.limits.max_future_s:.0f} s ahead",
                            )
                        if check_sizes and span.ByteSize() > max_attr:
                            _check_sizes(attrs, max_attr)
                        row, derive = self._span_row(
                            span, attrs, vals, sdialect, service, scope_name, resource_json
                        )
                    except _Reject as rej:
                        batch.reject(
                            rej.reason,
                            rej.example,
                            table="spans",
                            scope=scope_name,
                            attributes=attrs,
                        )
                        continue
                    rows.append(row)
                    flags = 0
                    if row[12]:  # is_genai
                        flags = (LEAF_FLAG if row[15] in LEAF_OPERATIONS else 0) | (
                            COMPTROLLER_FLAG if row[13] == "comptroller" else 0
                        )
                    if flags or derive is not None:
                        trace_id = span.trace_id
                        span_key = trace_id + span.span_id
                        parent = span.parent_span_id
                        parent_key = trace_id + parent if parent else None
                        if flags:
                            genai_refs.append((span_key, parent_key, flags))
                        if derive is not None:
                            derived.append(derive)
                            derive_refs.append((span_key, parent_key))
        batch.accepted = len(rows)
        if rows:
            batch.tables["spans"] = _table(SPANS_SCHEMA, rows)
        if derived:
            batch.tables["derive"] = _table(DERIVE_SCHEMA, derived)
        return batch

    def _span_row(
        self,
        span: Any,
        attrs: dict[str, Any],
        vals: list[Any],
        sdialect: str | None,
        service: str | None,
        scope_name: str,
        resource_json: str,
    ) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        trace_id = span.trace_id
        span_id = span.span_id
        if len(trace_id) != 16 or len(span_id) != 8:
            raise _Reject(
                "invalid_id", f"trace id of {len(trace_id)} bytes, span id of {len(span_id)}"
            )
        trace_hex = trace_id.hex()
        span_hex = span_id.hex()
        parent_hex = span.parent_span_id.hex() or None
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano or None
        duration = (end - start) / 1e6 if end is not None and end >= start else None
        status = span.status
        code = status.code
        status_code = _STATUS[code] if code < 3 else str(code)
        kind = span.kind
        kind_name = _KINDS[kind] if kind < 6 else str(kind)
        attributes_json = _dumps(attrs)
        row: tuple[Any, ...]
        # The fast path is for spans with nothing to extract. comptroller's span of a logical
        # call names no model but carries its purpose, tenant and final outcome (a refused
        # call has no attempt and no usage row: this span is its only record).
        if (
            vals[_OPERATION] is None
            and vals[_PROVIDER] is None
            and vals[_REQUEST_MODEL] is None
            and vals[_INPUT] is None
            and vals[_OUTPUT] is None
            and vals[_PURPOSE] is None
            and vals[_OUTCOME] is None
        ):
            row = (
                trace_hex,
                span_hex,
                parent_hex,
                span.name,
                kind_name,
                start // 1000,
                None if end is None else end // 1000,
                duration,
                status_code,
                status.message or None,
                service,
                scope_name,
                False,
                *_GENAI_NONE,
                attributes_json,
                resource_json,
            )
            return row, None

        if _Coerce in map(type, vals):
            _coerce_all(vals)
        for i in _TOKEN_IDX:
            x = vals[i]
            if x is not None and (type(x) is not int or x < 0):
                vals[i] = _as_int(x, _FIELD_NAMES[i])
        dialect = sdialect or attribute_dialect(attrs)
        raw_provider = vals[_PROVIDER]
        provider = _PROVIDERS.get(raw_provider)
        if provider is None and raw_provider is not None:
            provider = _PROVIDERS.setdefault(raw_provider, canonical_provider(raw_provider))
        operation = vals[_OPERATION]
        operation = _OPERATIONS.get(operation, operation)
        input_tokens = vals[_INPUT]
        output_tokens = vals[_OUTPUT]
        cache_read = vals[_CACHE_READ]
        cache_write = vals[_CACHE_WRITE]
        reasoning = vals[_REASONING]
        has_tokens = input_tokens is not None or output_tokens is not None
        if operation is None and has_tokens and AGENT_MARKERS.isdisjoint(attrs):
            # Older Logfire/OpenLIT spans name no operation: a call with usage and no agent
            # marker is an inference call.
            operation = "embeddings" if "embed" in span.name.lower() else "chat"
        if cache_read or cache_write:
            cached = (cache_read or 0) + (cache_write or 0)
            if input_tokens is not None and (
                cached > input_tokens or (dialect, provider) in EXCLUSIVE_INPUT
            ):
                input_tokens += cached  # exclusive count -> inclusive
        if output_tokens is not None and reasoning and reasoning > output_tokens:
            output_tokens += reasoning
        if (input_tokens or 0) > _I64_MAX or (output_tokens or 0) > _I64_MAX:
            raise _Reject("token_overflow", "a token count with its cached part overflows")
        for i in (_PROFILE_VERSION, _ATTEMPT, _FALLBACK):
            x = vals[i]
            if x is not None and not _I32_MIN <= x <= _I32_MAX:
                raise _Reject(
                    "int_out_of_range", f"{_FIELD_NAMES[i]}={x} does not fit a 32-bit integer"
                )
        request_model = vals[_REQUEST_MODEL]
        response_model = vals[_RESPONSE_MODEL]
        finish = None
        for key in FINISH_REASON_KEYS:
            found = attrs.get(key)
            if found is not None:
                finish = [str(x) for x in found] if isinstance(found, list) else [str(found)]
                break
        cost = None
        for key in COST_KEYS:
            cost = attrs.get(key)
            if cost is not None:
                break
        if cost is not None and type(cost) is not float:
            cost = _opt_float(cost)
        error_type = vals[_ERROR_TYPE]
        outcome = vals[_OUTCOME]
        row = (
            trace_hex,
            span_hex,
            parent_hex,
            span.name,
            kind_name,
            start // 1000,
            None if end is None else end // 1000,
            duration,
            status_code,
            status.message or None,
            service,
            scope_name,
            True,
            dialect,
            vals[_SEMCONV],
            operation,
            provider,
            request_model,
            response_model,
            vals[_RESPONSE_ID],
            finish,
            input_tokens,
            output_tokens,
            cache_read,
            cache_write,
            reasoning,
            error_type,
            vals[_SERVER],
            vals[_PURPOSE],
            vals[_TENANT],
            vals[_ORG],
            vals[_CONTEXT],
            vals[_PROFILE_ID],
            vals[_PROFILE_VERSION],
            vals[_ATTEMPT],
            vals[_FALLBACK],
            cost,
            outcome,
            attributes_json,
            resource_json,
        )
        if dialect == "comptroller" or operation not in LEAF_OPERATIONS or not has_tokens:
            return row, None
        # A third-party inference span: a usage row derived from it, priced here at the span's
        # start (the price then in force, as the control plane does); the landing keeps it
        # only if no comptroller row or lower layer already counts the call.
        tokens = {
            "input_tokens": input_tokens or 0,
            "output_tokens": output_tokens or 0,
            "cache_read_tokens": cache_read or 0,
            "cache_write_tokens": cache_write or 0,
        }
        pricer = self.prices
        model = pricer.priced_model(provider, response_model, request_model)
        price = (
            pricer.price(
                provider,
                model,
                Usage(
                    input_tokens=tokens["input_tokens"],
                    output_tokens=tokens["output_tokens"],
                    cache_read_tokens=tokens["cache_read_tokens"],
                    cache_write_tokens=tokens["cache_write_tokens"],
                    reasoning_tokens=reasoning or 0,
                ),
                # The stored ts (µs); µs / 1e6 as a float converts back to the same µs.
                datetime.fromtimestamp(start // 1000 / 1e6, UTC),
            )
            if provider and model
            else None
        )
        derived_cost = None if price is None or price.cost_usd is None else str(price.cost_usd)
        derived_source = UNPRICED_SOURCE if price is None else price.source
        if derived_cost is None:
            # No price known here: what the instrumentation itself reported, if it did.
            reported = reported_cost(cost)
            if reported is not None:
                derived_cost, derived_source = reported, REPORTED_SOURCE
        derive = (
            f"span:{trace_hex}:{span_hex}",
            start // 1000,
            trace_hex,
            span_hex,
            service,
            vals[_TENANT],
            vals[_ORG],
            vals[_CONTEXT],
            vals[_PURPOSE],
            operation,
            provider,
            request_model,
            response_model,
            tokens["input_tokens"],
            tokens["output_tokens"],
            tokens["cache_read_tokens"],
            tokens["cache_write_tokens"],
            reasoning or 0,
            derived_cost,
            derived_source,
            False,
            outcome or ("error" if status_code == "ERROR" or error_type else "ok"),
            error_type,
            vals[_ATTEMPT],
            vals[_FALLBACK],
            vals[_PROFILE_ID],
            vals[_PROFILE_VERSION],
            duration,
            None,
            f"derived:{dialect}",
            *_NO_ATTRIBUTION,
            parent_hex,
        )
        return row, derive

    # --- logs --------------------------------------------------------------------------------
    def logs(self, request: ExportLogsServiceRequest) -> Batch:
        """Normalise one log export: usage rows and circuit, profile and budget events."""
        batch = Batch()
        out: dict[str, list[tuple[Any, ...]]] = {
            "llm_usage": [],
            "circuit_events": [],
            "profile_events": [],
            "budget_events": [],
        }
        ignored = 0
        max_ts = self.latest_ns()
        limits = self.limits
        max_attr = limits.max_record_attribute_bytes
        max_count = limits.max_record_attributes
        records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        if records > limits.max_records:
            _reject_all(
                batch,
                records,
                "too_many_records",
                f"the request holds {records} records, the limit is {limits.max_records}: "
                "send smaller batches",
            )
            return batch
        for rl in request.resource_logs:
            if len(rl.resource.attributes) > max_count:  # counted, not read
                _reject_all(
                    batch,
                    sum(len(sl.log_records) for sl in rl.scope_logs),
                    "too_many_attributes",
                    f"a resource has more than {max_count} attributes (the limit)",
                )
                continue
            service = _opt_str(_attrs(rl.resource.attributes).get("service.name"))
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if len(record.attributes) > max_count:  # counted, not read
                        batch.reject(
                            "too_many_attributes",
                            f"a record has more than {max_count} attributes (the limit)",
                        )
                        continue
                    try:
                        attrs = _attrs(record.attributes)
                        name = record.event_name or _opt_str(attrs.get("event.name")) or ""
                        ts = record.time_unix_nano or record.observed_time_unix_nano
                        if not name.startswith(("comptroller.", "llm.circuit.")):
                            ignored += 1
                            continue
                        if ts == 0:
                            raise _Reject("missing_timestamp", f"record {name!r}")
                        if ts > max_ts:
                            raise _Reject(
                                "future_timestamp",
                                f"record {name!r} is {(ts - max_ts) / 1e9:.0f} s past the "
                                f"allowed {self.limits.max_future_s:.0f} s ahead",
                            )
                        if record.ByteSize() > max_attr:
                            _check_sizes(attrs, max_attr)
                        table, row = self._log_row(record, name, ts, attrs, service)
                    except _Reject as rej:
                        batch.reject(
                            rej.reason,
                            rej.example,
                            table=_LOG_TABLES.get(name),
                            scope=sl.scope.name,
                            attributes=attrs,
                        )
                        continue
                    if table is None:
                        ignored += 1
                        continue
                    out[table].append(row)
                    if (
                        table == "llm_usage"
                        and len(record.trace_id) == 16
                        and len(record.span_id) == 8
                    ):
                        batch.usage_refs.append(record.trace_id + record.span_id)
        for table, rows in out.items():
            if rows:
                batch.tables[table] = _table(TABLE_SCHEMAS[table], rows)
                batch.accepted += len(rows)
        batch.accepted += ignored
        return batch

    def _log_row(
        self, record: Any, name: str, ts: int, attrs: dict[str, Any], service: str | None
    ) -> tuple[str | None, tuple[Any, ...]]:
        get = attrs.get
        if name == sc.EVENT_USAGE:
            usage_id = _opt_str(get(sc.USAGE_ID))
            if not usage_id:
                raise _Reject("missing_usage_id", f"a {name} record without {sc.USAGE_ID}")
            fields: dict[str, tuple[int, Any]] = {}
            for key, val in attrs.items():
                hit = ALIASES.get(key)
                if hit is not None:
                    for fname, prio in hit:
                        cur = fields.get(fname)
                        if cur is None or prio < cur[0]:
                            fields[fname] = (prio, val)
            f = fields.get
            cost = _decimal_str(get(sc.COST_USD), sc.COST_USD)
            estimated = get(sc.ESTIMATED)
            row = (
                usage_id,
                ts // 1000,
                record.trace_id.hex() or None,
                record.span_id.hex() or None,
                service,
                _opt_str(_field(f("tenant"))),
                _opt_str(_field(f("org"))),
                _opt_str(_field(f("context"))),
                _opt_str(_field(f("purpose"))),
                canonical_operation(_opt_str(_field(f("operation")))),
                canonical_provider(_opt_str(_field(f("provider")))),
                _opt_str(_field(f("request_model"))),
                _opt_str(_field(f("response_model"))),
                _as_int(_field(f("input_tokens")), "input_tokens") or 0,
                _as_int(_field(f("output_tokens")), "output_tokens") or 0,
                _as_int(_field(f("cache_read_tokens")), "cache_read_tokens") or 0,
                _as_int(_field(f("cache_write_tokens")), "cache_write_tokens") or 0,
                _as_int(_field(f("reasoning_tokens")), "reasoning_tokens") or 0,
                cost,
                _opt_str(get(sc.PRICE_SOURCE)) or ("unpriced" if cost is None else "provider"),
                bool(estimated) if estimated is not None else False,
                _opt_str(get(sc.OUTCOME)) or "ok",
                _opt_str(get(sc.ERROR_TYPE)),
                _opt_int(get(sc.ATTEMPT)),
                _opt_int(get(sc.FALLBACK_DEPTH)),
                _opt_str(get(sc.PROFILE_ID)),
                _opt_int(get(sc.PROFILE_VERSION)),
                _opt_float(get(sc.LATENCY_MS)),
                _decimal_str(get(sc.BUDGET_CAP_USD), sc.BUDGET_CAP_USD),
                "comptroller",
                _decimal_str(get(sc.COST_FEES_USD), sc.COST_FEES_USD),
                _opt_str(get(sc.FEES)),
                _opt_str(get(sc.USER_ID)),
                _opt_str(get(sc.SESSION_ID)),
                _opt_str(get(sc.FEATURE)),
                _opt_str(get(sc.TAGS)),
            )
            return "llm_usage", row
        event_id = _opt_str(get("comptroller.event.id")) or _record_id(record)
        if name in _CIRCUIT_EVENTS:
            state = _opt_str(get(sc.CIRCUIT_STATE)) or _CIRCUIT_EVENTS[name]
            return "circuit_events", (
                event_id,
                ts // 1000,
                canonical_provider(_opt_str(get(sc.GEN_AI_PROVIDER_NAME) or get("gen_ai.system"))),
                _opt_str(get(sc.GEN_AI_REQUEST_MODEL)),
                state,
                _opt_str(get(sc.CIRCUIT_REASON)),
                _opt_int(get(sc.CIRCUIT_FAILURES)),
                _opt_int(get(sc.CIRCUIT_CALLS)),
                _opt_float(get(sc.CIRCUIT_COOLDOWN_S)),
                service,
                _dumps(attrs),
            )
        if name in _PROFILE_EVENTS:
            detail = get(sc.PROFILE_DETAIL)
            if isinstance(detail, str):
                try:
                    detail_json = _dumps(orjson.loads(detail))
                except orjson.JSONDecodeError:
                    detail_json = _dumps(detail)
            else:
                detail_json = _dumps(detail if detail is not None else attrs)
            return "profile_events", (
                event_id,
                ts // 1000,
                _PROFILE_EVENTS[name],
                _opt_str(get(sc.SCOPE_KIND)),
                _opt_str(get(sc.SCOPE_ID)),
                _opt_str(get(sc.PURPOSE)),
                _opt_int(get(sc.PROFILE_VERSION)),
                _opt_int(get(sc.PROFILE_PREVIOUS_VERSION)),
                _opt_str(get(sc.PROFILE_MODEL)),
                _opt_str(get(sc.ACTOR)),
                _opt_str(get(sc.REASON)),
                detail_json,
                service,
            )
        if name in _BUDGET_EVENTS:
            return "budget_events", (
                event_id,
                ts // 1000,
                _opt_str(get(sc.BUDGET_DAY)),
                _BUDGET_EVENTS[name],
                _opt_str(get(sc.TENANT)),
                _opt_str(get(sc.CONTEXT)),
                _opt_str(get(sc.PURPOSE)),
                _decimal_str(get(sc.BUDGET_CAP_USD), sc.BUDGET_CAP_USD),
                _decimal_str(get(sc.BUDGET_SPENT_USD), sc.BUDGET_SPENT_USD),
                _decimal_str(get(sc.BUDGET_RESERVED_USD), sc.BUDGET_RESERVED_USD),
                service,
                _dumps(attrs),
                _opt_str(get(sc.BUDGET_ATTRIBUTE)),
            )
        return None, ()


def _field(entry: tuple[int, Any] | None) -> Any:
    return None if entry is None else entry[1]


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _record_id(record: Any) -> str:
    # Events carry no id of their own: the record's bytes are the same on every re-delivery.
    return hashlib.blake2b(record.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def _table(schema: pa.Schema, rows: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )
