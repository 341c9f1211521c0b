"""The rollup delta of a batch of usage rows, summed in Arrow.

`rollup_delta(rows, offsets)` gives, per (local day, tenant, org, context, purpose,
provider, model), the same sums the SQL of `_rollup._AGGREGATES` gives — the shape of
`llm_usage_daily` — for the small batches the landing adds (`add_usage_rows`);
`hourly_delta` the same for `llm_usage_hourly`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._unpriced import UNPRICED_SOURCES

DELTA_INPUTS = (
    "ts",
    "tenant",
    "org",
    "context",
    "purpose",
    "provider",
    "request_model",
    "response_model",
    "outcome",
    "estimated",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "price_source",
    "budget_cap_usd",
)
"""The llm_usage columns a batch must carry."""


def _unpriced(rows: pa.Table) -> pa.ChunkedArray:
    """Per row, whether the call is unpriced as `unpriced_sql` counts it: no cost, or a
    price source that stands for no price."""
    no_price = pc.is_in(rows.column("price_source"), value_set=pa.array(UNPRICED_SOURCES))
    return pc.fill_null(pc.or_kleene(pc.is_null(rows.column("cost_usd")), no_price), False)


_DAY_US = 86_400_000_000
_KEYS = ["day", "tenant", "org", "context", "purpose", "provider", "model"]
TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
"""The token-count columns, summed as they are."""
_TS = pa.timestamp("us", tz="UTC")
# Arrow scalars made once: a Python literal handed to a compute function is converted on
# every call, and the conversion tries to import dateutil each time (~30 µs when absent).
_EMPTY = pa.scalar("")
_FALSE = pa.scalar(False)
_OK = pa.scalar("ok")
_ZERO = pa.scalar(0, pa.int64())
_DAY = pa.scalar(_DAY_US, pa.int64())
_HOUR = pa.scalar(3_600_000_000, pa.int64())
_HOURLY_KEYS = ["hour", "tenant", "context", "purpose"]
_HOURLY_SUMS = ("calls", "errors", "unpriced_calls", "input_tokens", "output_tokens", "cost_usd")


def _local_epoch(
    ts: pa.ChunkedArray | pa.Array, offsets: tuple[int, list[tuple[int, int]]]
) -> pa.Array:
    """Local wall-clock µs since the epoch of UTC instants `ts` (offsets as in rollup_delta)."""
    epoch = pc.cast(ts, pa.int64())
    first, changes = offsets
    offset: pa.Array | pa.Scalar = pa.scalar(first, pa.int64())
    for at, after in changes:
        offset = pc.if_else(pc.greater_equal(epoch, at), after, offset)
    return pc.add(epoch, offset)


def hourly_delta(rows: pa.Table, offsets: tuple[int, list[tuple[int, int]]]) -> pa.Table:
    """Sum `rows` (llm_usage columns, at least `DELTA_INPUTS`) per local hour and budget key.

    Returns:
        One row per (hour, tenant, context, purpose), with llm_usage_hourly's columns:
        `hour` is the local wall-clock start of the hour (a timestamp without zone).
    """
    local = _local_epoch(pc.cast(rows.column("ts"), _TS), offsets)
    hour = pc.cast(pc.multiply(pc.divide(local, _HOUR), _HOUR), pa.timestamp("us"))
    columns = {
        "hour": hour,
        **{
            name: pc.fill_null(rows.column(name), _EMPTY)
            for name in ("tenant", "context", "purpose")
        },
        "errors": pc.cast(
            pc.fill_null(pc.not_equal(rows.column("outcome"), _OK), _FALSE), pa.int64()
        ),
        "unpriced_calls": pc.cast(_unpriced(rows), pa.int64()),
        "input_tokens": pc.fill_null(rows.column("input_tokens"), _ZERO),
        "output_tokens": pc.fill_null(rows.column("output_tokens"), _ZERO),
        "cost_usd": rows.column("cost_usd"),
    }
    grouped = (
        pa.table(columns)
        .group_by(_HOURLY_KEYS, use_threads=False)
        .aggregate(
            [
                ([], "count_all"),
                *((name, "sum") for name in _HOURLY_SUMS if name != "calls"),
            ]
        )
    )
    cost = grouped.column("cost_usd_sum")
    return pa.table(
        {
            **{key: grouped.column(key) for key in _HOURLY_KEYS},
            "calls": grouped.column("count_all"),
            **{
                name: grouped.column(f"{name}_sum")
                for name in _HOURLY_SUMS
                if name not in ("calls", "cost_usd")
            },
            "cost_usd": pc.fill_null(cost, pa.scalar(0, cost.type)),
        }
    )


def rollup_delta(rows: pa.Table, offsets: tuple[int, list[tuple[int, int]]]) -> pa.Table:
    """Sum `rows` (llm_usage columns, at least `DELTA_INPUTS`) into rollup groups.

    Args:
        rows: The batch; a timestamp without a zone is taken as UTC.
        offsets: The zone's UTC offset in µs at the batch's start and its changes, as
            `_rollup.zone_offsets` gives them.

    Returns:
        One row per group, with llm_usage_daily's columns (`budget_cap_usd` is the cap of
        the group's latest row with one).
    """
    rows = rows.select(DELTA_INPUTS)
    ts = pc.cast(rows.column("ts"), _TS)
    # Latest-cap-wins needs the rows in time order; the sort is stable, so rows of one
    # instant keep their order (the SQL picks either of them too).
    order = pc.sort_indices(ts)
    rows, ts = rows.take(order), ts.take(order)
    local = _local_epoch(ts, offsets)
    day = pc.cast(pc.cast(pc.divide(local, _DAY), pa.int32()), pa.date32())
    cap = rows.column("budget_cap_usd")
    capped = pc.is_valid(cap)
    position = pc.cast(pc.indices_nonzero(pa.repeat(pa.scalar(True), rows.num_rows)), pa.int64())

    def text(name: str) -> pa.ChunkedArray:
        return pc.fill_null(rows.column(name), _EMPTY)

    def flag(values: pa.ChunkedArray | pa.Array) -> pa.Array:
        return pc.cast(pc.fill_null(values, _FALSE), pa.int64())

    columns = {
        "day": day,
        "tenant": text("tenant"),
        "org": text("org"),
        "context": text("context"),
        "purpose": text("purpose"),
        "provider": text("provider"),
        "model": pc.coalesce(
            rows.column("response_model"), rows.column("request_model"), pa.scalar("")
        ),
        "errors": flag(pc.not_equal(rows.column("outcome"), _OK)),
        "estimated_calls": flag(rows.column("estimated")),
        "unpriced_calls": flag(_unpriced(rows)),
        **{name: pc.fill_null(rows.column(name), _ZERO) for name in TOKENS},
        "cost_usd": rows.column("cost_usd"),
        "cap_ts": pc.if_else(capped, ts, pa.scalar(None, _TS)),
        "cap_at": pc.if_else(capped, position, pa.scalar(None, pa.int64())),
        "ts": ts,
    }
    grouped = (
        pa.table(columns)
        .group_by(_KEYS, use_threads=False)
        .aggregate(
            [
                ([], "count_all"),
                ("errors", "sum"),
                ("estimated_calls", "sum"),
                ("unpriced_calls", "sum"),
                *((name, "sum") for name in TOKENS),
                ("cost_usd", "sum"),
                ("cap_at", "max"),
                ("cap_ts", "max"),
                ("ts", "min"),
                ("ts", "max"),
            ]
        )
    )
    cost = grouped.column("cost_usd_sum")
    return pa.table(
        {
            **{key: grouped.column(key) for key in _KEYS},
            "calls": grouped.column("count_all"),
            "errors": grouped.column("errors_sum"),
            "estimated_calls": grouped.column("estimated_calls_sum"),
            "unpriced_calls": grouped.column("unpriced_calls_sum"),
            **{name: grouped.column(f"{name}_sum") for name in TOKENS},
            # A group of unpriced rows only costs 0 (counted in unpriced_calls).
            "cost_usd": pc.fill_null(cost, pa.scalar(0, cost.type)),
            "budget_cap_usd": cap.take(grouped.column("cap_at_max")),
            "budget_cap_ts": grouped.column("cap_ts_max"),
            "first_ts": grouped.column("ts_min"),
            "last_ts": grouped.column("ts_max"),
        }
    )
