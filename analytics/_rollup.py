"""The rollups `llm_usage_daily`, `llm_budget_daily` and `llm_usage_hourly`, kept equal to a
full recompute from `llm_usage`.

Two ways to keep it current as batches land, both equal to `rebuild_rollup` afterwards:

* `add_usage_rows(con, inserted)` adds the sums of rows *just inserted* (exactly those, e.g.
  from `INSERT OR IGNORE … RETURNING *`) to their groups: work in proportion to the batch,
  the fast path of the landing.
* `apply_usage_batch(con, batch)` recomputes every (day, key) group the batch touches from
  `llm_usage`: idempotent whatever the batch holds (duplicates the landing ignored, rows it
  deleted, redeliveries), at the price of reading those groups' rows again.

Local days are computed with integer arithmetic on the epoch (the zone's UTC offsets, and
the instants they change, are constants in the SQL): DuckDB's `timezone()` goes through
ICU per row and is ten times slower.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._delta import DELTA_INPUTS, TOKENS, hourly_delta, rollup_delta
from comptroller.analytics._schema import meta_value, set_meta
from comptroller.analytics._unpriced import unpriced_sql
from comptroller.errors import UsageError

ROLLUP_TIMEZONE_KEY = "rollup_timezone"
"""`comptroller_meta` key holding the time zone the rollup's days are cut in."""

_KEYS = "day, tenant, org, context, purpose, provider, model"
_DAY_US = 86_400_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# `unpriced_calls` counts what `reprice` and the budget gate count (analytics/_unpriced.py).
_AGGREGATES = f"""
    count(*) AS calls,
    count(*) FILTER (WHERE outcome <> 'ok') AS errors,
    count(*) FILTER (WHERE estimated) AS estimated_calls,
    count(*) FILTER (WHERE {unpriced_sql()}) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    coalesce(sum(cost_usd), 0) AS cost_usd,
    arg_max(budget_cap_usd, ts) AS budget_cap_usd,  -- arg_max skips NULL caps
    max(ts) FILTER (WHERE budget_cap_usd IS NOT NULL) AS budget_cap_ts,
    min(ts) AS first_ts,
    max(ts) AS last_ts
"""

_COLUMNS = (
    "day, tenant, org, context, purpose, provider, model, calls, errors, estimated_calls, "
    "unpriced_calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
    "reasoning_tokens, cost_usd, budget_cap_usd, budget_cap_ts, first_ts, last_ts"
)


_BUDGET_KEYS = "day, tenant, context, purpose"
_BUDGET_COLUMNS = (
    "day, tenant, context, purpose, spent_usd, budget_cap_usd, budget_cap_ts, calls, errors, "
    "estimated_calls, unpriced_calls, unpriced_models, last_ts"
)
# llm_budget_daily from rollup-shaped rows (llm_usage_daily, or a batch's delta of it).
_BUDGET_AGGREGATES = """
    coalesce(sum(cost_usd), 0) AS spent_usd,
    arg_max(budget_cap_usd, budget_cap_ts) FILTER (WHERE budget_cap_usd IS NOT NULL)
        AS budget_cap_usd,
    max(budget_cap_ts) AS budget_cap_ts,
    sum(calls) AS calls,
    sum(errors) AS errors,
    sum(estimated_calls) AS estimated_calls,
    sum(unpriced_calls) AS unpriced_calls,
    coalesce(list_sort(list_distinct(list(model) FILTER (WHERE unpriced_calls > 0))), [])
        AS unpriced_models,
    max(last_ts) AS last_ts
"""


_HOUR_US = 3_600_000_000
_HOURLY_KEYS = "hour, tenant, context, purpose"
_HOURLY_COLUMNS = (
    "hour, tenant, context, purpose, calls, errors, unpriced_calls, input_tokens, "
    "output_tokens, cost_usd"
)
_HOURLY_MEASURES = ("calls", "errors", "unpriced_calls", "input_tokens", "output_tokens")
_HOURLY_AGGREGATES = f"""
    count(*) AS calls,
    count(*) FILTER (WHERE outcome <> 'ok') AS errors,
    count(*) FILTER (WHERE {unpriced_sql()}) AS unpriced_calls,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    coalesce(sum(cost_usd), 0) AS cost_usd
"""


def zone_offsets(
    timezone: str, lo: dt.datetime, hi: dt.datetime
) -> tuple[int, list[tuple[int, int]]]:
    """The UTC offset (µs) of `timezone` around [`lo`, `hi`]: the offset at the start and
    each change in the range as (epoch µs of the instant it takes effect, new offset)."""
    zone = ZoneInfo(timezone)
    lo = lo.astimezone(dt.UTC) - dt.timedelta(days=1)
    hi = hi.astimezone(dt.UTC) + dt.timedelta(days=1)
    first = _offset_us(zone, lo)
    changes: list[tuple[int, int]] = []
    current = first
    probe = lo
    # Offsets change at most a few times a year: step a day at a time, bisect each change.
    while probe < hi:
        step = min(probe + dt.timedelta(days=1), hi)
        after = _offset_us(zone, step)
        if after != current:
            instant = _bisect(zone, probe, step, current)
            changes.append((_epoch_us(instant), after))
            current = after
        probe = step
    return first, changes


def _local_offset_sql(timezone: str, lo: dt.datetime, hi: dt.datetime, column: str) -> str:
    """The zone's UTC offset (µs) at TIMESTAMPTZ `column`, exact in [`lo`, `hi`] (its changes
    in that range are written into the expression); outside it, the nearest offset."""
    first, changes = zone_offsets(timezone, lo, hi)
    if not changes:
        return str(first)
    arms = " ".join(f"WHEN epoch_us({column}) >= {at} THEN {off}" for at, off in reversed(changes))
    return f"(CASE {arms} ELSE {first} END)"


def local_day_sql(timezone: str, lo: dt.datetime, hi: dt.datetime, *, column: str = "ts") -> str:
    """A SQL expression giving the local DATE of TIMESTAMPTZ `column` in `timezone`.

    Exact for instants in [`lo`, `hi`] (the zone's offset changes in that range are written
    into the expression); outside it, the nearest offset is used.
    """
    offset = _local_offset_sql(timezone, lo, hi, column)
    return f"(DATE '1970-01-01' + ((epoch_us({column}) + {offset}) // {_DAY_US})::INTEGER)"


def local_hour_sql(timezone: str, lo: dt.datetime, hi: dt.datetime, *, column: str = "ts") -> str:
    """A SQL expression giving the local wall-clock start of the hour (a TIMESTAMP without
    zone) of TIMESTAMPTZ `column` in `timezone`; exact in [`lo`, `hi`] as `local_day_sql`."""
    offset = _local_offset_sql(timezone, lo, hi, column)
    return f"make_timestamp((epoch_us({column}) + {offset}) // {_HOUR_US} * {_HOUR_US})"


def _hourly_select(hour: str) -> str:
    return f"""
    {hour} AS hour,
    coalesce(tenant, '') AS tenant,
    coalesce(context, '') AS context,
    coalesce(purpose, '') AS purpose
"""


def _group_select(day: str) -> str:
    return f"""
    {day} AS day,
    coalesce(tenant, '') AS tenant,
    coalesce(org, '') AS org,
    coalesce(context, '') AS context,
    coalesce(purpose, '') AS purpose,
    coalesce(provider, '') AS provider,
    coalesce(response_model, request_model, '') AS model
"""


def rebuild_rollup(con: duckdb.DuckDBPyConnection, *, timezone: str = "UTC") -> int:
    """Recompute the whole rollup from `llm_usage`, its days cut in `timezone`.

    Runs in its own transaction unless one is open already.

    Returns:
        The number of rollup rows written.
    """
    _check_zone(timezone)
    with _transaction(con):
        return rebuild_in_transaction(con, timezone=timezone)


def rebuild_in_transaction(con: duckdb.DuckDBPyConnection, *, timezone: str) -> int:
    """`rebuild_rollup` inside the caller's open transaction (a schema migration's)."""
    _run(con, "DELETE FROM llm_usage_daily")
    bounds = con.sql("SELECT min(ts), max(ts) FROM llm_usage").to_arrow_table()
    lo, hi = bounds.column(0)[0].as_py(), bounds.column(1)[0].as_py()
    if lo is not None:
        day = local_day_sql(timezone, lo, hi)
        _run(
            con,
            f"INSERT INTO llm_usage_daily ({_COLUMNS}) "
            f"SELECT {_group_select(day)}, {_AGGREGATES} FROM llm_usage GROUP BY ALL "
            # Day-ordered rows give tight min/max per row group: reads of one day skip
            # the others. Ordering by the day alone sorts on one small key, not seven.
            "ORDER BY day",
        )
    _run(con, "DELETE FROM llm_budget_daily")
    _run(
        con,
        f"INSERT INTO llm_budget_daily ({_BUDGET_COLUMNS}) "
        f"SELECT {_BUDGET_KEYS}, {_BUDGET_AGGREGATES} FROM llm_usage_daily "
        f"GROUP BY {_BUDGET_KEYS} ORDER BY {_BUDGET_KEYS}",
    )
    _run(con, "DELETE FROM llm_usage_hourly")
    if lo is not None:
        _run(
            con,
            f"INSERT INTO llm_usage_hourly ({_HOURLY_COLUMNS}) "
            f"SELECT {_hourly_select(local_hour_sql(timezone, lo, hi))}, "
            f"{_HOURLY_AGGREGATES} FROM llm_usage GROUP BY ALL ORDER BY hour",
        )
    _set_zone(con, timezone)
    return int(_one(con, "SELECT count(*) FROM llm_usage_daily") or 0)


def apply_usage_batch(
    con: duckdb.DuckDBPyConnection,
    batch: str | pa.Table,
    *,
    timezone: str = "UTC",
) -> int:
    """Bring the rollup up to date after `batch` landed in `llm_usage`.

    Call it in the landing's transaction, after the rows were inserted. Only the (day, key)
    groups the batch touches are recomputed, from `llm_usage`, so duplicates and late rows
    are handled; a rollup cut in another time zone is rebuilt whole.

    Args:
        con: The writer's connection.
        batch: The batch that landed: the name of a table or view with llm_usage's key
            columns (`ts`, `tenant`, `org`, `context`, `purpose`, `provider`,
            `request_model`, `response_model`), or an Arrow table with them.
            A batch of rows the landing deleted works the same way: their groups are
            recomputed, and removed when empty.
        timezone: Time zone of the rollup's days (`settings.timezone`).

    Returns:
        The number of rollup groups recomputed (including groups left empty, removed).
    """
    _check_zone(timezone)
    current = _get_zone(con)
    if current != timezone:
        if current is not None or _rollup_has_rows(con):
            return rebuild_rollup(con, timezone=timezone)
        _set_zone(con, timezone)
    zone = ZoneInfo(timezone)
    with _registered(con, batch) as name:
        lo, hi = _bounds(con, batch, name)
        if lo is None or hi is None:
            return 0
        touched = con.sql(
            f"SELECT DISTINCT {_group_select(local_day_sql(timezone, lo, hi))} FROM {name}"
        ).to_arrow_table()
    days = sorted(set(touched.column("day").to_pylist()))
    with _registered(con, touched) as keys:
        # One statement per run of consecutive days: constant ts bounds let DuckDB skip the
        # row groups of other days (llm_usage is appended in roughly ts order).
        for first, last in _runs(days):
            start = dt.datetime.combine(first, dt.time(), tzinfo=zone)
            end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=zone)
            day = local_day_sql(timezone, start, end)
            params = {"first": first, "last": last, "start": start, "end": end}
            # Replace the touched groups of these days: delete them, then insert what
            # llm_usage holds for them now (a group whose every row was deleted, as the
            # collector does with superseded derived rows, stays deleted).
            _run(
                con,
                f"""
                DELETE FROM llm_usage_daily
                WHERE day BETWEEN $first AND $last
                  AND ({_KEYS}) IN (
                      SELECT ({_KEYS}) FROM {keys} WHERE day BETWEEN $first AND $last)
                """,
                {"first": first, "last": last},
            )
            _run(
                con,
                f"""
                INSERT INTO llm_usage_daily ({_COLUMNS})
                WITH rows AS (
                    SELECT {_group_select(day)},
                        * EXCLUDE (tenant, org, context, purpose, provider)
                    FROM llm_usage
                    WHERE ts >= $start AND ts < $end
                )
                SELECT {_KEYS}, {_AGGREGATES}
                FROM rows SEMI JOIN {keys} USING ({_KEYS})
                WHERE day BETWEEN $first AND $last
                GROUP BY ALL
                """,
                params,
            )
            _refresh_budget(con, keys, first, last)
            _refresh_hourly(con, keys, timezone, params)
    return int(touched.num_rows)


_MEASURES = ("calls", "errors", "estimated_calls", "unpriced_calls", *TOKENS, "cost_usd")


# The cap of the latest row wins (rows of the very same instant: either).
_NEWER = (
    "n.budget_cap_ts IS NOT NULL AND (d.budget_cap_ts IS NULL"
    " OR n.budget_cap_ts >= d.budget_cap_ts)"
)


def _nonzero(table: pa.Table, columns: tuple[str, ...]) -> set[str]:
    """The columns of `table` holding some value other than 0 ."""
    found = set()
    for column in columns:
        values = table.column(column)
        if pc.max(values).as_py() or pc.min(values).as_py():
            found.add(column)
    return found


def add_usage_rows(
    con: duckdb.DuckDBPyConnection,
    rows: str | pa.Table,
    *,
    timezone: str = "UTC",
) -> int:
    """Add rows that were just inserted into `llm_usage` to the rollup.

    The fast path of the landing: the work is proportional to the batch, not to the rows
    already stored. `rows` must hold each newly inserted row exactly once and nothing else
    — what `INSERT OR IGNORE INTO llm_usage … RETURNING *` gives back; for anything else
    (rows deleted, a batch that may hold rows already landed) use `apply_usage_batch`.
    Call it in the landing's transaction.

    Args:
        con: The writer's connection.
        rows: A table or view name, or an Arrow table, with llm_usage's columns (at least
            the key columns, `ts`, the token counts, `cost_usd`, `outcome`, `estimated`
            and `budget_cap_usd`).
        timezone: Time zone of the rollup's days (`settings.timezone`).

    Returns:
        The number of rollup groups added to or created.
    """
    _check_zone(timezone)
    current = _get_zone(con)
    if current != timezone:
        if current is not None or _rollup_has_rows(con):
            return rebuild_rollup(con, timezone=timezone)
        _set_zone(con, timezone)
    if not isinstance(rows, pa.Table):
        with _registered(con, rows) as name:
            rows = con.sql(f"SELECT {', '.join(DELTA_INPUTS)} FROM {name}").to_arrow_table()
    lo, hi = _bounds(con, rows, "")
    if lo is None or hi is None:
        return 0
    zone = ZoneInfo(timezone)
    first, last = lo.astimezone(zone).date(), hi.astimezone(zone).date()
    on = " AND ".join(f"d.{key} = n.{key}" for key in _KEYS.split(", "))
    # Summed in Arrow: a DuckDB GROUP BY of a few thousand rows costs milliseconds of
    # fixed overhead, Arrow's a fraction of that. Same sums as _AGGREGATES (the property
    # test holds both against rebuild_rollup).
    offsets = zone_offsets(timezone, lo, hi)
    delta = rollup_delta(rows, offsets)
    # An UPDATE costs per column written: leave out the measures this batch adds nothing
    # to (cache and reasoning tokens, errors, … are often zero in a whole batch) and the
    # cap when no row carried one.
    changed = _nonzero(delta, _MEASURES)
    capped = delta.column("budget_cap_ts").null_count < delta.num_rows
    updates = [f"{m} = d.{m} + n.{m}" for m in _MEASURES if m in changed]
    if capped:
        updates += [
            f"budget_cap_usd = CASE WHEN {_NEWER} THEN n.budget_cap_usd ELSE d.budget_cap_usd END",
            f"budget_cap_ts = CASE WHEN {_NEWER} THEN n.budget_cap_ts ELSE d.budget_cap_ts END",
        ]
    updates += [
        "first_ts = least(d.first_ts, n.first_ts)",
        "last_ts = greatest(d.last_ts, n.last_ts)",
    ]
    with _registered(con, delta) as delta_name:
        result = con.execute(
            f"""
            MERGE INTO llm_usage_daily AS d
            USING {delta_name} AS n
            ON {on} AND d.day BETWEEN $first AND $last
            WHEN MATCHED THEN UPDATE SET
                {", ".join(updates)}
            WHEN NOT MATCHED THEN INSERT ({_COLUMNS})
                VALUES ({", ".join("n." + c for c in _COLUMNS.split(", "))})
            """,
            {"first": first, "last": last},
        ).fetchall()
        budget_on = " AND ".join(f"d.{key} = n.{key}" for key in _BUDGET_KEYS.split(", "))
        budget_updates = [
            f"{m} = d.{m} + n.{m}"
            for m, rollup in (
                ("spent_usd", "cost_usd"),
                ("calls", "calls"),
                ("errors", "errors"),
                ("estimated_calls", "estimated_calls"),
                ("unpriced_calls", "unpriced_calls"),
            )
            if rollup in changed
        ]
        if capped:
            budget_updates += [
                f"budget_cap_usd = CASE WHEN {_NEWER} THEN n.budget_cap_usd "
                "ELSE d.budget_cap_usd END",
                f"budget_cap_ts = CASE WHEN {_NEWER} THEN n.budget_cap_ts ELSE d.budget_cap_ts END",
            ]
        if "unpriced_calls" in changed:
            budget_updates.append(
                "unpriced_models = list_sort(list_distinct("
                "list_concat(d.unpriced_models, n.unpriced_models)))"
            )
        budget_updates.append("last_ts = greatest(d.last_ts, n.last_ts)")
        _run(
            con,
            f"""
            MERGE INTO llm_budget_daily AS d
            USING (
                SELECT {_BUDGET_KEYS}, {_BUDGET_AGGREGATES} FROM {delta_name}
                GROUP BY {_BUDGET_KEYS}
            ) AS n
            ON {budget_on} AND d.day BETWEEN $first AND $last
            WHEN MATCHED THEN UPDATE SET
                {", ".join(budget_updates)}
            WHEN NOT MATCHED THEN INSERT ({_BUDGET_COLUMNS})
                VALUES ({", ".join("n." + c for c in _BUDGET_COLUMNS.split(", "))})
            """,
            {"first": first, "last": last},
        )
    _merge_hourly(con, rows, offsets)
    return int(result[0][0]) if result else 0


def _refresh_budget(
    con: duckdb.DuckDBPyConnection, keys: str, first: dt.date, last: dt.date
) -> None:
    """Recompute the llm_budget_daily rows of the budget keys in `keys` (rollup-keyed
    rows) for the days first..last from llm_usage_daily."""
    params = {"first": first, "last": last}
    touched = f"SELECT DISTINCT {_BUDGET_KEYS} FROM {keys} WHERE day BETWEEN $first AND $last"
    _run(
        con,
        f"DELETE FROM llm_budget_daily WHERE day BETWEEN $first AND $last "
        f"AND ({_BUDGET_KEYS}) IN (SELECT ({_BUDGET_KEYS}) FROM ({touched}))",
        params,
    )
    _run(
        con,
        f"""
        INSERT INTO llm_budget_daily ({_BUDGET_COLUMNS})
        SELECT {_BUDGET_KEYS}, {_BUDGET_AGGREGATES}
        FROM llm_usage_daily SEMI JOIN ({touched}) AS t USING ({_BUDGET_KEYS})
        WHERE day BETWEEN $first AND $last
        GROUP BY {_BUDGET_KEYS}
        """,
        params,
    )


def _refresh_hourly(
    con: duckdb.DuckDBPyConnection, keys: str, timezone: str, params: dict[str, Any]
) -> None:
    """Recompute the llm_usage_hourly rows of the (day, tenant, context, purpose) keys in
    `keys` (rollup-keyed rows) for the local days `params["first"]..["last"]`, which start
    and end at the instants `params["start"]`, `["end"]`, from llm_usage."""
    touched = (
        "SELECT DISTINCT day, tenant, context, purpose FROM "
        f"{keys} WHERE day BETWEEN $first AND $last"
    )
    first: dt.date = params["first"]
    last: dt.date = params["last"]
    bounds = {
        "first": first,
        "last": last,
        "lo": dt.datetime.combine(first, dt.time()),
        "hi": dt.datetime.combine(last + dt.timedelta(days=1), dt.time()),
    }
    _run(
        con,
        f"""
        DELETE FROM llm_usage_hourly
        WHERE hour >= $lo AND hour < $hi
          AND (hour::DATE, tenant, context, purpose) IN (
              SELECT (day, tenant, context, purpose) FROM ({touched}))
        """,
        bounds,
    )
    day = local_day_sql(timezone, params["start"], params["end"])
    hour = local_hour_sql(timezone, params["start"], params["end"])
    _run(
        con,
        f"""
        INSERT INTO llm_usage_hourly ({_HOURLY_COLUMNS})
        WITH rows AS (
            SELECT {day} AS day, {_hourly_select(hour)},
                outcome, cost_usd, price_source, input_tokens, output_tokens
            FROM llm_usage
            WHERE ts >= $start AND ts < $end
        )
        SELECT {_HOURLY_KEYS}, {_HOURLY_AGGREGATES}
        FROM rows SEMI JOIN ({touched}) AS t USING (day, tenant, context, purpose)
        GROUP BY {_HOURLY_KEYS}
        """,
        params,
    )


def _merge_hourly(
    con: duckdb.DuckDBPyConnection, rows: pa.Table, offsets: tuple[int, list[tuple[int, int]]]
) -> None:
    """Add the hourly sums of rows just inserted to llm_usage_hourly."""
    delta = hourly_delta(rows, offsets)
    hours = delta.column("hour")
    bounds = {"lo": pc.min(hours).as_py(), "hi": pc.max(hours).as_py()}
    on = " AND ".join(f"d.{key} = n.{key}" for key in _HOURLY_KEYS.split(", "))
    changed = _nonzero(delta, (*_HOURLY_MEASURES, "cost_usd"))
    updates = [f"{m} = d.{m} + n.{m}" for m in (*_HOURLY_MEASURES, "cost_usd") if m in changed]
    action = f"UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    with _registered(con, delta) as name:
        _run(
            con,
            f"""
            MERGE INTO llm_usage_hourly AS d
            USING {name} AS n
            ON {on} AND d.hour BETWEEN $lo AND $hi
            WHEN MATCHED THEN {action}
            WHEN NOT MATCHED THEN INSERT ({_HOURLY_COLUMNS})
                VALUES ({", ".join("n." + c for c in _HOURLY_COLUMNS.split(", "))})
            """,
            bounds,
        )


def rollup_timezone(con: duckdb.DuckDBPyConnection) -> str | None:
    """The time zone the rollup's days are cut in (None before the first rollup)."""
    return _get_zone(con)


def _bounds(
    con: duckdb.DuckDBPyConnection, batch: str | pa.Table, name: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Earliest and latest `ts` of a batch (from Arrow directly when it is a table)."""
    if isinstance(batch, pa.Table):
        if batch.num_rows == 0:
            return None, None
        found = pc.min_max(batch.column("ts"))
        return _aware(found["min"].as_py()), _aware(found["max"].as_py())
    bounds = con.sql(f"SELECT min(ts), max(ts) FROM {name}").to_arrow_table()
    return _aware(bounds.column(0)[0].as_py()), _aware(bounds.column(1)[0].as_py())


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # A naive timestamp column holds UTC (DuckDB's TIMESTAMPTZ casts it so too).
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _offset_us(zone: ZoneInfo, instant: dt.datetime) -> int:
    offset = instant.astimezone(zone).utcoffset() or dt.timedelta()
    return int(offset.total_seconds()) * 1_000_000


def _epoch_us(instant: dt.datetime) -> int:
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _bisect(zone: ZoneInfo, lo: dt.datetime, hi: dt.datetime, before: int) -> dt.datetime:
    # The first instant (to the second) in (lo, hi] whose offset differs from `before`.
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _offset_us(zone, mid) == before:
            lo = mid
        else:
            hi = mid
    # Offsets change on whole seconds: the change is the one whole second in (lo, hi].
    return lo.replace(microsecond=0) + dt.timedelta(seconds=1)


def _runs(days: list[dt.date]) -> Iterator[tuple[dt.date, dt.date]]:
    first = last = days[0]
    for day in days[1:]:
        if day == last + dt.timedelta(days=1):
            last = day
            continue
        yield first, last
        first = last = day
    yield first, last


def _check_zone(timezone: str) -> None:
    try:
        ZoneInfo(timezone)
    except (KeyError, ValueError) as exc:
        raise UsageError(
            f"unknown time zone {timezone!r} (use an IANA name such as 'UTC')"
        ) from exc


def _get_zone(con: duckdb.DuckDBPyConnection) -> str | None:
    return meta_value(con, ROLLUP_TIMEZONE_KEY)


def _set_zone(con: duckdb.DuckDBPyConnection, timezone: str) -> None:
    set_meta(con, ROLLUP_TIMEZONE_KEY, timezone)


def _rollup_has_rows(con: duckdb.DuckDBPyConnection) -> bool:
    return _one(con, "SELECT 1 FROM llm_usage_daily LIMIT 1") is not None


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, batch: str | pa.Table) -> Iterator[str]:
    if isinstance(batch, str):
        if not batch.replace("_", "").replace(".", "").isalnum():
            raise UsageError(f"batch must be a table or view name, got {batch!r}")
        yield batch
        return
    name = f"_comptroller_batch_{uuid.uuid4().hex}"
    con.register(name, batch)
    try:
        yield name
    finally:
        con.unregister(name)


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    try:
        _run(con, "BEGIN TRANSACTION")
    except duckdb.TransactionException:
        # The caller's transaction is open: run inside it, let the caller commit.
        yield
        return
    try:
        yield
    except BaseException:
        _run(con, "ROLLBACK")
        raise
    _run(con, "COMMIT")


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> None:
    # DuckDB 2.0 keeps a statement's result pending until it is consumed; a DML statement's
    # (its row count) is read here so the connection is free for the next statement.
    con.execute(sql, params).fetchall()


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> Any:
    """The first column of the first row (None without rows), result fully consumed."""
    rows = con.execute(sql, params).fetchall()
    return rows[0][0] if rows else None
