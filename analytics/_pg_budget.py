"""Budget state from a PostgreSQL ledger's rollups: the rows `budget_state` gives for DuckDB.

`budget_state_pg` runs analytics' own `budget_state` over a reader that answers the shipped
`budget_state` panel in PostgreSQL: the panel's SQL, translated once here, over
`llm_budget_daily` (kept current by the landing's upserts) and the day's `rejected` budget
events. The parameters come from the panel's own binding (today, the day's bounds, the
hours elapsed and left in the rollup's time zone) and the result has the panel's Arrow
types, so the conversion into `BudgetState` is the one code path both stores share.

Budgets by attribution (`attribution_budgets`) go the same way through the
`attribution_budget_state` panel, translated too: the day's `llm_usage` rows, filtered in
PostgreSQL (the `llm_usage (ts)` index serves the day), grouped by the rule's attribute
(`user_id`, `session_id`, `feature`, or a key of the `tags` JSONB), with the refusals
under it.

Spend anomalies (`record_anomaly_events_pg`) are judged by the shipped `anomalies` panel
itself, in DuckDB: the rollup's hours of the panel's window (`llm_usage_hourly`, keys x
hours: small) are fetched as Arrow and the panel runs over them in an in-memory DuckDB, so
the rule and the event ids are DuckDB's (`analytics._anomaly`); the events are inserted
`ON CONFLICT DO NOTHING`, so of a fleet, one collector records (and alerts) each.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._anomaly import (
    ANOMALY_KIND,
    Anomaly,
    AnomalyRule,
    anomaly_event_id,
    spend_anomalies,
)
from comptroller.analytics._budget import BudgetState, budget_state
from comptroller.analytics._errors import QueryError
from comptroller.analytics._panels import builtin_panels
from comptroller.analytics._reader import DuckDBReader

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adbc_driver_postgresql.dbapi import Connection

    from comptroller.config import AttributionBudget

_TS: Final = pa.timestamp("us", tz="UTC")
_SPENT: Final = pa.decimal128(38, 10)
_MONEY: Final = pa.decimal128(20, 10)

# The counts both budget-state queries join (the day's spend `s`, the last refusal `r`), then
# the rating and the status columns they end with: the shipped panels' rules, written once for
# PostgreSQL.
_JOINED_COUNTS: Final = """           coalesce(s.calls, 0) AS calls,
           coalesce(s.errors, 0) AS errors,
           coalesce(s.estimated_calls, 0) AS estimated_calls,
           coalesce(s.unpriced_calls, 0) AS unpriced_calls,
           coalesce(s.unpriced_models, '{}') AS unpriced_models,
           s.last_ts,
           coalesce(r.refused_calls, 0) AS refused_calls,
           r.refused_calls IS NOT NULL AS refused,
           r.cap_usd AS last_cap_usd, r.spent_usd AS last_spent_usd,
           r.reserved_usd AS last_reserved_usd, r.attributes::TEXT AS last_attributes,
           r.ts AS last_refusal_ts
"""
_RATED: Final = """), rated AS (
    SELECT *,
           CASE WHEN cap_usd > 0 THEN spent_usd::FLOAT8 / cap_usd::FLOAT8
                ELSE 'Infinity'::FLOAT8 END AS utilisation
    FROM joined
)
"""
_STATUS: Final = """       spent_usd::TEXT AS spent_usd, cap_usd::TEXT AS cap_usd, utilisation,
       spent_usd::FLOAT8 / $4::FLOAT8 AS burn_usd_per_hour,
       spent_usd::FLOAT8 * (1 + $5::FLOAT8 / $4::FLOAT8) AS projected_usd,
       CASE WHEN refused_calls > 0 THEN 'refused'
            WHEN spent_usd >= cap_usd THEN 'exceeded'
            WHEN utilisation >= $6::FLOAT8 THEN 'warning'
            ELSE 'ok' END AS status,
       CASE WHEN spent_usd >= cap_usd THEN 'exceeded'
            WHEN utilisation >= $6::FLOAT8 THEN 'warning'
            ELSE 'ok' END AS spend_status,
       calls, errors, estimated_calls, unpriced_calls, unpriced_models, last_ts,
       refused_calls, refused,
       last_cap_usd::TEXT AS last_cap_usd, last_spent_usd::TEXT AS last_spent_usd,
       last_reserved_usd::TEXT AS last_reserved_usd, last_attributes, last_refusal_ts
FROM rated
"""


# The `budget_state` panel (dashboards/panels/budget_state.toml) in PostgreSQL. $1 today,
# $2 day_start, $3 day_end, $4 day_elapsed_h, $5 day_remaining_h, $6 warn_ratio,
# $7 min_utilisation, $8 tenant, $9 purpose. Strings order as DuckDB orders them (bytes).
_BUDGET_STATE_SQL: Final = (
    """
WITH s AS (
    SELECT tenant, context, purpose, spent_usd, budget_cap_usd, calls, errors,
           estimated_calls, unpriced_calls, unpriced_models, last_ts
    FROM llm_budget_daily
    WHERE day = $1::DATE
      AND budget_cap_usd IS NOT NULL
      AND ($8::TEXT IS NULL OR tenant = $8::TEXT)
      AND ($9::TEXT IS NULL OR purpose = $9::TEXT)
), refusals AS (
    SELECT coalesce(tenant, '') AS tenant, coalesce(context, '') AS context,
           coalesce(purpose, '') AS purpose, cap_usd, spent_usd, reserved_usd,
           attributes, ts, event_id
    FROM budget_events
    WHERE kind = 'rejected'
      AND attribute IS NULL  -- budgets by attribution: panel attribution_budget_state
      AND (day = $1::DATE OR (day IS NULL AND ts >= $2::TIMESTAMPTZ AND ts < $3::TIMESTAMPTZ))
      AND ($8::TEXT IS NULL OR coalesce(tenant, '') = $8::TEXT)
      AND ($9::TEXT IS NULL OR coalesce(purpose, '') = $9::TEXT)
), r AS (
    SELECT DISTINCT ON (tenant, context, purpose)
           tenant, context, purpose,
           count(*) OVER (PARTITION BY tenant, context, purpose) AS refused_calls,
           cap_usd, spent_usd, reserved_usd, attributes, ts
    FROM refusals
    ORDER BY tenant, context, purpose, ts DESC, event_id
), joined AS (
    SELECT coalesce(s.tenant, r.tenant) AS tenant,
           coalesce(s.context, r.context) AS context,
           coalesce(s.purpose, r.purpose) AS purpose,
           coalesce(s.spent_usd, 0) AS spent_usd,
           coalesce(s.budget_cap_usd, r.cap_usd) AS cap_usd,
"""
    + _JOINED_COUNTS
    + """    FROM s FULL OUTER JOIN r
      ON r.tenant = s.tenant AND r.context = s.context AND r.purpose = s.purpose
"""
    + _RATED
    + """SELECT tenant, context, purpose, $1::DATE AS day,
"""
    + _STATUS
    + """WHERE utilisation >= $7::FLOAT8 OR refused_calls > 0
ORDER BY refused_calls > 0 DESC, utilisation DESC,
         tenant COLLATE "C", context COLLATE "C", purpose COLLATE "C"
"""
)

# The `attribution_budget_state` panel (dashboards/panels/attribution_budget_state.toml) in
# PostgreSQL. $1 today, $2 day_start, $3 day_end, $4 day_elapsed_h, $5 day_remaining_h,
# $6 warn_ratio, $7 by, $8 cap, $9 value, $10 rule_tenant, $11 org, $12 context,
# $13 purpose, $14 key_context, $15 key_purpose. `tags[name]` of the MAP is `tags ->> name`
# of the JSONB; DuckDB's `arg_max` is the latest refusal by DISTINCT ON.
_ATTRIBUTION_SQL: Final = (
    """
WITH calls AS (
    SELECT coalesce(tenant, '') AS tenant,
           CASE $7::TEXT
               WHEN 'user' THEN user_id
               WHEN 'session' THEN session_id
               WHEN 'feature' THEN feature
               ELSE tags ->> substr($7::TEXT, 5)
           END AS value,
           cost_usd, outcome, estimated, ts,
           coalesce(response_model, request_model) AS model
    FROM llm_usage
    WHERE ts >= $2::TIMESTAMPTZ AND ts < $3::TIMESTAMPTZ
      AND ($10::TEXT IS NULL OR tenant = $10::TEXT)
      AND ($11::TEXT IS NULL OR org = $11::TEXT)
      AND ($12::TEXT IS NULL OR context = $12::TEXT)
      AND ($13::TEXT IS NULL OR purpose = $13::TEXT)
), spent AS (
    SELECT tenant, $7::TEXT || '=' || value AS attribute,
           coalesce(sum(cost_usd), 0) AS spent_usd,
           count(*) AS calls,
           count(*) FILTER (WHERE outcome <> 'ok') AS errors,
           count(*) FILTER (WHERE estimated) AS estimated_calls,
           count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
           array_agg(DISTINCT model COLLATE "C" ORDER BY model COLLATE "C")
               FILTER (WHERE cost_usd IS NULL AND model IS NOT NULL) AS unpriced_models,
           max(ts) AS last_ts
    FROM calls
    WHERE value IS NOT NULL AND ($9::TEXT IS NULL OR value = $9::TEXT)
    GROUP BY tenant, value
), refusals AS (
    SELECT coalesce(tenant, '') AS tenant, attribute, cap_usd, spent_usd, reserved_usd,
           attributes, ts, event_id
    FROM budget_events
    WHERE kind = 'rejected' AND day = $1::DATE
      AND coalesce(context, '') = $14::TEXT AND coalesce(purpose, '') = $15::TEXT
      AND starts_with(attribute, $7::TEXT || '=')
      AND ($9::TEXT IS NULL OR attribute = $7::TEXT || '=' || $9::TEXT)
      AND ($10::TEXT IS NULL OR tenant = $10::TEXT)
), r AS (
    SELECT DISTINCT ON (tenant, attribute)
           tenant, attribute,
           count(*) OVER (PARTITION BY tenant, attribute) AS refused_calls,
           cap_usd, spent_usd, reserved_usd, attributes, ts
    FROM refusals
    ORDER BY tenant, attribute, ts DESC, event_id
), joined AS (
    SELECT coalesce(s.tenant, r.tenant) AS tenant,
           coalesce(s.attribute, r.attribute) AS attribute,
           coalesce(s.spent_usd, 0) AS spent_usd,
           $8::NUMERIC(20, 10) AS cap_usd,
"""
    + _JOINED_COUNTS
    + """    FROM spent AS s FULL OUTER JOIN r
      ON r.tenant = s.tenant AND r.attribute = s.attribute
"""
    + _RATED
    + """SELECT tenant, $14::TEXT AS context, $15::TEXT AS purpose, attribute, $1::DATE AS day,
"""
    + _STATUS
    + """ORDER BY refused_calls > 0 DESC, utilisation DESC, tenant COLLATE "C", attribute COLLATE "C"
"""
)

_ATTRIBUTION_PARAMS: Final = (
    ("today", pa.date32()),
    ("day_start", _TS),
    ("day_end", _TS),
    ("day_elapsed_h", pa.float64()),
    ("day_remaining_h", pa.float64()),
    ("warn_ratio", pa.float64()),
    ("by", pa.string()),
    ("cap", pa.string()),
    ("value", pa.string()),
    ("rule_tenant", pa.string()),
    ("org", pa.string()),
    ("context", pa.string()),
    ("purpose", pa.string()),
    ("key_context", pa.string()),
    ("key_purpose", pa.string()),
)

_PARAMS: Final = (
    ("today", pa.date32()),
    ("day_start", _TS),
    ("day_end", _TS),
    ("day_elapsed_h", pa.float64()),
    ("day_remaining_h", pa.float64()),
    ("warn_ratio", pa.float64()),
    ("min_utilisation", pa.float64()),
    ("tenant", pa.string()),
    ("purpose", pa.string()),
)


class PgPanelReader:
    """A `Reader` over a PostgreSQL ledger for the panels translated to PostgreSQL
    (`budget_state`, `attribution_budget_state`); any other SQL is refused with a
    `QueryError` that says so."""

    def __init__(self, con: Connection) -> None:
        self.con = con
        panels = builtin_panels()
        self._translated = {
            panels["budget_state"].sql: self._budget_state,
            panels["attribution_budget_state"].sql: self._attribution_state,
        }

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run the PostgreSQL translation of the shipped panel whose SQL is `sql`."""
        run = self._translated.get(sql)
        if run is None:
            raise QueryError(
                "this query has no PostgreSQL translation yet: only the budget_state and "
                "attribution_budget_state panels run on a PostgreSQL ledger here (query its "
                "tables with SQL of your own)"
            )
        return run(dict(params or {}))

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def _budget_state(self, params: dict[str, object]) -> pa.Table:
        return _panel_table(self._run(_BUDGET_STATE_SQL, _PARAMS, params, "budget state"))

    def _attribution_state(self, params: dict[str, object]) -> pa.Table:
        raw = self._run(_ATTRIBUTION_SQL, _ATTRIBUTION_PARAMS, params, "budgets by attribution")
        return _panel_table(raw, attribute=True)

    def _run(
        self,
        sql: str,
        names: tuple[tuple[str, pa.DataType], ...],
        params: dict[str, object],
        what: str,
    ) -> pa.Table:
        values = pa.record_batch(
            [pa.array([_param(params.get(name), kind)], kind) for name, kind in names],
            names=[f"p{i}" for i in range(len(names))],
        )
        cur = self.con.cursor()
        try:
            cur.execute(sql, values)
            raw = cur.fetch_arrow_table()
            self.con.commit()
        except Exception as exc:
            self.con.rollback()
            raise QueryError(f"{what} on PostgreSQL: {exc}") from exc
        finally:
            cur.close()
        return raw


def _param(value: object, kind: pa.DataType) -> object:
    if value is not None and kind == _TS and isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
    if value is not None and kind == pa.string() and not isinstance(value, str):
        return str(value)  # the cap, given as a Decimal: its exact text
    return value


def _decimal(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    return pc.cast(column.cast(pa.string()), kind)


def _minified(column: pa.ChunkedArray) -> pa.Array:
    """JSON text as DuckDB writes it (no space after `:` and `,`); jsonb's spaces them."""
    texts = column.cast(pa.string()).to_pylist()
    return pa.array(
        [
            None
            if t is None
            else json.dumps(json.loads(t), separators=(",", ":"), ensure_ascii=False)
            for t in texts
        ],
        pa.string(),
    )


def _panel_table(raw: pa.Table, *, attribute: bool = False) -> pa.Table:
    """The PostgreSQL result in the `budget_state` panel's columns and Arrow types (with
    `attribute`: the `attribution_budget_state` panel's, which adds that column)."""
    refused = raw.column("refused").to_pylist()
    last = pa.StructArray.from_arrays(
        [
            _decimal(raw.column("last_cap_usd"), _MONEY).combine_chunks(),
            _decimal(raw.column("last_spent_usd"), _MONEY).combine_chunks(),
            _decimal(raw.column("last_reserved_usd"), _MONEY).combine_chunks(),
            _minified(raw.column("last_attributes")),
            raw.column("last_refusal_ts").cast(_TS).combine_chunks(),
        ],
        names=["cap_usd", "spent_usd", "reserved_usd", "attributes", "ts"],
        mask=pa.array([not r for r in refused], pa.bool_()),
    )
    text = pa.string()
    named: dict[str, pa.ChunkedArray] = {
        "tenant": raw.column("tenant").cast(text),
        "context": raw.column("context").cast(text),
        "purpose": raw.column("purpose").cast(text),
    }
    if attribute:
        named["attribute"] = raw.column("attribute").cast(text)
    return pa.table(
        {
            **named,
            "day": raw.column("day").cast(pa.date32()),
            "spent_usd": _decimal(raw.column("spent_usd"), _SPENT),
            "cap_usd": _decimal(raw.column("cap_usd"), _MONEY),
            "utilisation": raw.column("utilisation"),
            "burn_usd_per_hour": raw.column("burn_usd_per_hour"),
            "projected_usd": raw.column("projected_usd"),
            "status": raw.column("status").cast(text),
            "spend_status": raw.column("spend_status").cast(text),
            "calls": raw.column("calls").cast(pa.int64()),
            "errors": raw.column("errors").cast(pa.int64()),
            "estimated_calls": raw.column("estimated_calls").cast(pa.int64()),
            "unpriced_calls": raw.column("unpriced_calls").cast(pa.int64()),
            "unpriced_models": raw.column("unpriced_models").cast(pa.list_(text)),
            "last_ts": raw.column("last_ts").cast(_TS),
            "refused_calls": raw.column("refused_calls").cast(pa.int64()),
            "last_refusal": last,
        }
    )


def budget_state_pg(
    con: Connection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    warn_ratio: float = 0.8,
    tenant: str | None = None,
    purpose: str | None = None,
    attribution_budgets: Sequence[AttributionBudget] = (),
) -> list[BudgetState]:
    """`analytics.budget_state` of a PostgreSQL ledger (same rows, same order, same
    arguments): the profile budgets from its rollups, each budget by attribution from the
    day's usage rows."""
    return budget_state(
        PgPanelReader(con),
        now=now,
        timezone=timezone,
        warn_ratio=warn_ratio,
        tenant=tenant,
        purpose=purpose,
        attribution_budgets=attribution_budgets,
    )


_HOURLY_COLUMNS: Final = (
    "hour, tenant, context, purpose, calls, errors, unpriced_calls, input_tokens, "
    "output_tokens, cost_usd::TEXT AS cost_usd"
)
# What the `anomalies` panel reads of the hourly rollup, and no more: the rows at the judged
# hour's time of day on each day of its window, today included ($1: those hours), and one
# row per day of the window that recorded anything ($2: the days; the panel's `days`, the
# baseline). A day's row has no key and no cost: no key joins it and no hour's spend counts
# it. Both are looked up by the rollup's primary key (`hour` first).
_ANOMALY_HOURS_SQL: Final = f"""
SELECT {_HOURLY_COLUMNS} FROM llm_usage_hourly WHERE hour = ANY($1::TIMESTAMP[])
UNION ALL
SELECT d.day AS hour, NULL::TEXT, NULL::TEXT, NULL::TEXT,
       0::BIGINT, 0::BIGINT, 0::BIGINT, 0::BIGINT, 0::BIGINT, NULL::TEXT
FROM unnest($2::TIMESTAMP[]) AS d(day)
WHERE EXISTS (SELECT 1 FROM llm_usage_hourly AS h
              WHERE h.hour >= d.day AND h.hour < d.day + interval '1 day')
"""
_DUCK_LOCK: Final = threading.Lock()
_DUCK: list[duckdb.DuckDBPyConnection] = []


def _duck_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of this process's in-memory DuckDB for panels over fetched rows (its temp
    views are the cursor's own)."""
    with _DUCK_LOCK:
        if not _DUCK:
            _DUCK.append(
                duckdb.connect(
                    config={"enable_external_access": False, "threads": 1},
                )
            )
        return _DUCK[0].cursor()


def spend_anomalies_pg(
    con: Connection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    rule: AnomalyRule | None = None,
) -> list[Anomaly]:
    """`analytics.spend_anomalies` of a PostgreSQL ledger: the `anomalies` panel itself, in
    an in-memory DuckDB, over the rows of `llm_usage_hourly` it reads (fetched as Arrow:
    the judged hour of the day over the window, and the window's days; commits `con`)."""
    from comptroller.analytics._pg_reader import _duck_expr, _plain, duckdb_catalog

    rule = rule if rule is not None else AnomalyRule()
    stamp = now or dt.datetime.now(dt.UTC)
    bound = builtin_panels()["anomalies"].bind({}, now=stamp, timezone=timezone)
    today = bound["today"]
    elapsed = bound["day_elapsed_h"]
    if not isinstance(today, dt.date) or not isinstance(elapsed, float | int):
        raise QueryError("the anomalies panel no longer binds today and day_elapsed_h")
    midnight = dt.datetime.combine(today, dt.time())
    # As the panel's `hour_start`: today + the whole hours elapsed since local midnight.
    offset = dt.timedelta(hours=math.floor(elapsed))
    days = [midnight - dt.timedelta(days=n) for n in range(rule.days, 0, -1)]
    local = pa.list_(pa.timestamp("us"))
    cur = con.cursor()
    try:
        cur.execute(
            _ANOMALY_HOURS_SQL,
            pa.record_batch(
                [
                    pa.array([[day + offset for day in (*days, midnight)]], local),
                    pa.array([days], local),
                ],
                names=["p0", "p1"],
            ),
        )
        hours = _plain(cur.fetch_arrow_table())
        con.commit()
    except Exception as exc:
        con.rollback()
        raise QueryError(f"spend anomalies on PostgreSQL: {exc}") from exc
    finally:
        cur.close()
    duck = _duck_cursor()
    try:
        duck.register("__pg_llm_usage_hourly", hours)
        present = set(hours.column_names)
        select = ", ".join(
            _duck_expr(c, kind, c in present) for c, kind in duckdb_catalog()["llm_usage_hourly"]
        )
        duck.execute(
            f"CREATE TEMP VIEW llm_usage_hourly AS SELECT {select} FROM __pg_llm_usage_hourly"
        )
        return spend_anomalies(
            DuckDBReader(duck, cursors=False), now=stamp, timezone=timezone, rule=rule
        )
    finally:
        duck.close()


def record_anomaly_events_pg(
    con: Connection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    rule: AnomalyRule | None = None,
) -> list[Anomaly]:
    """`analytics.record_anomaly_events` on a PostgreSQL ledger: this hour's anomalies in
    `budget_events` (kind `anomaly`, the same ids), once per key and hour across every
    process writing the ledger (commits `con`).

    Returns:
        The anomalies this call recorded (not those recorded before, by anyone).
    """
    stamp = now or dt.datetime.now(dt.UTC)
    found = spend_anomalies_pg(con, now=stamp, timezone=timezone, rule=rule)
    if not found:
        return []
    recorded: list[Anomaly] = []
    cur = con.cursor()
    try:
        for anomaly in found:
            event_id = anomaly_event_id(anomaly)
            attributes = {
                "hour": anomaly.hour.isoformat(),
                "calls": anomaly.calls,
                "median_usd": str(anomaly.median_usd),
                "mad_usd": str(anomaly.mad_usd),
                "threshold_usd": str(anomaly.threshold_usd),
                "ratio": anomaly.ratio,
                "history_days": anomaly.history_days,
            }
            values = pa.record_batch(
                [
                    pa.array([event_id], pa.string()),
                    pa.array([stamp.astimezone(dt.UTC)], _TS),
                    pa.array([anomaly.hour.date()], pa.date32()),
                    pa.array([anomaly.tenant], pa.string()),
                    pa.array([anomaly.context], pa.string()),
                    pa.array([anomaly.purpose], pa.string()),
                    pa.array([str(anomaly.spent_usd)], pa.string()),
                    pa.array([json.dumps(attributes)], pa.string()),
                ],
                names=[f"p{i}" for i in range(8)],
            )
            cur.execute(
                "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
                "cap_usd, spent_usd, service_name, attributes) "
                f"SELECT $1, $2, $3::DATE, '{ANOMALY_KIND}', $4, $5, $6, "
                "(SELECT budget_cap_usd FROM llm_budget_daily WHERE day = $3::DATE "
                "AND tenant = $4 AND context = $5 AND purpose = $6), $7::NUMERIC, "
                "'comptroller.analytics', $8::JSONB "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                values,
            )
            if cur.fetchall():
                recorded.append(replace(anomaly, event_id=event_id))
        con.commit()
    except Exception as exc:
        con.rollback()
        raise QueryError(f"recording spend anomalies on PostgreSQL: {exc}") from exc
    finally:
        cur.close()
    return recorded
