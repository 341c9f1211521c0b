"""Range and meaning checks of a normalised batch, before it is acknowledged and landed.

The normaliser (Python or native) turns a request into Arrow tables whose types fit the
ledger's, but a value can fit its Arrow type and still not land (a cost of 1e12 overflows
`DECIMAL(20, 10)`) or land and lie (a negative cost lowers a budget's spend; a usage row dated
1970). `validate` checks every column declared with a check in `analytics/_tables.py`, with
Arrow compute over whole columns (a few µs a batch when all is well), and splits the rows
that fail off the batch: they are counted as rejected (the OTLP partial success names the
reason), and become `rejected_records` rows that land with the rest of the request.

It runs in the request path, after decoding and before the request enters the ingest log,
so that the sender hears which records were refused; a replay of the log re-runs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import Message

from comptroller import semconv as sc
from comptroller.analytics._tables import (
    EARLIEST_TS,
    LANDED,
    MAX_TOKENS,
    MONEY_LIMIT,
    REJECTED_RECORDS,
    Column,
    arrow_schema,
)
from comptroller.collector._normalise import Batch, _attrs

REJECTED_SCHEMA: Final = arrow_schema(REJECTED_RECORDS)
_TS: Final = pa.timestamp("us", tz="UTC")
_EARLIEST: Final = pa.scalar(EARLIEST_TS, _TS)
_ZERO_F: Final = pa.scalar(0.0)
_LIMIT_F: Final = pa.scalar(float(MONEY_LIMIT))
_ZERO_I: Final = pa.scalar(0, pa.int64())
_MAX_TOKENS: Final = pa.scalar(MAX_TOKENS, pa.int64())
_TRUE: Final = pa.scalar(True)
_STRING: Final = pa.string()
_LIMIT: Final = float(MONEY_LIMIT)
_CHECKED: Final = {name: table.checked for name, table in LANDED.items()}
# A derived usage row's time and token counts are its span's, checked on the span: only its
# cost (priced here) needs a check of its own.
_CHECKED["derive"] = [c for c in _CHECKED["llm_usage"] if c.check == "money"]
_ID_COLUMNS: Final = {
    "spans": ("trace_id", "span_id"),
    "derive": ("trace_id", "span_id"),
    "llm_usage": ("usage_id",),
    "circuit_events": ("event_id",),
    "profile_events": ("event_id",),
    "budget_events": ("event_id",),
}
"""What identifies a row of each table (the quarantine's record id derives from it)."""
TARGETS: Final = {
    "spans": "spans",
    "llm_usage": "usage",
    "circuit_events": "events",
    "profile_events": "events",
    "budget_events": "events",
}
"""How `/health` groups quarantined rows by the table they were bound for."""


class _Rejections:
    """Rows of one table that failed, with the first reason found for each."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, str]] = {}

    def add(self, indices: Iterable[int], reason: str, detail: Callable[[int], str]) -> None:
        for i in indices:
            if i not in self.rows:
                self.rows[i] = (reason, detail(i))


def _is_object(text: str) -> bool:
    """Whether `text` is a JSON object with unique keys (what lands as JSON or a MAP)."""
    try:
        return isinstance(json.loads(text, object_pairs_hook=_unique_keys), dict)
    except ValueError:
        return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("duplicate keys")
    return found


def _ok_mask(column: pa.ChunkedArray | pa.Array, spec: Column, latest: pa.Scalar) -> pa.Array:
    """True where the value is in range (null is in range: NOT NULL is the type's business)."""
    if spec.check == "object":
        return pa.array([v is None or _is_object(v) for v in column.to_pylist()], pa.bool_())
    if spec.check == "money":
        values = column
        if pa.types.is_string(column.type):
            values = _money_values(column)
        ok = pc.and_(pc.greater_equal(values, _ZERO_F), pc.less(values, _LIMIT_F))
    elif spec.check == "tokens":
        ok = pc.and_(pc.greater_equal(column, _ZERO_I), pc.less_equal(column, _MAX_TOKENS))
    else:  # time
        ok = pc.and_(pc.greater_equal(column, _EARLIEST), pc.less_equal(column, latest))
    return pc.fill_null(ok, _TRUE)


def _money_values(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A decimal string column as floats (NaN where it is not a number)."""
    try:
        return pc.cast(column, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array(
            [None if v is None else _to_float(v) for v in column.to_pylist()], pa.float64()
        )


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _in_range(column: pa.ChunkedArray, spec: Column, latest: pa.Scalar) -> bool:
    """Whether every value of `column` passes: one or two reductions (the common case)."""
    if spec.check == "object":
        # Few rows carry fees or tags: only those are parsed.
        return column.null_count == len(column) or all(
            _is_object(v) for v in column.drop_null().to_pylist()
        )
    values = _money_values(column) if spec.check == "money" and column.type == _STRING else column
    bounds = pc.min_max(values)
    low, high = bounds["min"], bounds["max"]
    if not low.is_valid:
        return True  # all null
    if spec.check == "money":
        # min_max skips NaN; a sum carries it (and inf) through.
        total = pc.sum(values).as_py()
        return bool(low.as_py() >= 0 and high.as_py() < _LIMIT and math.isfinite(total))
    if spec.check == "tokens":
        return bool(low.as_py() >= 0 and high.as_py() <= MAX_TOKENS)
    return bool(low.value >= _EARLIEST.value and high.value <= latest.value)


def _check_table(name: str, table: pa.Table, latest: pa.Scalar) -> _Rejections:
    """The rows of `table` (bound for `name`) that fail a check of their column."""
    found = _Rejections()
    for spec in _CHECKED[name]:
        if spec.name not in table.column_names:
            continue
        column = table.column(spec.name)
        if _in_range(column, spec, latest):
            continue
        ok = _ok_mask(column, spec, latest)
        if pc.all(ok).as_py():
            continue
        bad = pc.indices_nonzero(pc.invert(ok)).to_pylist()
        reason = "not_an_object" if spec.check == "object" else "out_of_range"
        found.add(bad, f"{spec.name}_{reason}", _describe(spec, column, latest))
    return found


def _describe(spec: Column, values: pa.ChunkedArray, latest: pa.Scalar) -> Callable[[int], str]:
    if spec.check == "object":
        allowed = "a JSON object with unique keys"
    elif spec.check == "money":
        allowed = f"from 0 to below {MONEY_LIMIT:.0f}"
    elif spec.check == "tokens":
        allowed = f"from 0 to {MAX_TOKENS}"
    else:
        allowed = f"from {EARLIEST_TS.isoformat()} to {latest.as_py().isoformat()}"

    def detail(i: int) -> str:
        value = values[i].as_py()
        shown = value.isoformat() if isinstance(value, dt.datetime) else repr(value)
        return f"{spec.name}={shown} must be {allowed}"

    return detail


def validate(
    batch: Batch,
    *,
    signal: str,
    latest_ns: int,
    received: dt.datetime,
    client: str | None = None,
    request: Callable[[], Message | None] | None = None,
) -> Batch:
    """Split the rows that fail their checks off `batch`, into `rejected_records`.

    Args:
        batch: A normalised request (changed in place, and returned).
        signal: `traces` or `logs`.
        latest_ns: The latest timestamp accepted now (the normaliser's `latest_ns`).
        received: When the request came (the quarantine's `received_at`).
        client: The sender's address, when known.
        request: Decodes the request, for the raw attributes of rejected usage rows (their
            rows keep no attribute column); called only when one is rejected.
    """
    latest = pa.scalar(latest_ns // 1000, _TS)
    found = {name: _check_table(name, t, latest) for name, t in batch.tables.items()}
    found = {name: rej for name, rej in found.items() if rej.rows}
    if signal == "traces" and ("spans" in found or "derive" in found):
        _couple_spans_and_derived(batch, found)
    quarantine: list[dict[str, Any]] = []
    for table, reason, detail, scope, attributes in batch.quarantine:
        quarantine.append(
            _record(signal, table, reason, detail, _source(scope, client), attributes, None)
        )
    if found:
        raw = _raw_usage(request) if "llm_usage" in found and request is not None else {}
        for name, rej in found.items():
            quarantine.extend(_split(batch, name, rej, signal, client, raw))
    if quarantine:
        batch.tables["rejected_records"] = _rejected_table(quarantine, received)
    return batch


def quarantine_rows(
    batch: Batch,
    bad: dict[str, dict[int, tuple[str, str]]],
    *,
    received: dt.datetime,
) -> int:
    """Move rows the database refused (table -> row index -> (reason, detail)) to quarantine.

    The landing's defence in depth: a row that passed `validate` and still fails to land is
    split off like a rejected one, so that it cannot block the rows behind it.

    Returns:
        How many rows were quarantined.
    """
    signal = "traces" if "spans" in batch.tables or "derive" in batch.tables else "logs"
    found: dict[str, _Rejections] = {}
    for name, rows in bad.items():
        if rows:
            found[name] = _Rejections()
            found[name].rows.update(rows)
    if signal == "traces":
        _couple_spans_and_derived(batch, found)
    records: list[dict[str, Any]] = []
    for name, rej in found.items():
        records.extend(_split(batch, name, rej, signal, None, {}))
    if not records:
        return 0
    new = _rejected_table(records, received)
    held = batch.tables.get("rejected_records")
    batch.tables["rejected_records"] = new if held is None else pa.concat_tables([held, new])
    return len(records)


def _couple_spans_and_derived(batch: Batch, found: dict[str, _Rejections]) -> None:
    """A span and the usage row derived from it are rejected together."""
    spans = batch.tables.get("spans")
    derive = batch.tables.get("derive")
    if spans is None or derive is None:
        return
    span_keys = _keys(spans)
    derive_keys = _keys(derive)
    span_rej = found.setdefault("spans", _Rejections())
    derive_rej = found.setdefault("derive", _Rejections())
    by_key = {key: i for i, key in enumerate(span_keys)}
    for i, (reason, detail) in list(derive_rej.rows.items()):
        j = by_key.get(derive_keys[i])
        if j is not None:
            span_rej.rows.setdefault(j, (f"derived_{reason}", f"derived usage: {detail}"))
    bad_spans = {span_keys[j]: span_rej.rows[j] for j in span_rej.rows}
    for i, key in enumerate(derive_keys):
        if key in bad_spans:
            derive_rej.rows.setdefault(i, bad_spans[key])
    for name in ("spans", "derive"):
        if not found[name].rows:
            del found[name]


def _keys(table: pa.Table) -> list[str]:
    return [
        f"{t}:{s}"
        for t, s in zip(*(table.column(c).to_pylist() for c in _ID_COLUMNS["spans"]), strict=True)
    ]


def _split(
    batch: Batch,
    name: str,
    rej: _Rejections,
    signal: str,
    client: str | None,
    raw: dict[str, tuple[str | None, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Remove the rejected rows of table `name` from `batch`; their quarantine rows."""
    table = batch.tables[name]
    keep = [i not in rej.rows for i in range(table.num_rows)]
    bad = sorted(rej.rows)
    # Only the rejected rows become Python values: a request of 16k spans with one bad span
    # converts one row, not the whole table.
    rows = dict(zip(bad, table.take(bad).to_pylist(), strict=True))
    kept = table.filter(pa.array(keep, pa.bool_()))
    batch.tables[name] = kept
    if not kept.num_rows:
        del batch.tables[name]
    if name == "derive":  # the span it derives from is the record quarantined (and counted)
        batch.derive_refs = [ref for i, ref in enumerate(batch.derive_refs) if keep[i]]
        return []
    target = name
    out = []
    for i in bad:
        reason, detail = rej.rows[i]
        row = rows[i]
        batch.reject(reason, detail)
        batch.accepted -= 1
        attributes: Any = None
        scope = row.get("scope_name")
        if name == "spans":
            attributes = _json_or_none(row.get("attributes"))
        elif name == "llm_usage":
            scope, attributes = raw.get(row["usage_id"], (None, None))
        elif "attributes" in row:
            attributes = _json_or_none(row.get("attributes"))
        ident = ":".join(str(row.get(c)) for c in _ID_COLUMNS[name])
        out.append(
            _record(signal, target, reason, detail, _source(scope, client), attributes, row, ident)
        )
    if name == "spans":
        gone = {bytes.fromhex(rows[i]["trace_id"] + rows[i]["span_id"]) for i in rej.rows}
        batch.genai_refs = [ref for ref in batch.genai_refs if ref[0] not in gone]
    elif name == "llm_usage":
        still = {
            f"{trace}{span}"
            for trace, span in zip(
                kept.column("trace_id").to_pylist(), kept.column("span_id").to_pylist(), strict=True
            )
            if trace
        }
        batch.usage_refs = [ref for ref in batch.usage_refs if ref.hex() in still]
    return out


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _source(scope: str | None, client: str | None) -> str | None:
    parts = [f"scope={scope}" if scope else "", f"client={client}" if client else ""]
    return "; ".join(p for p in parts if p) or None


def _record(
    signal: str,
    target: str | None,
    reason: str,
    detail: str,
    source: str | None,
    attributes: Any,
    row: dict[str, Any] | None,
    ident: str | None = None,
) -> dict[str, Any]:
    attributes_json = None if attributes is None else _dumps(attributes)
    # Stable over re-deliveries: the same record rejected for the same reason is kept once.
    key = f"{signal}\x00{target}\x00{reason}\x00{ident or attributes_json or detail}"
    return {
        "record_id": hashlib.blake2b(key.encode(), digest_size=16).hexdigest(),
        "signal": signal,
        "target": target,
        "reason": reason,
        "detail": detail,
        "source": source,
        "attributes": attributes_json,
        "row_data": None if row is None else _dumps(row),
    }


def _dumps(value: Any) -> str:
    # orjson writes NaN/inf as null and datetimes as ISO text; anything else becomes text.
    return orjson.dumps(value, default=str).decode()


def _rejected_table(records: list[dict[str, Any]], received: dt.datetime) -> pa.Table:
    for record in records:
        record["received_at"] = received
    return pa.Table.from_pylist(records, schema=REJECTED_SCHEMA)


def _raw_usage(
    request: Callable[[], Message | None],
) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """usage id -> (scope name, raw attributes) of the usage records of a log request."""
    message = request()
    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    if message is None:
        return out
    for rl in getattr(message, "resource_logs", ()):
        for sl in rl.scope_logs:
            for record in sl.log_records:
                attrs = _attrs(record.attributes)
                usage_id = attrs.get(sc.USAGE_ID)
                if usage_id is not None:
                    out.setdefault(str(usage_id), (sl.scope.name or None, attrs))
    return out
