"""Readers: one protocol, two ways to query the usage database.

`DuckDBReader` queries a DuckDB connection (a read-only file, or the writer's own connection
inside the process that writes). `HttpReader` queries a running collector through its
`POST /api/query` endpoint, which answers with an Arrow IPC stream: DuckDB admits one writing
process per file, so while a collector writes, every other process reads through it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.ipc

# The protocol lives in a module light to import (the dashboard names it before its first
# query); it is this package's `Reader`.
from comptroller._read_api import Reader as Reader
from comptroller.analytics._errors import QueryError, ReaderUnavailable
from comptroller.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import httpx

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""Media type of the collector's query answers (Arrow IPC stream format)."""


class DuckDBReader:
    """A reader over a DuckDB connection.

    By default each query runs on its own cursor, so one reader may serve several threads
    (the TUI's workers) at once. A cursor is a connection of its own: it does not see the
    uncommitted writes of `con`'s open transaction; pass `cursors=False` to read inside it.

    Args:
        con: The connection to read from.
        owned: Close `con` when the reader is closed.
        cursors: Run each query on a fresh cursor (thread-safe), in a read-only transaction,
            rather than on `con` itself.
        limits: Time limit and row cap of each query (with cursors only).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        owned: bool = False,
        cursors: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self._con = con
        self._limits = limits
        self._owned = owned
        self._cursors = cursors
        self._lock = threading.Lock()
        self._closed = False

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The underlying connection (for code that needs DuckDB itself)."""
        return self._con

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run `sql` with `params` and return the result as an Arrow table.

        With cursors, the statement runs in a read-only transaction (`run_read_only`):
        even a write the parser check missed fails.

        Raises:
            QueryError: Not one read statement, or it failed; the message is DuckDB's first
                line.
        """
        statement = read_statement(sql)
        with self._lock:
            if self._closed:
                raise QueryError("reader is closed")
        if self._cursors:
            return run_read_only(self._con, sql, params, limits=self._limits)
        # Inside the writer's open transaction (no cursor): the parser check is the guard.
        try:
            relation: duckdb.DuckDBPyRelation | None = self._con.sql(
                statement, params=dict(params) if params else None
            )
            if relation is None:  # a statement without a result, whatever the stubs say
                return pa.table({})
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(_first_line(exc)) from exc

    def close(self) -> None:
        """Close the connection if this reader owns it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owned:
            self._con.close()

    def __enter__(self) -> DuckDBReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpReader:
    """A reader over a running collector's `POST /api/query` (Arrow IPC stream answers).

    Args:
        url: Base URL of the collector, e.g. `http://127.0.0.1:4318`.
        token: Bearer token, when the collector requires one.
        timeout: Seconds to wait for an answer.
        client: An httpx client to use instead of a new one (not closed by `close`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Accept": ARROW_STREAM}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._owned = client is None
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = headers

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Send `sql` and `params` to the collector and decode its Arrow answer.

        A result the collector cut at its row cap says so: `truncated_at(table)`.

        Raises:
            QueryError: The collector refused the query (its message is kept).
            QueryTimeout: The query ran past the collector's time limit.
            ReaderUnavailable: The collector cannot be reached or answered garbage.
        """
        import httpx

        body = {"sql": sql, "params": {k: _jsonable(v) for k, v in (params or {}).items()}}
        try:
            response = self._client.post(f"{self.url}/api/query", json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise ReaderUnavailable(
                f"collector at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "start it with 'comptroller collect' or read the file with --db"
            ) from exc
        if response.status_code == 408:
            raise QueryTimeout(_remote_problem(response))
        if response.status_code != 200:
            raise QueryError(_remote_problem(response))
        try:
            with pyarrow.ipc.open_stream(response.content) as stream:
                return stream.read_all()
        except pa.ArrowInvalid as exc:
            raise ReaderUnavailable(
                f"collector at {self.url} answered something that is not an Arrow stream: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the HTTP client if this reader created it."""
        if self._owned:
            self._client.close()

    def __enter__(self) -> HttpReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(
    *,
    db: Path | str | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> DuckDBReader | HttpReader:
    """Open a reader over a DuckDB file (read-only) or a running collector (a PostgreSQL
    ledger: `PgReader`, or `reader_from_settings`).

    Args:
        db: The DuckDB file. It must not be open for writing by another process; while a
            collector runs, use `url`.
        url: Base URL of a running collector (reads go through its `/api/query`).
        token: Bearer token for the collector.
        timeout: Seconds to wait for the collector.

    Raises:
        UsageError: Neither or both of `db` and `url` were given.
        ReaderUnavailable: The file does not exist or is locked by a writer.
    """
    if (db is None) == (url is None):
        raise UsageError("give exactly one of db (a DuckDB file) or url (a running collector)")
    if url is not None:
        return HttpReader(url, token=token, timeout=timeout)
    from comptroller.analytics._schema import connect

    path = Path(db)  # type: ignore[arg-type]
    try:
        con = connect(path, read_only=True)
    except ConfigError as exc:
        text = str(exc)
        if "lock" in text.lower():
            text += "; a collector is writing it: read through it with --url instead"
        raise ReaderUnavailable(text) from exc
    return DuckDBReader(con, owned=True)


ROW_CAP_KEY = b"comptroller.row_cap"
"""Arrow schema metadata key: set (to the cap) on a result cut at a row cap."""


class QueryTimeout(QueryError):
    """A query ran past its time limit and was stopped."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one query.

    Args:
        timeout_s: Stop the query (DuckDB interrupt) after this many seconds (None: never).
        max_rows: Return at most this many rows; a longer result is cut and marked with
            `ROW_CAP_KEY` in its schema metadata (None: all rows).
        setting: The setting that holds the time limit, named in its error.
    """

    timeout_s: float | None = None
    max_rows: int | None = None
    setting: str = "the reader's limits"


def truncated_at(table: pa.Table) -> int | None:
    """The row cap a result was cut at, or None when it is whole."""
    metadata = table.schema.metadata or {}
    value = metadata.get(ROW_CAP_KEY)
    return int(value) if value is not None else None


def run_read_only(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, object] | None = None,
    *,
    limits: Limits | None = None,
    checked: bool = True,
    fresh_cursor: bool = True,
) -> pa.Table:
    """Run one read statement on a fresh cursor of `con`, in a read-only transaction.

    The transaction (`BEGIN TRANSACTION READ ONLY`) is DuckDB's own guarantee: any write to
    the database in it fails, whatever the statement is, so a statement that slipped past
    the parser check still cannot change the ledger. It is rolled back afterwards. Settings
    are not transactional: the collector locks them (`lock_configuration`) and disables
    file access (`enable_external_access`) on its connection.

    Args:
        con: The connection (its cursor shares the database; DuckDB opens one writer per
            file and process, so a read-only view of a file this process writes is a
            read-only transaction on a cursor of it).
        sql: One read statement.
        params: Named parameters (`$name`), without the `$`.
        limits: Time limit and row cap.
        checked: Check `sql` with `check_read_only` first (False only to prove that the
            transaction alone refuses writes).
        fresh_cursor: False: run on `con` itself, a cursor the caller prepared (temporary
            views of its own) and closes.

    Raises:
        QueryError: Not one read statement, or it failed.
        QueryTimeout: It ran past `limits.timeout_s`.
    """
    limits = limits or Limits()
    statement: duckdb.Statement | str = read_statement(sql) if checked else sql
    try:
        cursor = con.cursor() if fresh_cursor else con
    except duckdb.Error as exc:  # the connection was closed meanwhile
        raise QueryError(_first_line(exc)) from exc
    timer: threading.Timer | None = None
    fired = threading.Event()
    try:
        cursor.execute("BEGIN TRANSACTION READ ONLY").fetchall()
        if limits.timeout_s is not None:

            def stop() -> None:
                fired.set()
                cursor.interrupt()

            timer = threading.Timer(limits.timeout_s, stop)
            timer.daemon = True
            timer.start()
        relation: duckdb.DuckDBPyRelation | None = cursor.sql(
            statement, params=dict(params) if params else None
        )
        if relation is None:  # a statement without a result, whatever the stubs say
            return pa.table({})
        if limits.max_rows is None:
            return relation.to_arrow_table()
        # One row past the cap tells "exactly N" from "more than N"; the LIMIT is pushed
        # into the plan, so a runaway SELECT stops producing rows there.
        table = relation.limit(limits.max_rows + 1).to_arrow_table()
        if table.num_rows <= limits.max_rows:
            return table
        metadata = {**(table.schema.metadata or {}), ROW_CAP_KEY: str(limits.max_rows).encode()}
        return table.slice(0, limits.max_rows).replace_schema_metadata(metadata)
    except duckdb.InterruptException as exc:
        if fired.is_set():
            raise QueryTimeout(
                f"query stopped after its time limit of {limits.timeout_s:g} s "
                f"({limits.setting}): narrow it (a shorter time range, the daily rollup "
                "llm_usage_daily, a LIMIT) or raise the limit"
            ) from exc
        raise QueryError(_first_line(exc)) from exc
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from exc
    finally:
        if timer is not None:
            timer.cancel()
        with contextlib.suppress(duckdb.Error):
            cursor.execute("ROLLBACK").fetchall()
        if fresh_cursor:
            cursor.close()


_READ_KINDS = "SELECT, FROM, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN [ANALYZE] of those"
_REFUSED_HINT = {
    duckdb.StatementType.PRAGMA: (
        "PRAGMA may change settings; read a pragma through its table function, e.g. "
        "SELECT * FROM pragma_table_info('llm_usage')"
    ),
    duckdb.StatementType.CALL: (
        "CALL runs procedures (CHECKPOINT is one); read a table function with SELECT * FROM fn(…)"
    ),
}
_SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        "checkpoint",
        "force_checkpoint",
        "truncate_duckdb_logs",
        "enable_logging",
        "disable_logging",
        "enable_profiling",
        "disable_profiling",
        "create_external_resource",
        "register_external_resource",
        "register_external_resource_type",
        "deregister_external_resource",
        "destroy_external_resource",
        "json_execute_serialized_sql",
    }
)
"""Table functions DuckDB lets a SELECT call that act rather than read (a checkpoint, the
log, settings, or running serialised SQL): refused by name in the parsed tree."""
_PARSER: dict[str, duckdb.DuckDBPyConnection] = {}
_PARSER_LOCK = threading.Lock()


def check_read_only(sql: str) -> None:
    """Accept exactly one read statement, as DuckDB's parser sees it.

    Accepted: SELECT (with FROM-first, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN
    or EXPLAIN ANALYZE of one of those. Refused: anything else (INSERT, UPDATE, DELETE,
    CREATE, DROP, ALTER, COPY, ATTACH, DETACH, EXPORT, INSTALL, LOAD, SET, PRAGMA, CALL,
    transactions…), several statements, EXPLAIN of a refused statement, and a SELECT that
    calls a table function that acts (`checkpoint()`, …).

    Raises:
        QueryError: The text does not parse, holds several statements, or is not a read.
    """
    read_statement(sql)


def read_statement(sql: str) -> duckdb.Statement:
    """The one read statement of `sql` (see `check_read_only`), parsed.

    Raises:
        QueryError: As `check_read_only`.
    """
    statement, problem = _read_statement(sql)
    if problem is not None:
        raise QueryError(problem)
    assert statement is not None
    return statement


@functools.lru_cache(maxsize=512)
def _read_statement(sql: str) -> tuple[duckdb.Statement | None, str | None]:
    # Cached per text: panels run the same SQL every refresh, and parsing costs ~1-3 ms.
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        return None, _first_line(exc)
    if len(statements) != 1:
        return None, (f"give exactly one statement, got {len(statements)}: send them one at a time")
    statement = statements[0]
    problem = _kind_problem(statement)
    if problem is None and statement.type == duckdb.StatementType.EXPLAIN:
        inner, problem = _explained(sql)
        if inner is not None:
            problem = _kind_problem(inner, explained=True) or _function_problem(str(inner.query))
    elif problem is None:
        problem = _function_problem(sql)
    return (statement, None) if problem is None else (None, problem)


def _kind_problem(statement: duckdb.Statement, *, explained: bool = False) -> str | None:
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        return None
    if kind == duckdb.StatementType.EXPLAIN and not explained:
        return None
    hint = _REFUSED_HINT.get(kind, "this read API cannot change the database or its settings")
    what = f"EXPLAIN of {kind.name}" if explained else kind.name
    return f"only one read-only statement is accepted ({_READ_KINDS}), got {what}: {hint}"


def _explained(sql: str) -> tuple[duckdb.Statement | None, str | None]:
    """The statement an EXPLAIN wraps, found with DuckDB's tokenizer.

    `EXPLAIN [ANALYZE] [(options)] statement`: EXPLAIN ANALYZE runs the statement, so what
    it wraps must be a read like any other.
    """
    tokens = duckdb.tokenize(sql)
    index = 1
    if index < len(tokens) and _token_text(sql, tokens, index).upper() == "ANALYZE":
        index += 1
    if index < len(tokens) and _token_text(sql, tokens, index) == "(":
        depth = 0
        while index < len(tokens):
            text = _token_text(sql, tokens, index)
            depth += text == "("
            depth -= text == ")"
            index += 1
            if depth == 0:
                break
    if index >= len(tokens):
        return None, "EXPLAIN of nothing: give EXPLAIN SELECT …"
    try:
        inner = duckdb.extract_statements(sql[tokens[index][0] :])
    except duckdb.Error as exc:
        return None, f"cannot tell what EXPLAIN wraps: {_first_line(exc)}"
    if len(inner) != 1:
        return None, "EXPLAIN must wrap exactly one statement"
    return inner[0], None


def _token_text(sql: str, tokens: Sequence[tuple[int, object]], index: int) -> str:
    start = tokens[index][0]
    end = tokens[index + 1][0] if index + 1 < len(tokens) else len(sql)
    return sql[start:end].strip()


def _function_problem(sql: str) -> str | None:
    """Refuse a SELECT that calls a table function that acts (by name, in the parse tree)."""
    with _PARSER_LOCK:
        if "con" not in _PARSER:
            # An in-memory database that only parses: one thread, no file access.
            parser = duckdb.connect(config={"threads": 1, "enable_external_access": False})
            _PARSER["con"] = parser
        cursor = _PARSER["con"].cursor()
    try:
        row = cursor.execute("SELECT json_serialize_sql($1::VARCHAR)", [sql]).fetchall()[0]
    except duckdb.Error as exc:
        return _first_line(exc)
    finally:
        cursor.close()
    tree = json.loads(row[0])
    if tree.get("error"):
        # Some SELECT forms (PIVOT) have no serialised tree: fail closed.
        return (
            f"this statement cannot be checked ({tree.get('error_message', 'no parse tree')}): "
            "write it as a plain SELECT (PIVOT as GROUP BY with FILTER)"
        )
    called = _function_names(tree) & _SIDE_EFFECT_FUNCTIONS
    if called:
        return (
            f"{', '.join(sorted(called))}() acts on the database rather than reading it: "
            "this read API refuses it"
        )
    return None


def _function_names(node: object) -> set[str]:
    names: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            name = item.get("function_name")
            if isinstance(name, str):
                names.add(name.lower())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return names


def _jsonable(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _remote_problem(response: httpx.Response) -> str:
    try:
        problem = response.json().get("error")
    except (json.JSONDecodeError, ValueError, AttributeError):
        problem = None
    if not problem:
        problem = response.text.strip()[:200] or response.reason_phrase
    return f"collector refused the query (HTTP {response.status_code}): {problem}"


# DuckDB's advice that the read API would refuse (it runs no SET): dropped from messages.
_UNUSABLE_ADVICE = (
    ", or SET error_on_division_by_zero=false to return NULL for all divisions by zero",
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    line = lines[0]
    for advice in _UNUSABLE_ADVICE:
        line = line.replace(advice, "")
    # DuckDB's suggestions (close column or table names) stay, on the same line.
    hints = [h.strip() for h in lines[1:] if h.startswith(_HINTS)]
    return " ".join([line.rstrip(), *hints])


_HINTS = ("Candidate bindings:", "Did you mean")
