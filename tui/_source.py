"""Where the dashboard reads from: a reader per worker, queries capped at the source.

Each refresh worker asks the `ReaderFactory` for a reader of its own (on DuckDB: its own
cursor of the shared connection), so two views never share a cursor across threads.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeAlias

import duckdb
import pyarrow as pa

from comptroller.tui._model import QueryResult

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class Reader(Protocol):
    """Runs read-only SQL (DuckDB dialect, `$name` parameters) and returns Arrow tables.

    The same shape as `comptroller.analytics.Reader`, so either plugs in.
    """

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        """Run `sql` with named `params`."""
        ...

    def close(self) -> None:
        """Release the reader."""
        ...


ReaderFactory: TypeAlias = Callable[[], Reader]
"""Makes a reader for one worker; called from that worker's thread."""


class _CursorReader:
    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cursor = cursor

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        relation: duckdb.DuckDBPyRelation | None = self._cursor.sql(
            sql, params=dict(params) if params else None
        )
        if relation is None:  # a statement without a result
            return pa.table({})
        return relation.to_arrow_table()

    def close(self) -> None:
        # Still busy at shutdown: the connection's owner closes it.
        with contextlib.suppress(duckdb.Error):
            self._cursor.close()


class DuckDBSource:
    """A DuckDB connection shared by the dashboard; every reader is a cursor of its own.

    Args:
        con: An open connection (read-only for a file the dashboard only watches; the
            connection a process writes through when the dashboard runs beside the writer).
        owned: Close `con` in `close()`.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, *, owned: bool = False) -> None:
        self._con = con
        self._owned = owned
        self._lock = threading.Lock()
        self._path: Path | str = "database"
        self._checked = True  # a connection handed in was opened (and checked) by its owner

    @classmethod
    def open(cls, path: Path) -> DuckDBSource:
        """Open the DuckDB file at `path` read-only.

        The schema version is checked by the first reader (in a worker thread), so that
        the first frame does not wait for the analytics package to import.

        Raises:
            comptroller.errors.ConfigError: The file is missing or locked by a writer (then
                read through the collector with `--url`).
        """
        from comptroller.errors import ConfigError

        if not path.exists():
            raise ConfigError(
                f"{path}: no such database (run 'comptroller demo' or a collector first)"
            )
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (
                "; a collector is writing it: read through it with --url"
                if "lock" in first.lower()
                else ""
            )
            raise ConfigError(f"{path}: cannot open database: {first}{hint}") from exc
        source = cls(con, owned=True)
        source._path = path
        source._checked = False
        return source

    def __call__(self) -> Reader:
        # Creating cursors from several threads at once is serialised: the parent
        # connection is shared.
        with self._lock:
            if not self._checked:
                self._check_schema()
                self._checked = True
            return _CursorReader(self._con.cursor())

    def _check_schema(self) -> None:
        from comptroller.analytics import SCHEMA_VERSION, schema_version
        from comptroller.errors import ConfigError

        current = schema_version(self._con.cursor())
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"{self._path}: schema version {current} is newer than this comptroller's "
                f"{SCHEMA_VERSION}; upgrade comptroller to read it"
            )

    def close(self) -> None:
        """Close the connection if this source opened it."""
        if self._owned:
            self._con.close()


def used_params(sql: str, params: Mapping[str, object]) -> dict[str, object]:
    """The subset of `params` that `sql` references (DuckDB rejects unused names)."""
    names = set(_PARAM.findall(sql))
    return {k: v for k, v in params.items() if k in names}


def run_capped(reader: Reader, sql: str, params: Mapping[str, object], *, cap: int) -> QueryResult:
    """Run `sql` and keep at most `cap` rows, fetching one more to know if there were more.

    The cap is applied in SQL so that a big result is never materialised in memory.
    """
    body = sql.strip().rstrip(";")
    capped = f"SELECT * FROM ({body}) AS _capped LIMIT {int(cap) + 1}"
    table = reader.query(capped, used_params(capped, params))
    if table.num_rows > cap:
        return QueryResult(table=table.slice(0, cap), truncated=True)
    return QueryResult(table=table, truncated=False)
