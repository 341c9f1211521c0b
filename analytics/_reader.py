"""Readers: one protocol, two ways to query the usage database.

`DuckDBReader` queries a DuckDB connection (a read-only file, or the writer's own connection
inside the process that writes). `HttpReader` queries a running collector through its
`POST /api/query` endpoint, which answers with an Arrow IPC stream: DuckDB admits one writing
process per file, so while a collector writes, every other process reads through it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import duckdb
import pyarrow as pa
import pyarrow.ipc

from comptroller.analytics._errors import QueryError, ReaderUnavailable
from comptroller.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import httpx

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""Media type of the collector's query answers (Arrow IPC stream format)."""


@runtime_checkable
class Reader(Protocol):
    """Runs read-only SQL over the usage database and returns Arrow tables.

    SQL uses DuckDB named parameters (`$tenant`, `$since`); pass `params` without the `$`.
    Parameters may cross HTTP as JSON, so cast them in SQL where the type matters
    (`$since::DATE`).
    """

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run one statement and return its whole result."""
        ...

    def close(self) -> None:
        """Release the connection; the reader is unusable afterwards."""
        ...


class DuckDBReader:
    """A reader over a DuckDB connection.

    By default each query runs on its own cursor, so one reader may serve several threads
    (the TUI's workers) at once. A cursor is a connection of its own: it does not see the
    uncommitted writes of `con`'s open transaction; pass `cursors=False` to read inside it.

    Args:
        con: The connection to read from.
        owned: Close `con` when the reader is closed.
        cursors: Run each query on a fresh cursor (thread-safe) rather than on `con` itself.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, *, owned: bool = False, cursors: bool = True
    ) -> None:
        self._con = con
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

        Raises:
            QueryError: The statement failed; the message is DuckDB's first line.
        """
        check_read_only(sql)
        with self._lock:
            if self._closed:
                raise QueryError("reader is closed")
            cursor = self._con.cursor() if self._cursors else self._con
        try:
            # None for a statement without a result, whatever the stubs say.
            relation: duckdb.DuckDBPyRelation | None = cursor.sql(
                sql, params=dict(params) if params else None
            )
            if relation is None:
                return pa.table({})
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(_first_line(exc)) from exc
        finally:
            if self._cursors:
                cursor.close()

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

        Raises:
            QueryError: The collector refused the query (its message is kept).
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
    """Open a reader over a DuckDB file (read-only) or a running collector.

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


_READ_ONLY = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def check_read_only(sql: str) -> None:
    """Accept exactly one read-only statement (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).

    Raises:
        QueryError: The text does not parse, holds several statements, or would write.
    """
    problem = _read_only_problem(sql)
    if problem is not None:
        raise QueryError(problem)


@functools.lru_cache(maxsize=512)
def _read_only_problem(sql: str) -> str | None:
    # Cached per text: panels run the same SQL every refresh, and parsing costs ~1 ms.
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        return _first_line(exc)
    if len(statements) != 1:
        return f"give exactly one statement, got {len(statements)}"
    kind = statements[0].type
    if kind not in _READ_ONLY:
        return (
            f"only read-only statements are accepted (SELECT, DESCRIBE, SHOW, SUMMARIZE, "
            f"EXPLAIN), got {kind.name}"
        )
    return None


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
