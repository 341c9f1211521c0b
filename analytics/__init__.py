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
`rebuild_rollup` recomputes the rollup whole.

Example:
    >>> from comptroller.analytics import open_reader, budget_state
    >>> reader = open_reader(db="comptroller.duckdb")  # doctest: +SKIP
    >>> [b.status for b in budget_state(reader, timezone="Europe/Paris")]  # doctest: +SKIP
    ['exceeded', 'ok']
"""

from typing import TYPE_CHECKING, Any

from comptroller.analytics._budget import (
    BudgetEvent,
    BudgetState,
    BudgetStatus,
    budget_state,
    record_budget_events,
)
from comptroller.analytics._compact import Compacted, compact
from comptroller.analytics._errors import AnalyticsError, QueryError, ReaderUnavailable
from comptroller.analytics._insert import (
    DEDUP_KEYS,
    insert_new,
    insert_new_sql,
    keys_unique,
    time_bounds,
)
from comptroller.analytics._panels import builtin_panels, run_panel
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
from comptroller.analytics._rollup import (
    ROLLUP_TIMEZONE_KEY,
    add_usage_rows,
    apply_usage_batch,
    rebuild_rollup,
    rollup_timezone,
)
from comptroller.analytics._schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    connect,
    meta_value,
    migrate,
    schema_version,
    set_meta,
)

if TYPE_CHECKING:
    from comptroller.analytics._frames import DIMENSIONS, Analytics, Dimension

_LAZY = {"Analytics", "DIMENSIONS", "Dimension"}


def __getattr__(name: str) -> Any:
    # polars loads only for the DataFrame API: the CLI and the collector never pay for it.
    if name in _LAZY:
        from comptroller.analytics import _frames

        return getattr(_frames, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARROW_STREAM",
    "DEDUP_KEYS",
    "DIMENSIONS",
    "MIGRATIONS",
    "ROLLUP_TIMEZONE_KEY",
    "SCHEMA_VERSION",
    "Analytics",
    "AnalyticsError",
    "BudgetEvent",
    "BudgetState",
    "BudgetStatus",
    "Compacted",
    "Dimension",
    "DuckDBReader",
    "HttpReader",
    "Limits",
    "QueryError",
    "QueryTimeout",
    "Reader",
    "ReaderUnavailable",
    "add_usage_rows",
    "apply_usage_batch",
    "budget_state",
    "builtin_panels",
    "check_read_only",
    "compact",
    "connect",
    "insert_new",
    "insert_new_sql",
    "keys_unique",
    "meta_value",
    "migrate",
    "open_reader",
    "rebuild_rollup",
    "record_budget_events",
    "rollup_timezone",
    "run_panel",
    "run_read_only",
    "schema_version",
    "set_meta",
    "time_bounds",
    "truncated_at",
]
