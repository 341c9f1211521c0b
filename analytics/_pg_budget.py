"""Budget state from a PostgreSQL ledger's rollups: the rows `budget_state` gives for DuckDB.

`budget_state_pg` runs analytics' own `budget_state` over a reader that answers the shipped
`budget_state` panel in PostgreSQL: the panel's SQL, translated once here, over
`llm_budget_daily` (kept current by the landing's upserts) and the day's `rejected` budget
events. The parameters come from the panel's own binding (today, the day's bounds, the
hours elapsed and left in the rollup's time zone) and the result has the panel's Arrow
types, so the conversion into `BudgetState` is the one code path both stores share.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._budget import BudgetState, budget_state
from comptroller.analytics._errors import QueryError
from comptroller.analytics._panels import builtin_panels

if TYPE_CHECKING:
    from adbc_driver_postgresql.dbapi import Connection

_TS: Final = pa.timestamp("us", tz="UTC")
_SPENT: Final = pa.decimal128(38, 10)
_MONEY: Final = pa.decimal128(20, 10)

# The `budget_state` panel (dashboards/panels/budget_state.toml) in PostgreSQL. $1 today,
# $2 day_start, $3 day_end, $4 day_elapsed_h, $5 day_remaining_h, $6 warn_ratio,
# $7 min_utilisation, $8 tenant, $9 purpose. Strings order as DuckDB orders them (bytes).
_BUDGET_STATE_SQL: Final = """
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
           coalesce(s.calls, 0) AS calls,
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
    FROM s FULL OUTER JOIN r
      ON r.tenant = s.tenant AND r.context = s.context AND r.purpose = s.purpose
), rated AS (
    SELECT *,
           CASE WHEN cap_usd > 0 THEN spent_usd::FLOAT8 / cap_usd::FLOAT8
                ELSE 'Infinity'::FLOAT8 END AS utilisation
    FROM joined
)
SELECT tenant, context, purpose, $1::DATE AS day,
       spent_usd::TEXT AS spent_usd, cap_usd::TEXT AS cap_usd, utilisation,
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
WHERE utilisation >= $7::FLOAT8 OR refused_calls > 0
ORDER BY refused_calls > 0 DESC, utilisation DESC,
         tenant COLLATE "C", context COLLATE "C", purpose COLLATE "C"
"""

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
    """A `Reader` over a PostgreSQL ledger for the panels translated to PostgreSQL (today:
    `budget_state`); any other SQL is refused with a `QueryError` that says so."""

    def __init__(self, con: Connection) -> None:
        self.con = con
        self._translated = {builtin_panels()["budget_state"].sql: self._budget_state}

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run the PostgreSQL translation of the shipped panel whose SQL is `sql`."""
        run = self._translated.get(sql)
        if run is None:
            raise QueryError(
                "this query has no PostgreSQL translation yet: only the budget_state panel "
                "runs on a PostgreSQL ledger here (query its tables with SQL of your own)"
            )
        return run(dict(params or {}))

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def _budget_state(self, params: dict[str, object]) -> pa.Table:
        values = pa.record_batch(
            [pa.array([_param(params.get(name), kind)], kind) for name, kind in _PARAMS],
            names=[f"p{i}" for i in range(len(_PARAMS))],
        )
        cur = self.con.cursor()
        try:
            cur.execute(_BUDGET_STATE_SQL, values)
            raw = cur.fetch_arrow_table()
            self.con.commit()
        except Exception as exc:
            self.con.rollback()
            raise QueryError(f"budget state on PostgreSQL: {exc}") from exc
        finally:
            cur.close()
        return _panel_table(raw)


def _param(value: object, kind: pa.DataType) -> object:
    if value is not None and kind == _TS and isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
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


def _panel_table(raw: pa.Table) -> pa.Table:
    """The PostgreSQL result in the `budget_state` panel's columns and Arrow types."""
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
    return pa.table(
        {
            "tenant": raw.column("tenant").cast(text),
            "context": raw.column("context").cast(text),
            "purpose": raw.column("purpose").cast(text),
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
) -> list[BudgetState]:
    """`analytics.budget_state` of a PostgreSQL ledger, from its rollups (same rows, same
    order, same arguments)."""
    return budget_state(
        PgPanelReader(con),
        now=now,
        timezone=timezone,
        warn_ratio=warn_ratio,
        tenant=tenant,
        purpose=purpose,
    )
