"""Which reader a command uses: `--db FILE`, `--url URL`, the configured collector or file.

Commands read once (`reader_from_settings`). A long-running reader (the dashboard) asks for
`follow=True` and gets a `LocalReader`, which reads what is there at each query: the file,
reopened when it was replaced or rewritten, or the collector that holds it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, overload

import duckdb
import pyarrow as pa

from comptroller.analytics._errors import QueryError, ReaderUnavailable
from comptroller.analytics._pg_reader import PgReader, is_pg_url
from comptroller.analytics._reader import DuckDBReader, HttpReader, open_reader
from comptroller.config import Settings
from comptroller.errors import UsageError


@overload
def reader_from_settings(
    settings: Settings,
    *,
    db: Path | str | None = None,
    url: str | None = None,
    token: str | None = None,
    follow: Literal[False] = False,
) -> DuckDBReader | HttpReader | PgReader: ...


@overload
def reader_from_settings(
    settings: Settings,
    *,
    db: Path | str | None = None,
    url: str | None = None,
    token: str | None = None,
    follow: Literal[True],
) -> HttpReader | LocalReader | PgReader: ...


def reader_from_settings(
    settings: Settings,
    *,
    db: Path | str | None = None,
    url: str | None = None,
    token: str | None = None,
    follow: bool = False,
) -> DuckDBReader | HttpReader | LocalReader | PgReader:
    """Open the reader a command should use.

    Order: `url` > `db` > `analytics.read_url` > the `db` setting > the data directory's
    DuckDB file. A PostgreSQL ledger (`postgresql://…`, as `db`, `url` or the `db`
    setting) is read by a `PgReader`. A file that does not exist yet is created (empty,
    migrated) so that SQL over a fresh installation works. A file locked by a collector is
    read through that collector when it listens on the configured `collector.host:port`.

    Args:
        settings: Where the data directory and the collector are.
        db: The DuckDB file to read, or a PostgreSQL ledger's URL.
        url: A running collector to read through (or a PostgreSQL ledger's URL).
        token: The collector's bearer token (default: `collector.token`).
        follow: For a reader that lives long (the dashboard): a `LocalReader` over the
            file, which opens nothing until the first query, reopens the file when it is
            replaced or rewritten, and goes through the collector while one holds it. A
            missing file is not created: each query says it is missing until it appears.

    Raises:
        UsageError: Both `db` and `url`.
        ConfigError: The data directory is unusable.
        ReaderUnavailable: The file is locked and no collector answers, or the URL is wrong.
    """
    if db is not None and url is not None:
        raise UsageError("give --db FILE or --url URL, not both")
    if url is not None and is_pg_url(url):
        db, url = url, None
    if isinstance(db, str) and is_pg_url(db):
        return PgReader(db)
    token = token or settings.collector.bearer_token()
    if url is not None:
        return HttpReader(url, token=token)
    if db is None and settings.analytics.read_url:
        return HttpReader(settings.analytics.read_url, token=token)
    if db is None and settings.db_url is not None:
        return PgReader(settings.db_url)
    path = Path(db) if db is not None else settings.db_file
    if follow:
        return LocalReader(path, collector_url=_collector_url(settings), token=token)
    if db is None:
        settings.ensure_data_dir()
    if db is None and not path.exists():
        from comptroller.analytics._schema import connect

        connect(path).close()
    try:
        return open_reader(db=path)
    except ReaderUnavailable as exc:
        if not _locked(exc):
            raise
        reader = _collector_reader(_collector_url(settings), token)
        if reader is None:
            raise exc from None
        return reader


Stamp = tuple[int, int, int, int]
"""What identifies a file's content cheaply: device, inode, size, modification time (ns)."""


def file_stamp(path: Path) -> Stamp | None:
    """The stamp of `path`, or None when there is no such file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class LocalReader:
    """Reads what is there now: the DuckDB file at `path`, or the collector that holds it.

    Before each query the file's stamp (device, inode, size, mtime) is compared with the one
    it was opened at: a file replaced (a new inode: `db compact`, a copy renamed over it) or
    rewritten in place is reopened, so the reader never keeps serving a deleted file's rows.
    A query that failed on a broken file (an I/O or internal DuckDB error) reopens it next
    time. While a writer holds the file (DuckDB's lock), queries go through the collector at
    `collector_url`; when that collector stops answering, the file is tried again.

    Thread-safe: each query runs on a cursor of its own, and a connection replaced while
    other threads still read from it is closed when the last of them is done.

    Args:
        path: The DuckDB file.
        collector_url: Where the collector that holds the file listens (None: no fallback).
        token: Bearer token of that collector.
        timeout: Seconds to wait for the collector.
    """

    def __init__(
        self,
        path: Path,
        *,
        collector_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.collector_url = collector_url
        self._token = token
        self._timeout = timeout
        self._lock = threading.Lock()
        self._file: DuckDBReader | None = None
        self._stamp: Stamp | None = None
        self._broken = False
        self._http: HttpReader | None = None
        self._users: Counter[int] = Counter()
        self._retired: dict[int, DuckDBReader] = {}
        self._closed = False
        self.opened = 0
        """How many times the file was opened (reopens included)."""

    @property
    def where(self) -> str:
        """What the reader reads now, for a status line."""
        with self._lock:
            if self._http is not None:
                return f"collector {self._http.url} (it holds {self.path.name})"
            return str(self.path)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run `sql` on whatever holds the data now (see the class).

        Raises:
            ReaderUnavailable: The file is missing, or locked and no collector answers.
            QueryError: The query failed.
        """
        reader = self._acquire()
        try:
            return reader.query(sql, params)
        except ReaderUnavailable:
            if reader is self._http:
                self._drop_collector()  # it stopped: the file may be free again
            raise
        except QueryError as exc:
            if isinstance(reader, DuckDBReader) and _breaks_connection(exc):
                with self._lock:
                    self._broken = True
            raise
        finally:
            if isinstance(reader, DuckDBReader):
                self._release(reader)

    def _acquire(self) -> DuckDBReader | HttpReader:
        with self._lock:
            if self._closed:
                raise QueryError("reader is closed")
            if self._http is not None:
                return self._http
            stamp = file_stamp(self.path)
            if stamp is None:
                self._retire()
                raise ReaderUnavailable(
                    f"{self.path}: no such database (removed, or being replaced); "
                    "run 'uv run comptroller demo' or a collector to create it"
                )
            if self._file is None or stamp != self._stamp or self._broken:
                self._retire()
                try:
                    opened = open_reader(db=self.path)
                except ReaderUnavailable as exc:
                    if not _locked(exc) or self.collector_url is None:
                        raise
                    http = _collector_reader(self.collector_url, self._token, self._timeout)
                    if http is None:
                        raise ReaderUnavailable(
                            f"{exc}; no collector answers at {self.collector_url}"
                        ) from None
                    self._http = http
                    return http
                assert isinstance(opened, DuckDBReader)  # a file opens as one
                self._file, self._stamp, self._broken = opened, stamp, False
                self.opened += 1
            self._users[id(self._file)] += 1
            return self._file

    def _release(self, reader: DuckDBReader) -> None:
        with self._lock:
            key = id(reader)
            self._users[key] -= 1
            if self._users[key] > 0:
                return
            del self._users[key]
            done = self._retired.pop(key, None)
        if done is not None:
            done.close()

    def _retire(self) -> None:
        """Stop handing out the open file; close it now or when its last query ends."""
        old, self._file, self._stamp = self._file, None, None
        if old is None:
            return
        if self._users[id(old)] > 0:
            self._retired[id(old)] = old
        else:
            self._users.pop(id(old), None)
            old.close()

    def _drop_collector(self) -> None:
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def close(self) -> None:
        """Close the file (once its running queries end) and the collector client."""
        with self._lock:
            self._closed = True
            self._retire()
        self._drop_collector()

    def __enter__(self) -> LocalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _breaks_connection(exc: QueryError) -> bool:
    # Errors of the file rather than of the query: the file changed under the connection
    # (rewritten in place) or DuckDB invalidated the database after a fatal error.
    cause = exc.__cause__
    return isinstance(
        cause, duckdb.IOException | duckdb.InternalException | duckdb.FatalException
    ) or "invalidated" in str(exc)


def _locked(exc: ReaderUnavailable) -> bool:
    return "lock" in str(exc).lower()


def _collector_reader(url: str, token: str | None, timeout: float = 10.0) -> HttpReader | None:
    """A client of the collector at `url` if it answers, else None."""
    reader = HttpReader(url, token=token, timeout=timeout)
    try:
        reader.query("SELECT 1")
    except ReaderUnavailable:
        reader.close()
        return None
    return reader


def _collector_url(settings: Settings) -> str:
    host = settings.collector.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.collector.port}"
