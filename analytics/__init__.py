"""Analytics: the DuckDB schema, rollups, budget state, queries, the CI gate and reports.

Reading while a collector writes
--------------------------------
DuckDB admits one writing process per file, and while it writes no other process may open
the file, not even read-only. So the collector owns the file and serves reads: its
`POST /api/query` runs one read-only statement and answers with an Arrow IPC stream.
`open_reader(url=…)` is the client of that endpoint; `open_reader(db=…)` opens the file
read-only when no collector runs (e.g. a database copied out of CI). Inside the writing
process itself (the embedded sink, the collector), wrap its connection: `DuckDBReader(con)`.
Every reader returns Arrow tables; `Analytics` turns them into polars DataFrames.
Commands pick their reader with `reader_from_settings(settings, db=…, url=…)`; the dashboard
asks for `follow=True` and gets a `LocalReader` that follows a replaced file.

A PostgreSQL ledger (`db = "postgresql://…"`, where a fleet of collectors lands) is read by
`PgReader`: the same DuckDB SQL, over the rows it fetches from PostgreSQL as Arrow into an
in-process DuckDB, and the budget state from PostgreSQL's rollups (`budget_state_pg`). Rows
are scoped per reading role by PostgreSQL's row-level security (`comptroller db
grant-reader`).

Tables
------
Landed: `llm_usage` (one row per priced attempt), `spans` (a view: `span_rows` joined to
`resources`, each distinct resource stored once), `circuit_events`, `profile_events`,
`budget_events`. Derived, kept current as batches land and rebuilt by
`rebuild_rollup`: `llm_usage_daily` (per local day, tenant, org, context, purpose, provider,
model) and `llm_budget_daily` (per local day and budget key, what budget state reads).
Dashboards read the derived tables wherever they can, never scanning raw rows for totals.

Landing (for the collector)
---------------------------
In the transaction that inserts a batch into `llm_usage`, bring the daily rollup up to date:
`add_usage_rows(con, inserted, timezone=settings.timezone)` with exactly the rows inserted
(`insert_new_sql(…) RETURNING *`, which skips rows already landed; work proportional to
the batch), or
`apply_usage_batch(con, batch, timezone=…)` with any rows whose groups changed (recomputed
from `llm_usage`; use it for rows deleted). Then `record_budget_events(con, timezone=…,
warn_ratio=…)` records the warning and cap crossings (once per day and key).
`rebuild_rollup` recomputes the rollup whole. `record_anomaly_events(con, timezone=…)`
records the keys spending far above their own hour-of-day baseline (once per key and hour).

Planning
--------
`forecast(reader)` projects each budget key's (or purpose's) spend to the end of the day
and of the month; `spend_anomalies(reader)` lists the keys spending anomalously this hour.
Both read shipped panels (`forecast`, `anomalies`); docs/FORECAST.md has the method.

Example:
    >>> from comptroller.analytics import open_reader, budget_state
    >>> reader = open_reader(db="comptroller.duckdb")  # doctest: +SKIP
    >>> [b.status for b in budget_state(reader, timezone="Europe/Paris")]  # doctest: +SKIP
    ['exceeded', 'ok']
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comptroller.analytics._anomaly import (
        Anomaly,
        AnomalyRule,
        record_anomaly_events,
        spend_anomalies,
    )
    from comptroller.analytics._budget import (
        BudgetEvent,
        BudgetState,
        BudgetStatus,
        KeyRefusals,
        Refusals,
        budget_refusals,
        budget_state,
        record_budget_events,
    )
    from comptroller.analytics._compact import Compacted, compact
    from comptroller.analytics._errors import AnalyticsError, QueryError, ReaderUnavailable
    from comptroller.analytics._fees_report import (
        AttributedSpend,
        FeeLine,
        attribution_json,
        attribution_markdown,
        fee_spend,
        fees_json,
        fees_markdown,
        spend_by_attribution,
    )
    from comptroller.analytics._focus import FOCUS_VERSION, focus_table, write_focus
    from comptroller.analytics._forecast import Forecast, ForecastBy, forecast
    from comptroller.analytics._frames import DIMENSIONS, Analytics, Dimension
    from comptroller.analytics._gate import (
        GateResult,
        budgets_table,
        check_budgets,
        junit_xml,
        report_to_github,
    )
    from comptroller.analytics._gate import dumps as gate_json
    from comptroller.analytics._insert import (
        DEDUP_KEYS,
        insert_new,
        insert_new_sql,
        keys_unique,
        time_bounds,
    )
    from comptroller.analytics._output import render as render_result
    from comptroller.analytics._output import write_result
    from comptroller.analytics._panels import builtin_panels, run_panel
    from comptroller.analytics._pg_budget import budget_state_pg
    from comptroller.analytics._pg_reader import PgReader
    from comptroller.analytics._pg_schema import (
        PG_SCHEMA_VERSION,
        connect_pg,
        grant_reader,
        migrate_pg,
        pg_schema_version,
        reader_bindings,
        revoke_reader,
        shown_url,
    )
    from comptroller.analytics._reader import (
        ARROW_STREAM,
        DuckDBReader,
        HttpReader,
        Limits,
        QueryTimeout,
        Reader,
        check_read_only,
        open_reader,
        run_read_only,
        truncated_at,
    )
    from comptroller.analytics._report import (
        SpendDiff,
        SpendLine,
        compare_spend,
        savings_json,
        savings_markdown,
    )
    from comptroller.analytics._report import markdown as report_markdown
    from comptroller.analytics._report import to_json as report_json
    from comptroller.analytics._reprice import RepriceLine, RepriceResult, reprice, reprice_pg
    from comptroller.analytics._rollup import (
        ROLLUP_TIMEZONE_KEY,
        add_usage_rows,
        apply_usage_batch,
        rebuild_rollup,
        rollup_timezone,
    )
    from comptroller.analytics._savings import CacheSaving, cache_savings, savings_prices
    from comptroller.analytics._schema import (
        MIGRATIONS,
        SCHEMA_VERSION,
        connect,
        meta_value,
        migrate,
        schema_version,
        set_meta,
    )
    from comptroller.analytics._source import LocalReader, reader_from_settings
    from comptroller.analytics._whatif import (
        WhatIf,
        WhatIfLine,
        WhatIfResult,
        what_if,
        what_if_json,
        what_if_markdown,
    )

# Names load on first use (PEP 562), each from the module that defines it: `import
# comptroller.analytics` costs nothing, so a command pays only for what it touches (DuckDB and
# Arrow for a query, polars for the DataFrame API) and `--help` stays fast.
_EXPORTS: dict[str, tuple[str, str]] = {
    "ARROW_STREAM": ("comptroller.analytics._reader", "ARROW_STREAM"),
    "Analytics": ("comptroller.analytics._frames", "Analytics"),
    "Anomaly": ("comptroller.analytics._anomaly", "Anomaly"),
    "AnomalyRule": ("comptroller.analytics._anomaly", "AnomalyRule"),
    "AnalyticsError": ("comptroller.analytics._errors", "AnalyticsError"),
    "BudgetEvent": ("comptroller.analytics._budget", "BudgetEvent"),
    "BudgetState": ("comptroller.analytics._budget", "BudgetState"),
    "BudgetStatus": ("comptroller.analytics._budget", "BudgetStatus"),
    "Compacted": ("comptroller.analytics._compact", "Compacted"),
    "DEDUP_KEYS": ("comptroller.analytics._insert", "DEDUP_KEYS"),
    "DIMENSIONS": ("comptroller.analytics._frames", "DIMENSIONS"),
    "Dimension": ("comptroller.analytics._frames", "Dimension"),
    "DuckDBReader": ("comptroller.analytics._reader", "DuckDBReader"),
    "FOCUS_VERSION": ("comptroller.analytics._focus", "FOCUS_VERSION"),
    "Forecast": ("comptroller.analytics._forecast", "Forecast"),
    "ForecastBy": ("comptroller.analytics._forecast", "ForecastBy"),
    "GateResult": ("comptroller.analytics._gate", "GateResult"),
    "HttpReader": ("comptroller.analytics._reader", "HttpReader"),
    "KeyRefusals": ("comptroller.analytics._budget", "KeyRefusals"),
    "Limits": ("comptroller.analytics._reader", "Limits"),
    "LocalReader": ("comptroller.analytics._source", "LocalReader"),
    "MIGRATIONS": ("comptroller.analytics._schema", "MIGRATIONS"),
    "PgReader": ("comptroller.analytics._pg_reader", "PgReader"),
    "PG_SCHEMA_VERSION": ("comptroller.analytics._pg_schema", "PG_SCHEMA_VERSION"),
    "connect_pg": ("comptroller.analytics._pg_schema", "connect_pg"),
    "migrate_pg": ("comptroller.analytics._pg_schema", "migrate_pg"),
    "pg_schema_version": ("comptroller.analytics._pg_schema", "pg_schema_version"),
    "shown_url": ("comptroller.analytics._pg_schema", "shown_url"),
    "grant_reader": ("comptroller.analytics._pg_schema", "grant_reader"),
    "revoke_reader": ("comptroller.analytics._pg_schema", "revoke_reader"),
    "reader_bindings": ("comptroller.analytics._pg_schema", "reader_bindings"),
    "QueryError": ("comptroller.analytics._errors", "QueryError"),
    "QueryTimeout": ("comptroller.analytics._reader", "QueryTimeout"),
    "ROLLUP_TIMEZONE_KEY": ("comptroller.analytics._rollup", "ROLLUP_TIMEZONE_KEY"),
    "Reader": ("comptroller.analytics._reader", "Reader"),
    "ReaderUnavailable": ("comptroller.analytics._errors", "ReaderUnavailable"),
    "Refusals": ("comptroller.analytics._budget", "Refusals"),
    "RepriceLine": ("comptroller.analytics._reprice", "RepriceLine"),
    "RepriceResult": ("comptroller.analytics._reprice", "RepriceResult"),
    "SCHEMA_VERSION": ("comptroller.analytics._schema", "SCHEMA_VERSION"),
    "SpendDiff": ("comptroller.analytics._report", "SpendDiff"),
    "SpendLine": ("comptroller.analytics._report", "SpendLine"),
    "WhatIf": ("comptroller.analytics._whatif", "WhatIf"),
    "WhatIfLine": ("comptroller.analytics._whatif", "WhatIfLine"),
    "WhatIfResult": ("comptroller.analytics._whatif", "WhatIfResult"),
    "CacheSaving": ("comptroller.analytics._savings", "CacheSaving"),
    "AttributedSpend": ("comptroller.analytics._fees_report", "AttributedSpend"),
    "FeeLine": ("comptroller.analytics._fees_report", "FeeLine"),
    "attribution_json": ("comptroller.analytics._fees_report", "attribution_json"),
    "attribution_markdown": ("comptroller.analytics._fees_report", "attribution_markdown"),
    "fee_spend": ("comptroller.analytics._fees_report", "fee_spend"),
    "fees_json": ("comptroller.analytics._fees_report", "fees_json"),
    "fees_markdown": ("comptroller.analytics._fees_report", "fees_markdown"),
    "spend_by_attribution": ("comptroller.analytics._fees_report", "spend_by_attribution"),
    "add_usage_rows": ("comptroller.analytics._rollup", "add_usage_rows"),
    "apply_usage_batch": ("comptroller.analytics._rollup", "apply_usage_batch"),
    "budget_refusals": ("comptroller.analytics._budget", "budget_refusals"),
    "budget_state": ("comptroller.analytics._budget", "budget_state"),
    "budget_state_pg": ("comptroller.analytics._pg_budget", "budget_state_pg"),
    "budgets_table": ("comptroller.analytics._gate", "budgets_table"),
    "builtin_panels": ("comptroller.analytics._panels", "builtin_panels"),
    "cache_savings": ("comptroller.analytics._savings", "cache_savings"),
    "check_budgets": ("comptroller.analytics._gate", "check_budgets"),
    "check_read_only": ("comptroller.analytics._reader", "check_read_only"),
    "compact": ("comptroller.analytics._compact", "compact"),
    "compare_spend": ("comptroller.analytics._report", "compare_spend"),
    "connect": ("comptroller.analytics._schema", "connect"),
    "focus_table": ("comptroller.analytics._focus", "focus_table"),
    "forecast": ("comptroller.analytics._forecast", "forecast"),
    "gate_json": ("comptroller.analytics._gate", "dumps"),
    "insert_new": ("comptroller.analytics._insert", "insert_new"),
    "insert_new_sql": ("comptroller.analytics._insert", "insert_new_sql"),
    "junit_xml": ("comptroller.analytics._gate", "junit_xml"),
    "keys_unique": ("comptroller.analytics._insert", "keys_unique"),
    "meta_value": ("comptroller.analytics._schema", "meta_value"),
    "migrate": ("comptroller.analytics._schema", "migrate"),
    "open_reader": ("comptroller.analytics._reader", "open_reader"),
    "reader_from_settings": ("comptroller.analytics._source", "reader_from_settings"),
    "rebuild_rollup": ("comptroller.analytics._rollup", "rebuild_rollup"),
    "record_anomaly_events": ("comptroller.analytics._anomaly", "record_anomaly_events"),
    "record_budget_events": ("comptroller.analytics._budget", "record_budget_events"),
    "render_result": ("comptroller.analytics._output", "render"),
    "report_json": ("comptroller.analytics._report", "to_json"),
    "report_markdown": ("comptroller.analytics._report", "markdown"),
    "report_to_github": ("comptroller.analytics._gate", "report_to_github"),
    "reprice": ("comptroller.analytics._reprice", "reprice"),
    "reprice_pg": ("comptroller.analytics._reprice", "reprice_pg"),
    "rollup_timezone": ("comptroller.analytics._rollup", "rollup_timezone"),
    "run_panel": ("comptroller.analytics._panels", "run_panel"),
    "run_read_only": ("comptroller.analytics._reader", "run_read_only"),
    "savings_json": ("comptroller.analytics._report", "savings_json"),
    "savings_markdown": ("comptroller.analytics._report", "savings_markdown"),
    "savings_prices": ("comptroller.analytics._savings", "savings_prices"),
    "spend_anomalies": ("comptroller.analytics._anomaly", "spend_anomalies"),
    "schema_version": ("comptroller.analytics._schema", "schema_version"),
    "set_meta": ("comptroller.analytics._schema", "set_meta"),
    "time_bounds": ("comptroller.analytics._insert", "time_bounds"),
    "truncated_at": ("comptroller.analytics._reader", "truncated_at"),
    "what_if": ("comptroller.analytics._whatif", "what_if"),
    "what_if_json": ("comptroller.analytics._whatif", "what_if_json"),
    "what_if_markdown": ("comptroller.analytics._whatif", "what_if_markdown"),
    "write_focus": ("comptroller.analytics._focus", "write_focus"),
    "write_result": ("comptroller.analytics._output", "write_result"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ARROW_STREAM",
    "DEDUP_KEYS",
    "DIMENSIONS",
    "FOCUS_VERSION",
    "MIGRATIONS",
    "PG_SCHEMA_VERSION",
    "ROLLUP_TIMEZONE_KEY",
    "SCHEMA_VERSION",
    "Analytics",
    "AnalyticsError",
    "Anomaly",
    "AnomalyRule",
    "AttributedSpend",
    "BudgetEvent",
    "BudgetState",
    "BudgetStatus",
    "CacheSaving",
    "Compacted",
    "Dimension",
    "DuckDBReader",
    "FeeLine",
    "Forecast",
    "ForecastBy",
    "GateResult",
    "HttpReader",
    "KeyRefusals",
    "Limits",
    "LocalReader",
    "PgReader",
    "QueryError",
    "QueryTimeout",
    "Reader",
    "ReaderUnavailable",
    "Refusals",
    "RepriceLine",
    "RepriceResult",
    "SpendDiff",
    "SpendLine",
    "WhatIf",
    "WhatIfLine",
    "WhatIfResult",
    "add_usage_rows",
    "apply_usage_batch",
    "attribution_json",
    "attribution_markdown",
    "budget_refusals",
    "budget_state",
    "budget_state_pg",
    "budgets_table",
    "builtin_panels",
    "cache_savings",
    "check_budgets",
    "check_read_only",
    "compact",
    "compare_spend",
    "connect",
    "connect_pg",
    "fee_spend",
    "fees_json",
    "fees_markdown",
    "focus_table",
    "forecast",
    "gate_json",
    "grant_reader",
    "insert_new",
    "insert_new_sql",
    "junit_xml",
    "keys_unique",
    "meta_value",
    "migrate",
    "migrate_pg",
    "open_reader",
    "pg_schema_version",
    "reader_bindings",
    "reader_from_settings",
    "rebuild_rollup",
    "record_anomaly_events",
    "record_budget_events",
    "render_result",
    "report_json",
    "report_markdown",
    "report_to_github",
    "reprice",
    "reprice_pg",
    "revoke_reader",
    "rollup_timezone",
    "run_panel",
    "run_read_only",
    "savings_json",
    "savings_markdown",
    "savings_prices",
    "schema_version",
    "set_meta",
    "shown_url",
    "spend_anomalies",
    "spend_by_attribution",
    "time_bounds",
    "truncated_at",
    "what_if",
    "what_if_json",
    "what_if_markdown",
    "write_focus",
    "write_result",
]
