"""The native path for OTLP exports: protobuf bytes -> the same `Batch` as the reference.

`Normaliser.traces` and `Normaliser.logs` (pure Python over upb messages) are the reference
and stay the only implementation of the rules. `_otlp_native.c` is their twin for the
requests the collector sees all day (spans, and usage records): it parses the protobuf
itself and writes the columns straight into Arrow buffers, so a span costs ~2–7 µs instead
of ~40, a usage record ~2.4 instead of ~25. It **declines** whatever it is not
sure of — malformed or truncated protobuf, invalid UTF-8, a span the reference rejects, a
value of an unexpected type, duplicate keys, kvlist values — and the caller then takes the
reference path, which answers with the right error, rejection or row. A property test
(`tests/collector/test_native.py`) holds the two equal, byte for byte, on every request the
native path accepts.

Derived usage rows (third-party inference spans) are built from the spans table with Arrow
compute; only their prices are computed per row, by the shared `Pricer`.

Example:
    >>> from comptroller.collector._native import NativeDecoder, available
    >>> from comptroller.collector._normalise import Normaliser
    >>> native = NativeDecoder(Normaliser()) if available() else None
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from comptroller import semconv as sc
from comptroller.collector import _normalise as ref
from comptroller.collector._aliases import (
    AGENT_MARKERS,
    ALIASES,
    ATTRIBUTE_DIALECT_MARKERS,
    COST_KEYS,
    EXCLUSIVE_INPUT,
    FINISH_REASON_KEYS,
    LEAF_OPERATIONS,
    OPERATION_ALIASES,
    canonical_provider,
    scope_dialect,
)
from comptroller.pricing import UNPRICED_SOURCE

_ext: Any
_IMPORT_ERROR: str | None
try:
    _ext = importlib.import_module("comptroller.collector._otlp_native")
except ImportError as exc:  # a build without a C compiler: the reference path serves alone
    _ext = None
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = None

_U64_MAX = (1 << 64) - 1
_STR, _I64, _I32, _F64, _BOOL, _LSTR = range(6)
"""Column kinds, as `_otlp_native.c` numbers them."""


# Arrow scalars made once: a Python literal handed to a compute function is converted on
# every call, and the conversion tries to import dateutil each time (~30 µs when absent).
_ZERO = pa.scalar(0, pa.int64())
_EMPTY = pa.scalar("")
_ERROR = pa.scalar("ERROR")
_ERROR_OUTCOME = pa.scalar("error")
_OK_OUTCOME = pa.scalar("ok")
_SPAN = pa.scalar("span")
_DERIVED = pa.scalar("derived")
_NOT_DERIVED: Final = ("fee_cost_usd", "fees", "user_id", "session_id", "feature", "tags")
"""Usage columns a derived row leaves empty (the reference's `_NO_ATTRIBUTION`)."""
_COLON = pa.scalar(":")
_FALSE = pa.scalar(False)


def available() -> bool:
    """True when the C extension was built and imports."""
    return _ext is not None


def unavailable_reason() -> str | None:
    """Why the extension does not import (None when it does)."""
    return _IMPORT_ERROR


@dataclass
class NativeStats:
    """How many exports the native path took, and why it declined others (`/health`)."""

    native: int = 0
    declined: int = 0
    last_declined: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "native": self.native,
                "declined": self.declined,
                "last_declined": self.last_declined,
                "reasons": dict(self.reasons),
            }


class NativeDecoder:
    """Normalises protobuf trace and usage-record exports natively, as the reference would.

    Uses the reference normaliser's limits, pricer and clock.

    Args:
        normaliser: The reference normaliser whose limits, pricer and clock apply.

    Raises:
        RuntimeError: The extension is not available (check `available()` first).
    """

    def __init__(self, normaliser: ref.Normaliser) -> None:
        if _ext is None:
            raise RuntimeError(f"the native OTLP decoder is not built: {_IMPORT_ERROR}")
        self._ref = normaliser
        self.stats = NativeStats()
        index = {name: i for i, name in enumerate(_ext.FIELDS)}
        missing = set(ref._FIELD_NAMES) ^ set(index)
        if missing:  # the C field list and the alias table's fields must be the same set
            raise RuntimeError(f"native decoder fields differ from the alias table: {missing}")
        limits = normaliser.limits
        self._config = _ext.make_config(
            aliases=[
                (key, tuple((index[name], prio) for name, prio in hits))
                for key, hits in ALIASES.items()
            ],
            finish_keys=list(FINISH_REASON_KEYS),
            cost_keys=COST_KEYS,
            agent_markers=sorted(AGENT_MARKERS),
            dialect_markers=list(ATTRIBUTE_DIALECT_MARKERS),
            operation_aliases=list(OPERATION_ALIASES.items()),
            leaf_operations=sorted(LEAF_OPERATIONS),
            exclusive_input=sorted(EXCLUSIVE_INPUT),
            scope_dialect=scope_dialect,
            canonical_provider=canonical_provider,
            provider_memo=ref._PROVIDERS,
            dumps_double=_dumps_double,
            decimal_text=_decimal_text,
            log_keys=[_LOG_KEYS[name] for name in _ext.LOG_SLOTS],
            max_attribute_bytes=limits.max_attribute_bytes,
            max_span_attributes=limits.max_span_attributes,
            max_record_attribute_bytes=limits.max_record_attribute_bytes,
            max_record_attributes=limits.max_record_attributes,
            max_spans=limits.max_spans,
            max_records=limits.max_records,
            max_resource_fanout_bytes=limits.max_resource_fanout_bytes,
        )

    def normalise(self, signal: str, body: bytes) -> ref.Batch | str:
        """`traces` or `logs` by signal; metrics are declined (the reference counts them)."""
        if signal == "traces":
            return self.traces(body)
        if signal == "logs":
            return self.logs(body)
        return "not a trace or log export"

    def _max_ns(self) -> int:
        """The reference's bound on timestamps, clamped to the C side's 64 bits."""
        return min(max(self._ref.latest_ns(), 0), _U64_MAX)

    def _counted(self, out: Any) -> Any:
        """Count `out` (the C side's result, or the reason it declined) in the stats."""
        stats = self.stats
        with stats.lock:
            if isinstance(out, str):
                stats.declined += 1
                stats.last_declined = out
                stats.reasons[out] = stats.reasons.get(out, 0) + 1
            else:
                stats.native += 1
        return out

    def logs(self, body: bytes) -> ref.Batch | str:
        """Normalise one protobuf `ExportLogsServiceRequest` of usage records.

        Returns:
            The batch, equal to what `Normaliser.logs` makes of the decoded request; or the
            reason it was declined (a request holding any event record is: events are few).
        """
        out = self._counted(_ext.usage(self._config, body, self._max_ns()))
        if isinstance(out, str):
            return out
        columns, usage_refs, ignored = out
        batch = ref.Batch(usage_refs=usage_refs)
        rows = columns[0][1]
        if rows:
            batch.tables["llm_usage"] = pa.Table.from_arrays(
                [_array(f.type, spec) for f, spec in zip(ref.USAGE_SCHEMA, columns, strict=True)],
                schema=ref.USAGE_SCHEMA,
            )
        batch.accepted = rows + ignored
        return batch

    def traces(self, body: bytes) -> ref.Batch | str:
        """Normalise one protobuf `ExportTraceServiceRequest`.

        Returns:
            The batch, equal to what `Normaliser.traces` makes of the decoded request; or,
            when the native path declines the request, the reason (a short phrase).
        """
        out = self._counted(_ext.spans(self._config, body, self._max_ns()))
        if isinstance(out, str):
            return out
        columns, genai_refs, derive_refs, derive_idx = out
        batch = ref.Batch(genai_refs=genai_refs, derive_refs=derive_refs)
        rows = columns[0][1]
        batch.accepted = rows
        if rows:
            spans = pa.Table.from_arrays(
                [_array(f.type, spec) for f, spec in zip(ref.SPANS_SCHEMA, columns, strict=True)],
                schema=ref.SPANS_SCHEMA,
            )
            batch.tables["spans"] = spans
            if derive_idx:
                index = pa.Array.from_buffers(
                    pa.int32(), len(derive_idx) // 4, [None, pa.py_buffer(derive_idx)]
                )
                batch.tables["derive"] = self._derive(spans.take(index))
        return batch

    def _derive(self, spans: pa.Table) -> pa.Table:
        """The usage rows derived from third-party inference spans (the reference's rules)."""
        col = spans.column
        n = spans.num_rows
        tokens = {
            name: pc.fill_null(col(name), _ZERO)
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
            )
        }
        costs, sources = self._prices(spans, tokens)
        status_error = pc.equal(col("status_code"), _ERROR)
        has_error = pc.fill_null(pc.not_equal(col("error_type"), _EMPTY), _FALSE)
        fallback_outcome = pc.if_else(pc.or_(status_error, has_error), _ERROR_OUTCOME, _OK_OUTCOME)
        outcome = col("outcome")
        outcome = pc.if_else(
            pc.fill_null(pc.not_equal(outcome, _EMPTY), _FALSE), outcome, fallback_outcome
        )
        arrays = {
            "usage_id": pc.binary_join_element_wise(_SPAN, col("trace_id"), col("span_id"), _COLON),
            "ts": col("start_ts"),
            "trace_id": col("trace_id"),
            "span_id": col("span_id"),
            "service_name": col("service_name"),
            "tenant": col("tenant"),
            "org": col("org"),
            "context": col("context"),
            "purpose": col("purpose"),
            "operation": col("operation"),
            "provider": col("provider"),
            "request_model": col("request_model"),
            "response_model": col("response_model"),
            **tokens,
            "cost_usd": pa.array(costs, pa.string()),
            "price_source": pa.array(sources, pa.string()),
            "estimated": pa.array([False] * n, pa.bool_()),
            "outcome": outcome,
            "error_type": col("error_type"),
            "attempt": col("attempt"),
            "fallback_depth": col("fallback_depth"),
            "profile_id": col("profile_id"),
            "profile_version": col("profile_version"),
            "latency_ms": col("duration_ms"),
            "budget_cap_usd": pa.nulls(n, pa.string()),
            "source": pc.binary_join_element_wise(_DERIVED, col("dialect"), _COLON),
            **{name: pa.nulls(n, pa.string()) for name in _NOT_DERIVED},
            "parent_span_id": col("parent_span_id"),
        }
        return pa.Table.from_arrays(
            [arrays[f.name] for f in ref.DERIVE_SCHEMA], schema=ref.DERIVE_SCHEMA
        )

    def _prices(
        self, spans: pa.Table, tokens: dict[str, Any]
    ) -> tuple[list[str | None], list[str]]:
        """Each derived row's cost (decimal text) and price source, priced at its start."""
        pricer = self._ref.prices
        col = spans.column
        starts = pc.cast(col("start_ts"), pa.int64()).to_pylist()
        counts = list(zip(*(tokens[name].to_pylist() for name in tokens), strict=True))
        # The rows of each (provider, response model, request model): priced together.
        groups: dict[tuple[Any, Any, Any], list[int]] = {}
        keys = zip(
            col("provider").to_pylist(),
            col("response_model").to_pylist(),
            col("request_model").to_pylist(),
            strict=True,
        )
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        costs: list[str | None] = [None] * spans.num_rows
        sources: list[str] = [UNPRICED_SOURCE] * spans.num_rows
        for (provider, response, request), rows in groups.items():
            model = pricer.priced_model(provider, response, request)
            if not (provider and model):
                continue
            prices = pricer.price_counts(
                provider, model, [counts[i] for i in rows], [starts[i] for i in rows]
            )
            for i, price in zip(rows, prices, strict=True):
                costs[i] = None if price.cost_usd is None else str(price.cost_usd)
                sources[i] = price.source
        # No price known here: what the instrumentation itself reported (the reference's rule).
        for i, value in enumerate(col("cost_usd").to_pylist()):
            if costs[i] is None and (text := ref.reported_cost(value)) is not None:
                costs[i], sources[i] = text, ref.REPORTED_SOURCE
        return costs, sources


_LOG_KEYS: Final = {
    "usage_id": sc.USAGE_ID,
    "cost_usd": sc.COST_USD,
    "price_source": sc.PRICE_SOURCE,
    "estimated": sc.ESTIMATED,
    "outcome": sc.OUTCOME,
    "error_type": sc.ERROR_TYPE,
    "attempt": sc.ATTEMPT,
    "fallback_depth": sc.FALLBACK_DEPTH,
    "profile_id": sc.PROFILE_ID,
    "profile_version": sc.PROFILE_VERSION,
    "latency_ms": sc.LATENCY_MS,
    "budget_cap_usd": sc.BUDGET_CAP_USD,
    "fee_cost_usd": sc.COST_FEES_USD,
    "fees": sc.FEES,
    "user_id": sc.USER_ID,
    "session_id": sc.SESSION_ID,
    "feature": sc.FEATURE,
    "tags": sc.TAGS,
    "event_name": "event.name",
}
"""The attributes a usage record is read by directly (the reference's `_log_row`)."""


def _decimal_text(value: object) -> str | None:
    """The reference's decimal text of a value, or None where it rejects the record."""
    try:
        return ref._decimal_str(value, "")
    except ref._Reject:
        return None


def _dumps_double(value: float) -> str:
    return ref._dumps(value)


def _array(arrow_type: pa.DataType, spec: tuple[Any, ...]) -> pa.Array:
    kind, length, nulls, validity, data, chars, child, child_len = spec
    valid = None if validity is None else pa.py_buffer(validity)
    if kind == _STR:
        return pa.Array.from_buffers(
            arrow_type, length, [valid, pa.py_buffer(data), pa.py_buffer(chars)], nulls
        )
    if kind == _LSTR:
        items = pa.Array.from_buffers(
            pa.string(), child_len, [None, pa.py_buffer(chars), pa.py_buffer(child)], 0
        )
        return pa.Array.from_buffers(
            arrow_type, length, [valid, pa.py_buffer(data)], nulls, children=[items]
        )
    return pa.Array.from_buffers(arrow_type, length, [valid, pa.py_buffer(data)], nulls)
