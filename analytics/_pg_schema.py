"""The ledger's schema on PostgreSQL, derived from the same declarations as DuckDB's.

Every landed table's columns come from `analytics/_tables.py` (`LANDED`): `pg_type` maps a
declared DuckDB type to its PostgreSQL type in one place, and `pg_create_sql` writes the
`CREATE TABLE` from a declaration — the column lists are never written twice. The rollups
(`llm_usage_daily`, `llm_budget_daily`, `llm_usage_hourly`) are declared here with the same
`Column` type, as DuckDB's v1 and v6 migrations hold them, plus the primary keys PostgreSQL's
upserts (`INSERT … ON CONFLICT DO UPDATE`) need.

What differs from DuckDB, on purpose:

* `llm_usage` and `span_rows` have primary keys (`usage_id`; `trace_id, span_id`): a
  PostgreSQL B-tree lives on disk, so it does not grow the memory of the writer, and it is
  what makes landing idempotent across collectors (`ON CONFLICT DO NOTHING`).
* A span's resource is stored once in `resources`, keyed by its 64-bit hash as a signed
  `BIGINT` (PostgreSQL has no unsigned type: the same 64 bits); `spans` is a view joining it
  back, as in DuckDB's v3.
* `ledger_positions` records, per collector, each landed range of its ingest log, in the
  transaction of the rows (`collector/_land_pg.py`): the highest position of a collector is
  where its replay resumes, and a position at or below it is never landed twice.

* `alert_deliveries` (v3) is DuckDB's v8 table from the same declaration (`_tables.py`
  `ALERT_DELIVERIES`), shared by the fleet's notifiers; `alert_claims` beside it records
  which collector is sending an alert to a webhook, so that one of them sends it.

Migrations are append-only and versioned in `comptroller_schema`, like DuckDB's
(`analytics/_schema.py`); `migrate_pg` applies them under an advisory lock, so that several
collectors starting at once migrate one database once. A later change to a declaration in
`_tables.py` needs a migration here (`ALTER TABLE … ADD COLUMN IF NOT EXISTS …`): v1 is the
declarations as they stood when it shipped, and `tests/collector/test_pg_ledger.py` holds the
migrated database equal to the current declarations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow as pa

from comptroller.analytics._tables import ALERT_DELIVERIES, LANDED, Column, Table
from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from adbc_driver_postgresql.dbapi import Connection

_TS: Final = pa.timestamp("us", tz="UTC")
_STR: Final = pa.string()
_I64: Final = pa.int64()


def pg_type(duckdb_type: str) -> str:
    """The PostgreSQL type of a column declared with DuckDB type `duckdb_type` (bare).

    Raises:
        ConfigError: A type with no mapping (add one here when a declaration needs it).
    """
    bare = duckdb_type.strip().upper()
    simple = {
        "VARCHAR": "TEXT",
        "BIGINT": "BIGINT",
        "INTEGER": "INTEGER",
        "DOUBLE": "DOUBLE PRECISION",
        "BOOLEAN": "BOOLEAN",
        "TIMESTAMPTZ": "TIMESTAMPTZ",
        "TIMESTAMP": "TIMESTAMP",
        "DATE": "DATE",
        "JSON": "JSONB",
        "UBIGINT": "BIGINT",  # the same 64 bits, signed (resource ids)
    }
    if bare in simple:
        return simple[bare]
    if bare.startswith("MAP("):
        return "JSONB"  # a map of strings is a JSON object; tags['team'] is tags->>'team'
    if bare.endswith("[]"):
        return pg_type(bare[:-2]) + "[]"
    decimal = re.fullmatch(r"DECIMAL\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", bare)
    if decimal:
        return f"NUMERIC({decimal.group(1)}, {decimal.group(2)})"
    raise ConfigError(
        f"no PostgreSQL type for the DuckDB type {duckdb_type!r}: add it to "
        "analytics/_pg_schema.py pg_type"
    )


def arrow_pg_type(arrow: pa.DataType) -> str:
    """The PostgreSQL type an Arrow column is staged in (binary COPY needs it exact)."""
    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow):
        return arrow_pg_type(arrow.value_type) + "[]"
    natural = {
        _STR: "TEXT",
        pa.large_string(): "TEXT",
        _I64: "BIGINT",
        pa.int32(): "INTEGER",
        pa.float64(): "DOUBLE PRECISION",
        pa.bool_(): "BOOLEAN",
        _TS: "TIMESTAMPTZ",
        pa.timestamp("us"): "TIMESTAMP",
        pa.date32(): "DATE",
    }
    found = natural.get(arrow)
    if found is None:
        raise ConfigError(f"no PostgreSQL staging type for the Arrow type {arrow}")
    return found


def pg_column_sql(column: Column) -> str:
    """A column's definition: its PostgreSQL type and the declaration's constraints."""
    constraints = column.sql[len(column.sql_type) :].strip()
    return f"{pg_type(column.sql_type)} {constraints}".strip()


def pg_select_expr(column: Column, source: pa.DataType | None = None) -> str:
    """The SQL turning a staged column (Arrow type `source`, default the declared one) into
    the stored type: the bare name when the staged type already is it, else a cast."""
    stored = pg_type(column.sql_type)
    staged = arrow_pg_type(source if source is not None else column.arrow)
    if staged == stored:
        return column.name
    return f"CAST({column.name} AS {stored})"


def pg_create_sql(
    table: Table,
    *,
    name: str | None = None,
    primary_key: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """`CREATE TABLE` of `table` on PostgreSQL from its declaration.

    Args:
        table: The declaration.
        name: The table's name in PostgreSQL (default: the declared one).
        primary_key: Its primary key (default: the declared one).
        extra: Further column definitions (`"resource_id BIGINT"`), after the declared ones.
    """
    lines = [f"    {c.name:<19} {pg_column_sql(c)}" for c in table.columns]
    lines += [f"    {definition}" for definition in extra]
    key = table.primary_key if primary_key is None else tuple(primary_key)
    if key:
        lines.append(f"    PRIMARY KEY ({', '.join(key)})")
    return f"CREATE TABLE IF NOT EXISTS {name or table.name} (\n" + ",\n".join(lines) + "\n)"


def _c(name: str, sql: str, arrow: pa.DataType) -> Column:
    return Column(name, sql, arrow)


_MEASURES: Final = (
    _c("calls", "BIGINT NOT NULL", _I64),
    _c("errors", "BIGINT NOT NULL", _I64),
    _c("estimated_calls", "BIGINT NOT NULL", _I64),
    _c("unpriced_calls", "BIGINT NOT NULL", _I64),
)
_TOKENS: Final = tuple(
    _c(name, "BIGINT NOT NULL", _I64)
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    )
)
_SUM_MONEY: Final = "DECIMAL(38, 10) NOT NULL"

LLM_USAGE_DAILY: Final = Table(
    "llm_usage_daily",
    (
        _c("day", "DATE NOT NULL", pa.date32()),  # in the rollup's time zone
        _c("tenant", "VARCHAR NOT NULL", _STR),
        _c("org", "VARCHAR NOT NULL", _STR),
        _c("context", "VARCHAR NOT NULL", _STR),
        _c("purpose", "VARCHAR NOT NULL", _STR),
        _c("provider", "VARCHAR NOT NULL", _STR),
        _c("model", "VARCHAR NOT NULL", _STR),
        *_MEASURES,
        *_TOKENS,
        _c("cost_usd", _SUM_MONEY, _STR),  # priced rows only; see unpriced_calls
        _c("budget_cap_usd", "DECIMAL(20, 10)", _STR),  # latest cap seen that day
        _c("budget_cap_ts", "TIMESTAMPTZ", _TS),
        _c("first_ts", "TIMESTAMPTZ NOT NULL", _TS),
        _c("last_ts", "TIMESTAMPTZ NOT NULL", _TS),
    ),
    primary_key=("day", "tenant", "org", "context", "purpose", "provider", "model"),
)
"""Usage per local day and key, as DuckDB's `llm_usage_daily` (v1)."""

LLM_BUDGET_DAILY: Final = Table(
    "llm_budget_daily",
    (
        _c("day", "DATE NOT NULL", pa.date32()),
        _c("tenant", "VARCHAR NOT NULL", _STR),
        _c("context", "VARCHAR NOT NULL", _STR),
        _c("purpose", "VARCHAR NOT NULL", _STR),
        _c("spent_usd", _SUM_MONEY, _STR),
        _c("budget_cap_usd", "DECIMAL(20, 10)", _STR),
        _c("budget_cap_ts", "TIMESTAMPTZ", _TS),
        *_MEASURES,
        _c("unpriced_models", "VARCHAR[] NOT NULL", pa.list_(_STR)),
        _c("last_ts", "TIMESTAMPTZ NOT NULL", _TS),
    ),
    primary_key=("day", "tenant", "context", "purpose"),
)
"""Spend per local day and budget key, as DuckDB's `llm_budget_daily` (v1)."""

LLM_USAGE_HOURLY: Final = Table(
    "llm_usage_hourly",
    (
        _c("hour", "TIMESTAMP NOT NULL", pa.timestamp("us")),  # local wall-clock hour
        _c("tenant", "VARCHAR NOT NULL", _STR),
        _c("context", "VARCHAR NOT NULL", _STR),
        _c("purpose", "VARCHAR NOT NULL", _STR),
        _c("calls", "BIGINT NOT NULL", _I64),
        _c("errors", "BIGINT NOT NULL", _I64),
        _c("unpriced_calls", "BIGINT NOT NULL", _I64),
        _c("input_tokens", "BIGINT NOT NULL", _I64),
        _c("output_tokens", "BIGINT NOT NULL", _I64),
        _c("cost_usd", _SUM_MONEY, _STR),
    ),
    primary_key=("hour", "tenant", "context", "purpose"),
)
"""Spend per local hour and budget key, as DuckDB's `llm_usage_hourly` (v6)."""

ROLLUPS: Final[dict[str, Table]] = {
    t.name: t for t in (LLM_USAGE_DAILY, LLM_BUDGET_DAILY, LLM_USAGE_HOURLY)
}

STORED: Final[dict[str, str]] = {"spans": "span_rows"}
"""Landed table -> the PostgreSQL table that stores its rows (`spans` is a view)."""
PRIMARY_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "llm_usage": ("usage_id",),
    "spans": ("trace_id", "span_id"),
}
"""Keys of the tables DuckDB keeps without one (schema v2); the others are declared."""


def conflict_key(table: str) -> tuple[str, ...]:
    """The columns a landed row of `table` is unique on (its `ON CONFLICT` target)."""
    declared = LANDED[table]
    if table in PRIMARY_KEYS:
        return PRIMARY_KEYS[table]
    if declared.primary_key:
        return declared.primary_key
    inline = [c.name for c in declared.columns if "PRIMARY KEY" in c.sql]
    if not inline:
        raise ConfigError(f"{table} has no key to land it idempotently on PostgreSQL")
    return tuple(inline)


def _v1() -> list[str]:
    statements = [
        pg_create_sql(
            LANDED[name], name=STORED.get(name), primary_key=PRIMARY_KEYS.get(name), extra=extra
        )
        for name, extra in (
            ("llm_usage", ()),
            ("spans", ("resource_id BIGINT",)),
            ("circuit_events", ()),
            ("profile_events", ()),
            ("budget_events", ()),
            ("rejected_records", ()),
        )
    ]
    statements += [pg_create_sql(table) for table in ROLLUPS.values()]
    landed = ", ".join(c.name for c in LANDED["spans"].columns if c.name != "resource")
    statements += [
        """CREATE TABLE IF NOT EXISTS resources (
    resource_id         BIGINT PRIMARY KEY,    -- blake2b-64 of the JSON text, as signed
    resource            JSONB NOT NULL,
    first_seen          TIMESTAMPTZ NOT NULL
)""",
        f"""CREATE OR REPLACE VIEW spans AS
SELECT {", ".join("s." + name for name in landed.split(", "))},
       coalesce(s.resource, r.resource) AS resource
FROM span_rows AS s LEFT JOIN resources AS r ON r.resource_id = s.resource_id""",
        # Reads by time: the budget's refusals of the day, recent calls, the landing's range.
        "CREATE INDEX IF NOT EXISTS llm_usage_ts ON llm_usage (ts)",
        "CREATE INDEX IF NOT EXISTS span_rows_start_ts ON span_rows (start_ts)",
        "CREATE INDEX IF NOT EXISTS budget_events_day ON budget_events (kind, day)",
        """CREATE TABLE IF NOT EXISTS comptroller_meta (
    key                 TEXT PRIMARY KEY,
    value               TEXT NOT NULL
)""",
        # One row per landing transaction of a collector: the range of its ingest log it
        # landed (first_position .. position). A collector's highest position is where its
        # replay resumes; the landing skips every position at or below it.
        """CREATE TABLE IF NOT EXISTS ledger_positions (
    collector_id        TEXT NOT NULL,
    position            BIGINT NOT NULL,
    first_position      BIGINT NOT NULL,
    rows                BIGINT NOT NULL,
    landed_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (collector_id, position)
)""",
    ]
    return statements


# Row-level security for readers (v2). A reading role sees the rows its bindings in
# `ledger_readers` allow: (org NULL, tenant NULL) every row (ops staff); (org X, tenant NULL)
# the rows of org X (an org's admins); (org X or NULL, tenant T) the rows of domain T (a
# domain's admins). A role with no binding sees no row. Each policy is a few uncorrelated
# subqueries of the role's own bindings, which PostgreSQL evaluates once per query (hashed),
# not once per row.
#
# Tables with an org column (llm_usage, span_rows, llm_usage_daily) are judged on (org,
# tenant). Tables keyed by tenant alone (llm_budget_daily, llm_usage_hourly,
# budget_events) are judged on the tenant: an org's reader sees the tenants its org's
# usage is in (`llm_usage_daily`, itself filtered), never the tenant '' or NULL (usage
# with no tenant is pooled across orgs there: ops only). `profile_events` follow their
# scope (global: any bound role; org; domain), `circuit_events` (provider-wide, no one
# org's usage) any bound role, `resources` the spans the role sees, `rejected_records`
# (raw quarantined records of any tenant) ops only.
#
# Policies are for SELECT only and not FORCEd: the tables' owner (the collector's role,
# which ran the migrations) is not subject to them and keeps landing. A writer that is not
# the owner needs BYPASSRLS. `spans` is a view: `security_invoker` makes the reader's
# policies apply to `span_rows` through it (PostgreSQL 15 or later).
_MINE: Final = "ledger_readers r WHERE r.role_name = current_user"
_ALL: Final = f"EXISTS (SELECT 1 FROM {_MINE} AND r.org IS NULL AND r.tenant IS NULL)"
_ORGS: Final = f"SELECT r.org FROM {_MINE} AND r.org IS NOT NULL AND r.tenant IS NULL"
_TENANTS: Final = f"SELECT r.tenant FROM {_MINE} AND r.tenant IS NOT NULL"
_ORG_TENANTS: Final = (
    f"SELECT d.tenant FROM llm_usage_daily d WHERE d.tenant <> '' AND d.org IN ({_ORGS})"
)
_BOUND: Final = f"EXISTS (SELECT 1 FROM {_MINE})"


def _org_tenant_policy() -> str:
    return (
        f"{_ALL} OR org IN ({_ORGS}) OR (org, tenant) IN "
        f"(SELECT r.org, r.tenant FROM {_MINE} AND r.org IS NOT NULL AND r.tenant IS NOT NULL)"
        f" OR tenant IN (SELECT r.tenant FROM {_MINE} AND r.org IS NULL "
        "AND r.tenant IS NOT NULL)"
    )


def _tenant_policy() -> str:
    return f"{_ALL} OR tenant IN ({_TENANTS}) OR tenant IN ({_ORG_TENANTS})"


ROW_SCOPED: Final[dict[str, str]] = {
    "llm_usage": _org_tenant_policy(),
    "span_rows": _org_tenant_policy(),
    "llm_usage_daily": _org_tenant_policy(),
    "llm_budget_daily": _tenant_policy(),
    "llm_usage_hourly": _tenant_policy(),
    "budget_events": _tenant_policy(),
    "profile_events": (
        f"{_ALL} OR (scope_kind = 'global' AND {_BOUND})"
        f" OR (scope_kind = 'org' AND scope_id IN ({_ORGS}))"
        f" OR (scope_kind = 'domain' AND (scope_id IN ({_TENANTS})"
        f" OR scope_id IN ({_ORG_TENANTS})))"
    ),
    "circuit_events": _BOUND,
    "resources": f"{_ALL} OR resource_id IN (SELECT s.resource_id FROM span_rows s)",
    "rejected_records": _ALL,
}
"""Ledger table -> the condition a reading role's row must meet (`USING` of its policy)."""
OPS_ONLY: Final[dict[str, str]] = {"alert_deliveries": _ALL}
"""Tables of schema v3 only a reader bound to every org sees (no tenant column): webhook
deliveries name events of every tenant."""
READABLE: Final = (
    *ROW_SCOPED,
    *OPS_ONLY,
    "spans",
    "comptroller_meta",
    "comptroller_schema",
    "ledger_readers",
)
"""What `grant_reader` lets a role SELECT (row-scoped tables, the view, the metadata)."""


def _v2() -> list[str]:
    statements = [
        """CREATE TABLE IF NOT EXISTS ledger_readers (
    role_name           TEXT NOT NULL,         -- a PostgreSQL role (current_user)
    org                 TEXT,                  -- NULL: every org
    tenant              TEXT,                  -- NULL: every tenant (domain) of the org
    granted_at          TIMESTAMPTZ NOT NULL DEFAULT now()
)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS ledger_readers_binding "
        "ON ledger_readers (role_name, coalesce(org, ''), coalesce(tenant, ''))",
        "ALTER TABLE ledger_readers ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY own_bindings ON ledger_readers FOR SELECT USING (role_name = current_user)",
        "ALTER VIEW spans SET (security_invoker = true)",
    ]
    for table, condition in ROW_SCOPED.items():
        statements += [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY ledger_readers ON {table} FOR SELECT USING ({condition})",
        ]
    return statements


ALERT_CLAIM_TTL_S: Final = 900
"""How long a collector's claim on sending one alert to one webhook holds while no outcome
is recorded (`alert_claims`); after it, another collector may send it (the claimer died)."""


def _v3() -> list[str]:
    """Webhook deliveries (`alert_deliveries`, the declaration DuckDB's v8 holds) and the
    claims that keep two collectors from sending one alert to one webhook twice."""
    statements = [
        pg_create_sql(ALERT_DELIVERIES),
        # Recent outcomes first: a start's look for alerts still unanswered reads the day.
        "CREATE INDEX IF NOT EXISTS alert_deliveries_last ON alert_deliveries (last_attempt_ts)",
        # Who is sending (event, webhook) now: a row is claimed (INSERT … ON CONFLICT) by
        # the collector about to POST it; another may take it over only once the claim is
        # older than ALERT_CLAIM_TTL_S with no outcome, or when it is that collector again
        # (its id's lock says its predecessor is gone). Never readable by readers.
        """CREATE TABLE IF NOT EXISTS alert_claims (
    event_id            TEXT NOT NULL,
    webhook             TEXT NOT NULL,
    collector_id        TEXT NOT NULL,
    claimed_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, webhook)
)""",
        "ALTER TABLE alert_claims ENABLE ROW LEVEL SECURITY",
    ]
    for table, condition in OPS_ONLY.items():
        statements += [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY ledger_readers ON {table} FOR SELECT USING ({condition})",
        ]
    # Roles granted the ledger before v3 may read the new table too (its policy decides).
    statements.append(
        """DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT b.role_name FROM ledger_readers AS b
             JOIN pg_roles AS p ON p.rolname = b.role_name LOOP
        EXECUTE format('GRANT SELECT ON alert_deliveries TO %I', r.role_name);
    END LOOP;
END $$"""
    )
    return statements


@dataclass(frozen=True, kw_only=True)
class PgMigration:
    """One step of the PostgreSQL schema."""

    version: int
    description: str
    statements: tuple[str, ...]


PG_MIGRATIONS: Final[Sequence[PgMigration]] = (
    PgMigration(
        version=1,
        description="usage, spans, events, quarantine, rollups and ledger positions",
        statements=tuple(_v1()),
    ),
    PgMigration(
        version=2,
        description="row-level security: readers bound to an org or tenant (ledger_readers)",
        statements=tuple(_v2()),
    ),
    PgMigration(
        version=3,
        description="alert_deliveries: webhook deliveries of alerts, and the fleet's claims",
        statements=tuple(_v3()),
    ),
)
PG_SCHEMA_VERSION: Final = PG_MIGRATIONS[-1].version
"""The PostgreSQL schema version this build writes and reads."""

_SCHEMA_TABLE: Final = """CREATE TABLE IF NOT EXISTS comptroller_schema (
    version     INTEGER NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    description TEXT
)"""
_MIGRATION_LOCK: Final = 7_046_321_990_114_001
"""Advisory lock key held while migrating (any 64-bit number of our own)."""


def _rows(con: Connection, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    cur = con.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        cur.close()


def _execute(con: Connection, sql: str, params: Sequence[Any] | None = None) -> None:
    cur = con.cursor()
    try:
        cur.execute(sql, params)
    finally:
        cur.close()


def pg_schema_version(con: Connection) -> int:
    """The schema version of the connection's schema (0 when empty)."""
    found = _rows(con, "SELECT to_regclass('comptroller_schema') IS NOT NULL")
    if not found or not found[0][0]:
        return 0
    rows = _rows(con, "SELECT max(version) FROM comptroller_schema")
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def migrate_pg(con: Connection, *, where: str = "PostgreSQL ledger") -> list[int]:
    """Apply every pending migration, each in its own transaction (commits `con`).

    Returns:
        The versions applied (empty when current).

    Raises:
        ConfigError: The database was written by a newer comptroller.
    """
    con.commit()  # start from a clean transaction
    applied: list[int] = []
    try:
        _execute(con, f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        current = pg_schema_version(con)
        if current > PG_SCHEMA_VERSION:
            raise ConfigError(
                f"{where}: schema version {current} is newer than this comptroller's "
                f"{PG_SCHEMA_VERSION}; upgrade comptroller to use it"
            )
        _execute(con, _SCHEMA_TABLE)
        for migration in PG_MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                _execute(con, statement)
            _execute(
                con,
                "INSERT INTO comptroller_schema (version, description) VALUES ($1, $2)",
                [migration.version, migration.description],
            )
            applied.append(migration.version)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return applied


def libpq_url(url: str, *, schema: str | None = None) -> str:
    """A libpq URL from `url` (a `postgresql+psycopg://` SQLAlchemy one is accepted), whose
    sessions use `schema` first when given.

    `?schema=name` in `url` is comptroller's own parameter (libpq has none): the schema
    holding the ledger, as `schema` (which wins). Without either, the URL's own `options`
    (e.g. `-csearch_path=…`) are kept.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{url!r} is not a PostgreSQL URL (postgresql://user@host/db)")
    pairs = parse_qsl(parts.query)
    schema = schema or url_schema(url)
    query = [(k, v) for k, v in pairs if k != "schema" and (schema is None or k != "options")]
    if schema is not None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ConfigError(f"schema {schema!r}: use lower-case letters, digits and _")
        query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


def url_schema(url: str) -> str | None:
    """The `schema` query parameter of a ledger URL (None when it has none)."""
    for key, value in parse_qsl(urlsplit(url).query):
        if key == "schema" and value:
            return value
    return None


def shown_url(url: str) -> str:
    """`url` as it may be shown: no password, no query."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0] or "postgresql"
    return urlunsplit((scheme, _no_password(url), parts.path, "", ""))


def connect_pg(
    url: str,
    *,
    schema: str | None = None,
    migrate: bool = True,
    create_schema: bool = True,
) -> Connection:
    """Open the PostgreSQL ledger at `url` through ADBC, migrated unless `migrate` is False.

    Args:
        url: `postgresql://user@host:port/db` (or SQLAlchemy's `postgresql+psycopg://…`;
            `?schema=name` names the schema as `schema` does).
        schema: The schema holding the ledger (created if missing; default: the URL's
            `schema`, else the server's search path, usually `public`).
        migrate: Apply pending migrations.
        create_schema: Create the schema when missing (a reading role may not: False).

    Raises:
        ConfigError: The server does not answer, the driver is missing, or the schema is
            newer than this comptroller.
    """
    try:
        import adbc_driver_postgresql.dbapi as pg
    except ImportError as exc:
        raise ConfigError(
            "the PostgreSQL ledger needs the postgres extra: uv add 'comptroller[postgres]' "
            "(adbc-driver-postgresql)"
        ) from exc
    schema = schema or url_schema(url)
    target = libpq_url(url, schema=schema)
    shown = shown_url(target)
    try:
        con = pg.connect(target)
    except Exception as exc:
        raise ConfigError(
            f"{shown}: cannot connect to the PostgreSQL ledger: {_first_line(exc)}; "
            "check the URL and that the server runs"
        ) from exc
    try:
        if schema is not None and create_schema:
            # Under the migration lock: two processes creating one schema at once would
            # otherwise race on the catalog (a unique violation for the second).
            _execute(con, f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            _execute(con, f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.commit()
        if migrate:
            migrate_pg(con, where=shown)
    except BaseException:
        con.close()
        raise
    return con


def _no_password(url: str) -> str:
    netloc = urlsplit(url).netloc
    if "@" in netloc and ":" in netloc.split("@", 1)[0]:
        user = netloc.split("@", 1)[0].split(":", 1)[0]
        return f"{user}:***@{netloc.split('@', 1)[1]}"
    return netloc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class ReaderBinding:
    """What a reading role may see: `org` and `tenant` (None: every one)."""

    role: str
    org: str | None
    tenant: str | None


def _role_ident(con: Connection, role: str) -> str:
    """`role` quoted as an identifier, once PostgreSQL confirms the role exists."""
    if not role or "\x00" in role:
        raise ConfigError("give the name of a PostgreSQL role")
    rows = _rows(con, "SELECT count(*) FROM pg_roles WHERE rolname = $1", [role])
    if not rows or not rows[0][0]:
        raise ConfigError(
            f"no PostgreSQL role {role!r}: create it first (CREATE ROLE {role} LOGIN), "
            "then grant it the ledger"
        )
    return '"' + role.replace('"', '""') + '"'


def grant_reader(
    con: Connection, role: str, *, org: str | None = None, tenant: str | None = None
) -> bool:
    """Let `role` read the ledger's rows of `org` and `tenant` (None: all), and SELECT the
    ledger's tables (commits `con`, which must own them). Row-level security (schema v2)
    enforces the binding in the database, whatever the role runs.

    Returns:
        False when the role already had this binding.

    Raises:
        ConfigError: No such role, or `con` may not grant (not the tables' owner).
    """
    ident = _role_ident(con, role)
    try:
        added = _rows(
            con,
            "INSERT INTO ledger_readers (role_name, org, tenant) VALUES ($1::TEXT, $2::TEXT, $3::TEXT) "
            "ON CONFLICT DO NOTHING RETURNING role_name",
            [role, org, tenant],
        )
        _execute(con, f"GRANT USAGE ON SCHEMA {_current_schema(con)} TO {ident}")
        _execute(con, f"GRANT SELECT ON {', '.join(READABLE)} TO {ident}")
        con.commit()
    except ConfigError:
        con.rollback()
        raise
    except Exception as exc:
        con.rollback()
        raise ConfigError(
            f"cannot grant {role!r} the ledger: {_first_line(exc)}; run this as the role "
            "that owns the ledger (the collector's)"
        ) from exc
    return bool(added)


def revoke_reader(
    con: Connection,
    role: str,
    *,
    org: str | None = None,
    tenant: str | None = None,
    every: bool = False,
) -> int:
    """Remove `role`'s binding to `org` and `tenant` (or, with `every`, all its bindings);
    a role left without one loses SELECT on the ledger (commits `con`).

    Returns:
        How many bindings were removed.
    """
    ident = _role_ident(con, role)
    try:
        if every:
            removed = _rows(
                con,
                "DELETE FROM ledger_readers WHERE role_name = $1::TEXT RETURNING role_name",
                [role],
            )
        else:
            removed = _rows(
                con,
                "DELETE FROM ledger_readers WHERE role_name = $1 "
                "AND org IS NOT DISTINCT FROM $2::TEXT AND tenant IS NOT DISTINCT FROM $3::TEXT "
                "RETURNING role_name",
                [role, org, tenant],
            )
        left = _rows(con, "SELECT count(*) FROM ledger_readers WHERE role_name = $1", [role])
        if not left[0][0]:
            _execute(con, f"REVOKE SELECT ON {', '.join(READABLE)} FROM {ident}")
        con.commit()
    except Exception as exc:
        con.rollback()
        raise ConfigError(f"cannot revoke {role!r}'s binding: {_first_line(exc)}") from exc
    return len(removed)


def reader_bindings(con: Connection) -> list[ReaderBinding]:
    """Every binding in `ledger_readers` (as its owner sees them: all)."""
    rows = _rows(
        con,
        "SELECT role_name, org, tenant FROM ledger_readers "
        "ORDER BY role_name, org NULLS FIRST, tenant NULLS FIRST",
    )
    con.commit()
    return [ReaderBinding(str(r[0]), r[1], r[2]) for r in rows]


def _current_schema(con: Connection) -> str:
    (name,) = _rows(con, "SELECT quote_ident(current_schema())")[0]
    return str(name)
