"""DuckDB schema of comptroller, as ordered migrations applied on open.

The schema belongs to analytics; the collector lands rows into it and every reader (SQL,
polars, dashboards, TUI) queries it. Migrations are append-only: never edit one that has
shipped, add the next. A file written by a newer comptroller is refused with both versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from comptroller._private import private_dir, tighten
from comptroller.analytics._tables import REJECTED_RECORDS, create_sql
from comptroller.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Migration:
    version: int
    """Schema version this migration brings the database to."""
    description: str
    sql: str
    then: Callable[[duckdb.DuckDBPyConnection], None] | None = None
    """A data migration run after `sql`, in the same transaction."""


# Token columns are inclusive counts (input includes cached, output includes reasoning), as in
# the OpenTelemetry GenAI specification and genai-prices.
_V1 = """
CREATE TABLE IF NOT EXISTS llm_usage (
    usage_id            VARCHAR PRIMARY KEY,   -- idempotency key of the landing
    ts                  TIMESTAMPTZ NOT NULL,  -- request start
    trace_id            VARCHAR,
    span_id             VARCHAR,
    service_name        VARCHAR,
    tenant              VARCHAR,               -- the domain (workspace)
    org                 VARCHAR,
    context             VARCHAR,
    purpose             VARCHAR,
    operation           VARCHAR,
    provider            VARCHAR,
    request_model       VARCHAR,
    response_model      VARCHAR,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens   BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
    cost_usd            DECIMAL(20, 10),       -- NULL when unpriced: never a silent 0
    price_source        VARCHAR NOT NULL,      -- genai-prices@<ver> | fallback | provider | reservation | unpriced
    estimated           BOOLEAN NOT NULL DEFAULT FALSE,
    outcome             VARCHAR NOT NULL,      -- ok | error | …
    error_type          VARCHAR,
    attempt             INTEGER,
    fallback_depth      INTEGER,
    profile_id          VARCHAR,
    profile_version     INTEGER,
    latency_ms          DOUBLE,
    budget_cap_usd      DECIMAL(20, 10),       -- daily cap in force for (tenant, context, purpose)
    source              VARCHAR NOT NULL       -- comptroller | derived:<dialect>
);

CREATE TABLE IF NOT EXISTS spans (
    trace_id            VARCHAR NOT NULL,
    span_id             VARCHAR NOT NULL,
    parent_span_id      VARCHAR,
    name                VARCHAR NOT NULL,
    kind                VARCHAR,
    start_ts            TIMESTAMPTZ NOT NULL,
    end_ts              TIMESTAMPTZ,
    duration_ms         DOUBLE,
    status_code         VARCHAR,
    status_message      VARCHAR,
    service_name        VARCHAR,
    scope_name          VARCHAR,
    is_genai            BOOLEAN NOT NULL DEFAULT FALSE,
    dialect             VARCHAR,               -- which alias set the GenAI columns came from
    semconv_version     VARCHAR,
    operation           VARCHAR,
    provider            VARCHAR,
    request_model       VARCHAR,
    response_model      VARCHAR,
    response_id         VARCHAR,
    finish_reasons      VARCHAR[],
    input_tokens        BIGINT,
    output_tokens       BIGINT,
    cache_read_tokens   BIGINT,
    cache_write_tokens  BIGINT,
    reasoning_tokens    BIGINT,
    error_type          VARCHAR,
    server_address      VARCHAR,
    purpose             VARCHAR,
    tenant              VARCHAR,
    org                 VARCHAR,
    context             VARCHAR,
    profile_id          VARCHAR,
    profile_version     INTEGER,
    attempt             INTEGER,
    fallback_depth      INTEGER,
    cost_usd            DECIMAL(20, 10),
    outcome             VARCHAR,
    attributes          JSON,                  -- raw span attributes: re-normalise old data
    resource            JSON,
    PRIMARY KEY (trace_id, span_id)
);

CREATE TABLE IF NOT EXISTS circuit_events (
    event_id            VARCHAR PRIMARY KEY,
    ts                  TIMESTAMPTZ NOT NULL,
    provider            VARCHAR,
    model               VARCHAR,
    state               VARCHAR NOT NULL,      -- opened | half_opened | closed
    reason              VARCHAR,
    failures            INTEGER,
    calls               INTEGER,
    cooldown_s          DOUBLE,
    service_name        VARCHAR,
    attributes          JSON
);

CREATE TABLE IF NOT EXISTS profile_events (
    event_id            VARCHAR PRIMARY KEY,
    ts                  TIMESTAMPTZ NOT NULL,
    action              VARCHAR NOT NULL,      -- activated | rolled_back | warning
    scope_kind          VARCHAR,               -- global | org | domain
    scope_id            VARCHAR,
    purpose             VARCHAR,
    version             INTEGER,
    previous_version    INTEGER,
    model               VARCHAR,
    actor               VARCHAR,
    reason              VARCHAR,
    detail              JSON,
    service_name        VARCHAR
);

CREATE TABLE IF NOT EXISTS budget_events (
    event_id            VARCHAR PRIMARY KEY,
    ts                  TIMESTAMPTZ NOT NULL,
    day                 DATE,
    kind                VARCHAR NOT NULL,      -- warning | exceeded | rejected
    tenant              VARCHAR,
    context             VARCHAR,
    purpose             VARCHAR,
    cap_usd             DECIMAL(20, 10),
    spent_usd           DECIMAL(20, 10),
    reserved_usd        DECIMAL(20, 10),
    service_name        VARCHAR,
    attributes          JSON
);

-- Derived from llm_usage by analytics (incrementally as batches land; rebuilt on demand).
CREATE TABLE IF NOT EXISTS llm_usage_daily (
    day                 DATE NOT NULL,         -- in the configured time zone
    tenant              VARCHAR NOT NULL,
    org                 VARCHAR NOT NULL,
    context             VARCHAR NOT NULL,
    purpose             VARCHAR NOT NULL,
    provider            VARCHAR NOT NULL,
    model               VARCHAR NOT NULL,
    calls               BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    estimated_calls     BIGINT NOT NULL,
    unpriced_calls      BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cache_read_tokens   BIGINT NOT NULL,
    cache_write_tokens  BIGINT NOT NULL,
    reasoning_tokens    BIGINT NOT NULL,
    cost_usd            DECIMAL(38, 10) NOT NULL,  -- priced rows only; see unpriced_calls
    budget_cap_usd      DECIMAL(20, 10),       -- latest cap in force for the group's key that day
    budget_cap_ts       TIMESTAMPTZ,           -- when that cap was last seen
    first_ts            TIMESTAMPTZ NOT NULL,
    last_ts             TIMESTAMPTZ NOT NULL
    -- Unique on (day, tenant, org, context, purpose, provider, model), kept so by
    -- analytics' rollup code. No PRIMARY KEY on purpose: its index made a full rebuild
    -- of a 10M-row table 5x slower, and the table is derived (rebuilt from llm_usage).
);

-- Derived from llm_usage_daily by analytics: today's spend per budget key, read by the
-- budget state (a few hundred rows a day instead of thousands of rollup groups).
CREATE TABLE IF NOT EXISTS llm_budget_daily (
    day                 DATE NOT NULL,
    tenant              VARCHAR NOT NULL,
    context             VARCHAR NOT NULL,
    purpose             VARCHAR NOT NULL,
    spent_usd           DECIMAL(38, 10) NOT NULL,
    budget_cap_usd      DECIMAL(20, 10),
    budget_cap_ts       TIMESTAMPTZ,
    calls               BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    estimated_calls     BIGINT NOT NULL,
    unpriced_calls      BIGINT NOT NULL,
    unpriced_models     VARCHAR[] NOT NULL,
    last_ts             TIMESTAMPTZ NOT NULL
);

-- Settings the data depends on, e.g. the time zone the rollup's days are cut in.
CREATE TABLE IF NOT EXISTS comptroller_meta (
    key                 VARCHAR PRIMARY KEY,
    value               VARCHAR NOT NULL
);
"""


def _rebuild_without_primary_key(table: str) -> str:
    """Statements recreating `table` of v1 with the same columns and no primary key."""
    start = _V1.index(f"CREATE TABLE IF NOT EXISTS {table} (")
    ddl = _V1[start : _V1.index(");", start) + 2]
    ddl = ddl.replace(f"CREATE TABLE IF NOT EXISTS {table} (", f"CREATE TABLE {table}__v2 (")
    ddl = ddl.replace("VARCHAR PRIMARY KEY,", "VARCHAR NOT NULL,")
    ddl = re.sub(r",\s*\n\s*PRIMARY KEY \([^)]*\)\s*\n\);", "\n);", ddl)
    assert "PRIMARY KEY" not in ddl, ddl
    return (
        f"{ddl}\nINSERT INTO {table}__v2 SELECT * FROM {table};\n"
        f"DROP TABLE {table};\nALTER TABLE {table}__v2 RENAME TO {table};\n"
    )


# The primary keys of the two tables that grow without bound were ART indexes held in memory:
# under the collector's 256 MB limit its landings failed after ~2.4 M spans. Landings now
# skip rows already landed by an anti-join in the batch's time range (analytics/_insert.py).
_V2 = _rebuild_without_primary_key("llm_usage") + _rebuild_without_primary_key("spans")

# A span's resource (the SDK's description of the process: service, host, pod, runtime) is
# the same for every span a process sends, and real ones are 0.3–1 KB of JSON: stored with
# each span it cost the landing ~2.4 µs a span. It is stored once in `resources`, keyed by a
# 64-bit hash of its JSON text; `spans` is a view that joins it back, so readers see the same
# columns as before. Rows landed before v3 keep theirs inline (`span_rows.resource`).
_V3 = """
CREATE TABLE resources (
    resource_id         UBIGINT PRIMARY KEY,   -- blake2b-64 of the JSON text
    resource            JSON NOT NULL,
    first_seen          TIMESTAMPTZ NOT NULL   -- start of the first span landed with it
);
ALTER TABLE spans RENAME TO span_rows;
ALTER TABLE span_rows ADD COLUMN resource_id UBIGINT;
CREATE VIEW spans AS
SELECT s.* EXCLUDE (resource, resource_id), coalesce(s.resource, r.resource) AS resource
FROM span_rows AS s LEFT JOIN resources AS r ON r.resource_id = s.resource_id;
"""

# A record that cannot land (a cost over DECIMAL(20, 10), a negative token count, a timestamp
# before 2000, …) is quarantined here with its raw attributes and the reason, instead of
# failing its whole landing (collector/_validate.py). Declared in analytics/_tables.py.
_V4 = create_sql(REJECTED_RECORDS)

# `comptroller reprice` keeps what it replaced: when, the cost and price source before, and
# the version of the prices it applied (genai-prices' package version, or the fallback
# registry's digest). NULL on rows never repriced (analytics/_reprice.py).
_V5 = """
ALTER TABLE llm_usage ADD COLUMN repriced_at TIMESTAMPTZ;
ALTER TABLE llm_usage ADD COLUMN repriced_from_usd DECIMAL(20, 10);
ALTER TABLE llm_usage ADD COLUMN repriced_from_source VARCHAR;
ALTER TABLE llm_usage ADD COLUMN price_version VARCHAR;
"""

# The hourly spend of today was summed from llm_usage since local midnight: a read that grows
# with the day's volume (the dashboard's spend view, every refresh). `llm_usage_hourly` holds
# it per local hour and budget key (tenant, context, purpose), kept current by the same code
# as the daily rollup (analytics/_rollup.py); its size depends on the keys, not the volume.
# `hour` is the local wall-clock hour in the rollup's time zone, as `day` is the local day.
# Existing rows are rolled up here in that zone (ICU's timezone(): a one-off cost).
_V6 = """
CREATE TABLE llm_usage_hourly (
    hour                TIMESTAMP NOT NULL,    -- start of the local hour (rollup time zone)
    tenant              VARCHAR NOT NULL,
    context             VARCHAR NOT NULL,
    purpose             VARCHAR NOT NULL,
    calls               BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    unpriced_calls      BIGINT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cost_usd            DECIMAL(38, 10) NOT NULL  -- priced rows only; see unpriced_calls
);
INSERT INTO llm_usage_hourly
WITH zone AS (
    SELECT coalesce(
        (SELECT value FROM comptroller_meta WHERE key = 'rollup_timezone'), 'UTC') AS name
)
SELECT date_trunc('hour', timezone(zone.name, ts)) AS hour,
       coalesce(tenant, '') AS tenant, coalesce(context, '') AS context,
       coalesce(purpose, '') AS purpose,
       count(*) AS calls,
       count(*) FILTER (WHERE outcome <> 'ok') AS errors,
       count(*) FILTER (WHERE cost_usd IS NULL
                        OR price_source IN ('unpriced', 'reservation')) AS unpriced_calls,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd
FROM llm_usage, zone
GROUP BY ALL
ORDER BY hour;
"""


# What the alert notifier (collector/_notify.py) did with each alert-worthy event, per
# webhook: one row per (event, webhook) once an outcome is known. An event of the last day
# without a row was queued when its process stopped: the next notifier sends it again.
_V8 = """
CREATE TABLE alert_deliveries (
    event_id            VARCHAR NOT NULL,
    webhook             VARCHAR NOT NULL,      -- the webhook's name (never its URL)
    kind                VARCHAR NOT NULL,      -- budget.warning | budget.exceeded | ...
    status              VARCHAR NOT NULL,      -- delivered | failed
    attempts            INTEGER NOT NULL,
    http_status         INTEGER,
    error               VARCHAR,
    first_attempt_ts    TIMESTAMPTZ NOT NULL,
    last_attempt_ts     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (event_id, webhook)
);
"""


# Non-token fees (their share of cost_usd, and their counts) and attribution (end user,
# session, feature, tags) on each usage row; the attribute of a budget event raised by a
# budget by attribution.
_V9 = """
ALTER TABLE llm_usage ADD COLUMN fee_cost_usd DECIMAL(20, 10);
ALTER TABLE llm_usage ADD COLUMN fees JSON;
ALTER TABLE llm_usage ADD COLUMN user_id VARCHAR;
ALTER TABLE llm_usage ADD COLUMN session_id VARCHAR;
ALTER TABLE llm_usage ADD COLUMN feature VARCHAR;
ALTER TABLE llm_usage ADD COLUMN tags MAP(VARCHAR, VARCHAR);
ALTER TABLE budget_events ADD COLUMN attribute VARCHAR;
"""


def _recount_unpriced(con: duckdb.DuckDBPyConnection) -> None:
    # The rollups counted a call unpriced only when its cost was NULL; `reprice` and the
    # budget gate also count a reservation standing in for a price (analytics/_unpriced.py).
    # Rebuilt from llm_usage, so every stored count follows the one definition.
    from comptroller.analytics._rollup import rebuild_in_transaction

    if con.execute("SELECT count(*) FROM llm_usage_daily").fetchone() == (0,):
        return  # nothing rolled up yet (a new file): nothing to recount
    rebuild_in_transaction(con, timezone=meta_value(con, "rollup_timezone") or "UTC")


MIGRATIONS: Sequence[Migration] = (
    Migration(version=1, description="usage, spans, events and the daily rollup", sql=_V1),
    Migration(
        version=2,
        description="llm_usage and spans without primary keys (bounded memory)",
        sql=_V2,
    ),
    Migration(
        version=3,
        description="span resources stored once (resources; spans a view over span_rows)",
        sql=_V3,
    ),
    Migration(
        version=4,
        description="rejected_records: records quarantined instead of landed",
        sql=_V4,
    ),
    Migration(
        version=5,
        description="llm_usage repricing provenance (repriced_at, cost and source before)",
        sql=_V5,
    ),
    Migration(
        version=6,
        description="llm_usage_hourly: spend per local hour and budget key",
        sql=_V6,
    ),
    Migration(
        version=7,
        description="rollups count unpriced calls as reprice does (reservations included)",
        sql="SELECT 1",
        then=_recount_unpriced,
    ),
    Migration(
        version=8,
        description="alert_deliveries: webhook deliveries of budget and circuit alerts",
        sql=_V8,
    ),
    Migration(
        version=9,
        description="llm_usage fees and attribution (user, session, feature, tags)",
        sql=_V9,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this build of comptroller writes and reads."""

_META = """
CREATE TABLE IF NOT EXISTS comptroller_schema (
    version     INTEGER NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    description VARCHAR
)
"""


def meta_value(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    """The `comptroller_meta` value of `key` (None when unset)."""
    rows = con.execute("SELECT value FROM comptroller_meta WHERE key = ?", [key]).fetchall()
    return None if not rows else str(rows[0][0])


def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    """Set `comptroller_meta[key]` (in the caller's transaction, if one is open)."""
    con.execute(
        "INSERT OR REPLACE INTO comptroller_meta (key, value) VALUES (?, ?)", [key, value]
    ).fetchall()


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open database (0 for an empty one)."""
    # fetchall, not fetchone: DuckDB 2.0 refuses further work on a connection whose last
    # result was not read to the end.
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'comptroller_schema'"
    ).fetchall()
    if not exists or not exists[0][0]:
        return 0
    rows = con.execute("SELECT max(version) FROM comptroller_schema").fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def migrate(con: duckdb.DuckDBPyConnection, *, path: Path | str = "database") -> list[int]:
    """Apply every pending migration, each in its own transaction.

    Returns:
        The versions applied (empty when the database was current).

    Raises:
        ConfigError: The database was written by a newer comptroller.
    """
    current = schema_version(con)
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema version {current} is newer than this comptroller's "
            f"{SCHEMA_VERSION}; upgrade comptroller to read it"
        )
    applied: list[int] = []
    if current < SCHEMA_VERSION and current > 0:
        # A migration that rolls up existing rows runs for seconds on a big file: DuckDB
        # would draw its progress bar into the collector's or the command's output.
        con.execute("SET enable_progress_bar = false").fetchall()
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(_META)
            con.execute(migration.sql)
            if migration.then is not None:
                migration.then(con)
            con.execute(
                "INSERT INTO comptroller_schema (version, description) VALUES (?, ?)",
                [migration.version, migration.description],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied


def connect(
    path: Path | str, *, read_only: bool = False, row_group_size: int | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file at `path`, creating and migrating it unless `read_only`.

    Args:
        path: The database file.
        read_only: Open for reading only (the file must exist).
        row_group_size: Rows per row group written by this connection (DuckDB's default,
            122,880, when None). A transaction that appends at least a row group's worth
            to a table writes it to the file compressed, instead of to the WAL first and
            compressed again at the next checkpoint: the collector lands with a small one
            (see `CollectorSettings.row_group_size`). Not stored in the file: a later
            checkpoint by a connection without it merges small row groups.

    Raises:
        ConfigError: The file cannot be opened (locked by another writer, unreadable,
            not a DuckDB file) or is from a newer version; the message says which.
    """
    target = Path(path)
    if read_only and not target.exists():
        raise ConfigError(
            f"{target}: no such database (run 'uv run comptroller demo' or a collector first)"
        )
    try:
        if not read_only and not target.parent.exists():
            private_dir(target.parent)  # made for it: private (an existing one is not ours)
        existed = target.exists()
        con = _open(target, read_only=read_only, row_group_size=row_group_size)
        if not read_only:
            # Billing data: owner only (DuckDB creates files by the umask). Its WAL is
            # re-created after every checkpoint: the data directory (0700) guards it, and
            # `comptroller collect` runs with umask 077.
            tighten(target, created=not existed)
            tighten(target.with_name(target.name + ".wal"), created=not existed)
    except duckdb.IOException as exc:
        raise ConfigError(f"{target}: cannot open database: {_first_line(exc)}") from exc
    except OSError as exc:
        raise ConfigError(f"{target}: cannot open database: {exc.strerror or exc}") from exc
    try:
        if read_only:
            current = schema_version(con)
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"{target}: schema version {current} is newer than this comptroller's "
                    f"{SCHEMA_VERSION}; upgrade comptroller to read it"
                )
        else:
            migrate(con, path=target)
    except BaseException:
        con.close()
        raise
    return con


_RESERVED_CATALOGS = frozenset({"memory", "system", "temp", "main"})
"""Catalog names a file cannot be attached under (DuckDB's own)."""


def _open(
    target: Path, *, read_only: bool, row_group_size: int | None
) -> duckdb.DuckDBPyConnection:
    if row_group_size is None:
        return duckdb.connect(str(target), read_only=read_only)
    if row_group_size < 2048:
        raise ConfigError(
            f"row_group_size must be at least 2048 (DuckDB's vector size), not {row_group_size}"
        )
    # The row group size is an option of ATTACH only: attach the file to an in-memory
    # instance under the name a plain connect gives it (its stem), and make it the default.
    # The in-memory catalog is detached, so that every cursor starts on the file too.
    alias = target.stem if target.stem.lower() not in _RESERVED_CATALOGS else "comptroller"
    quoted_alias = '"' + alias.replace('"', '""') + '"'
    options = f"ROW_GROUP_SIZE {int(row_group_size)}" + (", READ_ONLY" if read_only else "")
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {sql_path(target)} AS {quoted_alias} ({options})").fetchall()
        con.execute(f"USE {quoted_alias}").fetchall()
        con.execute("DETACH memory").fetchall()
    except BaseException:
        con.close()
        raise
    return con


def sql_path(path: Path) -> str:
    """`path` as an SQL string literal (for ATTACH, which takes no parameters)."""
    return "'" + str(path).replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
