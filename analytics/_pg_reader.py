"""A reader over a PostgreSQL ledger: the panels' and `comptroller sql`'s DuckDB SQL, answered
from PostgreSQL's rows.

The panels, the budget gate, reports and `comptroller sql` are written in DuckDB SQL. So
`PgReader` answers a query the way the issue puts it — *queries that need analytical speed
over raw rows pull Arrow from PostgreSQL into an in-process DuckDB; panels that read rollups
run in PostgreSQL*:

* The `budget_state` panel (what `budget check`, `/api/budget-state` and the TUI's budgets
  read) runs in PostgreSQL, translated once (`analytics/_pg_budget.py`), over the rollup
  the landing keeps current.
* Any other statement is checked as every reader checks it (one read statement,
  `check_read_only`), then the ledger tables it names are fetched from PostgreSQL as Arrow
  (ADBC, `fetch_arrow_table`) in one read-only, repeatable-read transaction, registered on
  a fresh cursor of an in-memory DuckDB as views with the DuckDB ledger's column types
  (NUMERIC -> DECIMAL, JSONB -> JSON, the tags JSONB -> MAP(VARCHAR, VARCHAR), the signed
  resource ids -> UBIGINT), and the statement runs there in a read-only transaction under
  the reader's limits (time limit, row cap). A table the PostgreSQL ledger does not hold
  (one a newer DuckDB schema added, or `alert_deliveries` of a ledger migrated before its
  v3) reads as empty; `alert_deliveries` of v3 is read like any other (ops-only: a role
  bound to one org sees none of it).

User SQL never reaches PostgreSQL: only this module's own `SELECT`s do, as the connecting
role. So row-level security (`analytics/_pg_schema.py`, v2) holds whatever the statement:
an org-bound role's fetch returns its org's rows only, and the in-memory DuckDB has nothing
else to show.

What is fetched is kept small where that is sound: only the columns the statement names
(every column when it reads `*`, `COLUMNS(…)`, a NATURAL join or a whole row;
`referenced_columns`), and where a shipped panel bounds a raw table by time, only the rows
in the panel's own range (`$since`, `$day_start`, … pushed into the fetch as
`WHERE ts >= …`, which the `llm_usage (ts)` index serves). The rollups are small (keys x
days); a raw table read without a bound is fetched whole, every query.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import queue
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import duckdb
import pyarrow as pa

from comptroller.analytics._errors import QueryError, ReaderUnavailable
from comptroller.analytics._reader import (
    ROW_CAP_KEY,
    Limits,
    QueryTimeout,
    read_statement,
    run_read_only,
)
from comptroller.config._collector import is_postgres_url
from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from adbc_driver_postgresql.dbapi import Connection

_TS: Final = pa.timestamp("us", tz="UTC")


def is_pg_url(value: object) -> bool:
    """Whether `value` names a PostgreSQL ledger (`postgresql://…`, `postgres://…`, or
    SQLAlchemy's `postgresql+psycopg://…`) rather than a DuckDB file."""
    return is_postgres_url(value)


@functools.lru_cache(maxsize=1)
def duckdb_catalog() -> dict[str, tuple[tuple[str, str], ...]]:
    """Every table and view of the DuckDB ledger with its columns and DuckDB types, in order:
    the schema a PostgreSQL ledger's rows are given in DuckDB (one migrated in-memory file
    is its source, so the two never differ)."""
    from comptroller.analytics._schema import migrate

    con = duckdb.connect()
    try:
        migrate(con)
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    catalog: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        catalog.setdefault(str(table), []).append((str(column), str(kind)))
    return {name: tuple(columns) for name, columns in catalog.items()}


@dataclass(frozen=True)
class _Bound:
    """A shipped panel's time range on a raw table: pushed into the fetch."""

    table: str
    column: str
    lower: str | None  # parameter of `column >= $lower`
    upper: str | None  # parameter of `column < $upper`


# Shipped panels that read a raw table once, bounded by their own parameters (each checked
# in tests/analytics/test_pg_reader.py against the panel's SQL). A parameter that is NULL
# (a panel's "no bound") pushes nothing.
_PUSHDOWN: Final[dict[str, _Bound]] = {
    "attribution_budget_state": _Bound("llm_usage", "ts", "day_start", "day_end"),
    "cache_savings": _Bound("llm_usage", "ts", "since", "until"),
    "fees": _Bound("llm_usage", "ts", "since", "until"),
    "recent_calls": _Bound("llm_usage", "ts", "since", None),
    "spend_by_attribution": _Bound("llm_usage", "ts", "since", "until"),
}


@functools.lru_cache(maxsize=1)
def _panel_bounds() -> dict[str, _Bound]:
    from comptroller.analytics._panels import builtin_panels

    panels = builtin_panels()
    return {panels[name].sql: bound for name, bound in _PUSHDOWN.items()}


@functools.lru_cache(maxsize=1)
def _budget_state_sql() -> str:
    from comptroller.analytics._panels import builtin_panels

    return builtin_panels()["budget_state"].sql


_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def referenced_tables(sql: str) -> list[str]:
    """The ledger tables and views `sql` may read: every word of it that names one (a
    superset is harmless, it is only fetched; a name in a string, as in
    `pragma_table_info('llm_usage')`, is fetched too so that the call finds its table)."""
    catalog = duckdb_catalog()
    words = {w.lower() for w in _WORD.findall(sql)}
    return sorted(name for name in catalog if name in words)


_TABLE_REFS: Final = frozenset(
    {"BASE_TABLE", "SUBQUERY", "TABLE_FUNCTION", "JOIN", "EXPRESSION_LIST", "PIVOT", "SHOW_REF"}
)
_PARSER_LOCK: Final = threading.Lock()
_PARSER: dict[str, duckdb.DuckDBPyConnection] = {}


@functools.lru_cache(maxsize=512)
def referenced_columns(sql: str) -> frozenset[str] | None:
    """The column names `sql` may read (every name of every column reference, and the
    `USING` columns), or None when it may read every column: a `*` or `COLUMNS(…)`, a
    NATURAL join, a table read as a whole row (`SELECT t FROM llm_usage t`), or a statement
    DuckDB cannot serialise (DESCRIBE, SHOW, SUMMARIZE). Only these columns are fetched;
    the others read as NULL, which no statement of this text can see."""
    with _PARSER_LOCK:
        if "con" not in _PARSER:
            _PARSER["con"] = duckdb.connect(config={"threads": 1, "enable_external_access": False})
        cursor = _PARSER["con"].cursor()
    try:
        row = cursor.execute("SELECT json_serialize_sql($1::VARCHAR)", [sql]).fetchall()[0]
        tree = json.loads(row[0])
    except (duckdb.Error, ValueError):
        return None
    finally:
        cursor.close()
    if tree.get("error"):
        return None
    names: set[str] = set()
    single: set[str] = set()
    tables: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("class")
        if kind == "STAR" or item.get("ref_type") == "NATURAL":
            return None
        if kind == "COLUMN_REF":
            parts = [str(p).lower() for p in item.get("column_names", [])]
            names.update(parts)
            if len(parts) == 1:
                single.update(parts)
        using = item.get("using_columns")
        if isinstance(using, list):
            names.update(str(u).lower() for u in using)
        if item.get("type") in _TABLE_REFS:  # a FROM item: its name and alias
            for key in ("alias", "table_name"):
                value = item.get(key)
                if isinstance(value, str) and value:
                    tables.add(value.lower())
        stack.extend(item.values())
    if single & (tables | set(duckdb_catalog())):
        return None  # a table or alias read as a whole row
    return frozenset(names)


def _storage(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column without its extension type (ADBC's numeric and JSON: their text)."""
    if isinstance(column.type, pa.ExtensionType):
        return pa.chunked_array(
            [chunk.storage for chunk in column.chunks], type=column.type.storage_type
        )
    return column


def _plain(table: pa.Table) -> pa.Table:
    return pa.table(
        [_storage(c) for c in table.columns], names=table.column_names
    ).replace_schema_metadata(None)


def _duck_expr(name: str, kind: str, present: bool) -> str:
    """The DuckDB expression turning a fetched column into the DuckDB ledger's type."""
    quoted = f'"{name}"'
    if not present:
        return f"CAST(NULL AS {kind}) AS {quoted}"
    if kind == "JSON":  # jsonb's text spaces its separators: DuckDB's is minified
        return f"json({quoted}) AS {quoted}"
    if kind.startswith("MAP("):
        return f"TRY_CAST(TRY_CAST({quoted} AS JSON) AS {kind}) AS {quoted}"
    if kind == "UBIGINT":  # stored signed: the same 64 bits
        return (
            f"CAST(CASE WHEN {quoted} < 0 THEN {quoted}::HUGEINT + 18446744073709551616 "
            f"ELSE {quoted}::HUGEINT END AS UBIGINT) AS {quoted}"
        )
    return f"CAST({quoted} AS {kind}) AS {quoted}"


class PgReader:
    """A `Reader` over a PostgreSQL ledger (see the module).

    Thread-safe: each query takes a PostgreSQL connection of a small pool (made on demand,
    kept for the next query) and a fresh DuckDB cursor.

    Args:
        url: `postgresql://user@host:port/db`, optionally `?schema=name` (the schema holding
            the ledger; default the server's search path).
        schema: The schema (wins over the URL's).
        limits: Time limit (PostgreSQL's `statement_timeout` for the fetch, then DuckDB's
            interrupt for the rest) and row cap of each query.
        pool: Most connections kept open between queries.

    Raises:
        ConfigError: The URL is not PostgreSQL's, the driver is missing, or the server does
            not answer (checked by opening the first connection).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        limits: Limits | None = None,
        pool: int = 4,
    ) -> None:
        self.url = url
        from comptroller.analytics._pg_schema import url_schema

        self.schema = schema or url_schema(url)
        self._limits = limits or Limits()
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue(maxsize=pool)
        self._lock = threading.Lock()
        self._closed = False
        self._stored: dict[str, frozenset[str]] | None = None
        self._stored_at = 0.0
        self._duck = duckdb.connect(
            config={"enable_external_access": False, "threads": 2, "lock_configuration": True}
        )
        self.fetched_rows = 0
        """Rows fetched from PostgreSQL by the queries so far (what pushdowns save)."""
        self._release(self._open())  # fail here, not at the first query, on a wrong URL

    @property
    def where(self) -> str:
        """What the reader reads, for a status line (no password)."""
        from comptroller.analytics._pg_schema import shown_url

        return shown_url(self.url)

    def _open(self) -> Connection:
        from comptroller.analytics._pg_schema import connect_pg

        con = connect_pg(self.url, schema=self.schema, migrate=False, create_schema=False)
        try:
            cur = con.cursor()
            try:
                # Every transaction of this connection reads only, whatever runs in it.
                cur.execute("SET default_transaction_read_only = on")
            finally:
                cur.close()
            con.commit()
        except Exception as exc:
            con.close()
            raise ConfigError(f"{self.where}: {_first_line(exc)}") from exc
        return con

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self._lock:
            if self._closed:
                raise QueryError("reader is closed")
        try:
            con = self._idle.get_nowait()
        except queue.Empty:
            try:
                con = self._open()
            except ConfigError as exc:
                raise ReaderUnavailable(str(exc)) from exc
        broken = False
        try:
            yield con
        except QueryError as exc:
            broken = isinstance(exc.__cause__, _connection_errors())
            raise
        except BaseException:
            broken = True
            raise
        finally:
            if broken:
                _close_quietly(con)
            else:
                self._release(con)

    def _release(self, con: Connection) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            _close_quietly(con)
            return
        try:
            self._idle.put_nowait(con)
        except queue.Full:
            _close_quietly(con)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run one read statement (DuckDB SQL) over the ledger's rows.

        Raises:
            QueryError: Not one read statement, a table the role may not read, or the
                statement failed.
            QueryTimeout: It ran past the time limit.
            ReaderUnavailable: PostgreSQL does not answer.
        """
        values = dict(params or {})
        if sql == _budget_state_sql():
            return self._cap(self._budget_state(values))
        read_statement(sql)  # refused before anything is fetched
        started = time.monotonic()
        tables = referenced_tables(sql)
        fetched = self._fetch(tables, _panel_bounds().get(sql), values, referenced_columns(sql))
        cursor = self._duck.cursor()
        try:
            for name, table in fetched.items():
                self._register(cursor, name, table)
            remaining = None
            if self._limits.timeout_s is not None:
                remaining = max(0.001, self._limits.timeout_s - (time.monotonic() - started))
            limits = Limits(
                timeout_s=remaining, max_rows=self._limits.max_rows, setting=self._limits.setting
            )
            return run_read_only(cursor, sql, values, limits=limits, fresh_cursor=False)
        finally:
            cursor.close()

    def _register(self, cursor: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
        columns = duckdb_catalog()[name]
        present = set(table.column_names)
        select = ", ".join(_duck_expr(c, kind, c in present) for c, kind in columns)
        if table.num_columns == 0:  # a table PostgreSQL does not keep: empty
            cursor.execute(f'CREATE TEMP VIEW "{name}" AS SELECT {select} WHERE false')
            return
        source = f"__pg_{name}"
        cursor.register(source, table)
        cursor.execute(f'CREATE TEMP VIEW "{name}" AS SELECT {select} FROM "{source}"')

    def _stored_columns(
        self, con: Connection, wanted: list[str] | None = None
    ) -> dict[str, frozenset[str]]:
        """The ledger's tables and views in PostgreSQL, with their columns: listed once, and
        again (at most every 30 s) while a table `wanted` is missing, so that a reader that
        lives long (the dashboard) sees what a newer collector's migration added."""
        stored = self._stored
        if stored is not None and (
            all(name in stored for name in wanted or ())
            or time.monotonic() - self._stored_at < 30.0
        ):
            return stored
        cur = con.cursor()
        try:
            # current_schema() skips a schema the role may not use: name it to tell why.
            cur.execute(
                "SELECT n.oid, has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace AS n "
                "WHERE n.nspname = coalesce($1::TEXT, current_schema())",
                pa.record_batch([pa.array([self.schema], pa.string())], names=["schema"]),
            )
            space = cur.fetchall()
            rows: list[tuple[Any, ...]] = []
            if space and space[0][1]:
                cur.execute(
                    "SELECT c.relname, a.attname FROM pg_attribute AS a "
                    "JOIN pg_class AS c ON c.oid = a.attrelid "
                    "WHERE c.relnamespace = $1::OID AND c.relkind IN ('r', 'v', 'p', 'm') "
                    "AND a.attnum > 0 AND NOT a.attisdropped",
                    pa.record_batch([pa.array([space[0][0]], pa.int64())], names=["oid"]),
                )
                rows = list(cur.fetchall())
            con.commit()
        except Exception as exc:
            con.rollback()
            raise QueryError(f"{self.where}: cannot list the ledger's tables: {exc}") from exc
        finally:
            cur.close()
        where = f"schema {self.schema}" if self.schema else "the search path's schema"
        if space and not space[0][1]:
            raise QueryError(
                f"{self.where}: permission denied for {where}: this role may not read the "
                "ledger; its owner grants it with 'comptroller db grant-reader ROLE [--org ORG] "
                "[--tenant TENANT] --db URL'"
            )
        found: dict[str, set[str]] = {}
        for table, column in rows:
            found.setdefault(str(table), set()).add(str(column))
        if "llm_usage" not in found:
            raise ReaderUnavailable(
                f"{self.where}: no ledger here (no llm_usage table in {where}): run a "
                "collector with --db on this URL, or name the schema (?schema=name)"
            )
        self._stored = {name: frozenset(columns) for name, columns in found.items()}
        self._stored_at = time.monotonic()
        return self._stored

    def _fetch(
        self,
        tables: list[str],
        bound: _Bound | None,
        params: Mapping[str, object],
        wanted: frozenset[str] | None = None,
    ) -> dict[str, pa.Table]:
        if not tables:
            return {}
        catalog = duckdb_catalog()
        out: dict[str, pa.Table] = {}
        with self._connection() as con:
            stored = self._stored_columns(con, tables)
            cur = con.cursor()
            try:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                if self._limits.timeout_s is not None:
                    ms = max(1, int(self._limits.timeout_s * 1000))
                    cur.execute(f"SET LOCAL statement_timeout = {ms}")
                for name in tables:
                    have = stored.get(name)
                    if have is None:
                        continue  # not kept in PostgreSQL: read as empty
                    columns = [
                        c
                        for c, _ in catalog[name]
                        if c in have and (wanted is None or c.lower() in wanted)
                    ]
                    if not columns:  # count(*) alone: one narrow column keeps the rows
                        columns = [next(c for c, _ in catalog[name] if c in have)]
                    where, values = _bound_sql(bound, name, params)
                    cur.execute(
                        f'SELECT {", ".join(_pg_column(c) for c in columns)} FROM "{name}"{where}',
                        values,
                    )
                    out[name] = _plain(cur.fetch_arrow_table())
                    self.fetched_rows += out[name].num_rows
                con.commit()
            except Exception as exc:
                _rollback_quietly(con)
                raise self._problem(exc) from exc
            finally:
                cur.close()
        for name in tables:
            if name not in out:
                out[name] = pa.table({})  # every column NULL-typed, no row
        return out

    def _problem(self, exc: Exception) -> QueryError:
        text = _first_line(exc)
        if "statement timeout" in text or "canceling statement" in text:
            return QueryTimeout(
                f"query stopped after its time limit of {self._limits.timeout_s:g} s "
                f"({self._limits.setting}) while reading PostgreSQL: narrow it (a shorter time "
                "range, the daily rollup llm_usage_daily, a LIMIT) or raise the limit"
            )
        if "permission denied" in text:
            return QueryError(
                f"{self.where}: {text}: this role may not read the ledger; an owner grants it "
                "with 'comptroller db grant-reader ROLE [--org ORG] [--tenant TENANT] --db URL'"
            )
        return QueryError(f"{self.where}: {text}")

    def _budget_state(self, params: dict[str, object]) -> pa.Table:
        from comptroller.analytics._pg_budget import PgPanelReader

        with self._connection() as con:
            if self._limits.timeout_s is not None:
                cur = con.cursor()
                try:
                    ms = max(1, int(self._limits.timeout_s * 1000))
                    cur.execute(f"SET LOCAL statement_timeout = {ms}")
                finally:
                    cur.close()
            try:
                return PgPanelReader(con).query(_budget_state_sql(), params)
            except QueryError as exc:
                cause = exc.__cause__
                if isinstance(cause, Exception):
                    raise self._problem(cause) from exc
                raise

    def _cap(self, table: pa.Table) -> pa.Table:
        cap = self._limits.max_rows
        if cap is None or table.num_rows <= cap:
            return table
        metadata = {**(table.schema.metadata or {}), ROW_CAP_KEY: str(cap).encode()}
        return table.slice(0, cap).replace_schema_metadata(metadata)

    def close(self) -> None:
        """Close every connection; the reader is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                break
        self._duck.close()

    def __enter__(self) -> PgReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pg_column(name: str) -> str:
    return f'"{name}"'


def _bound_sql(bound: _Bound | None, table: str, params: Mapping[str, object]) -> tuple[str, Any]:
    """` WHERE …` and its parameters for a panel's range on `table` (empty without one)."""
    if bound is None or bound.table != table:
        return "", None
    clauses: list[str] = []
    values: list[dt.datetime] = []
    for param, op in ((bound.lower, ">="), (bound.upper, "<")):
        value = _instant(params.get(param)) if param else None
        if value is not None:
            values.append(value)
            clauses.append(f'"{bound.column}" {op} ${len(values)}')
    if not clauses:
        return "", None
    batch = pa.record_batch(
        [pa.array([v], _TS) for v in values], names=[f"p{i}" for i in range(len(values))]
    )
    return " WHERE " + " AND ".join(clauses), batch


def _instant(value: object) -> dt.datetime | None:
    """A bound's instant (a datetime, or its ISO text), in UTC; None when there is none."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    return None


def _connection_errors() -> tuple[type[BaseException], ...]:
    try:
        import adbc_driver_manager

        return (adbc_driver_manager.OperationalError,)
    except ImportError:  # pragma: no cover - the driver manager comes with the driver
        return ()


def _close_quietly(con: Connection) -> None:
    try:
        con.close()
    except Exception:
        return


def _rollback_quietly(con: Connection) -> None:
    try:
        con.rollback()
    except Exception:
        return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
