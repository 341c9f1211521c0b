"""Where the dashboard reads from: one reader of `comptroller.analytics`, shared by workers.

The dashboard reads through the same API as `comptroller sql` and `budget check`
(`comptroller.analytics`: the file, or the collector that holds it). Its refresh workers
each ask the source for a reader (`ReaderFactory`); the analytics readers are thread-safe
(every DuckDB query runs on a cursor of its own, the collector client is one httpx client),
so each worker gets a handle of one shared reader, and closing a handle leaves the shared
reader open for the others. `DuckDBSource` is only that adapter.

The shared reader is made on first use, in a worker thread: the first frame waits neither
for DuckDB to open the file nor for the analytics package (and Arrow) to import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from comptroller._read_api import Reader

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["DuckDBSource", "Reader", "ReaderFactory"]

ReaderFactory: TypeAlias = Callable[[], Reader]
"""Makes a reader for one worker; called from that worker's thread."""


class _Handle:
    """A worker's handle of the shared reader: queries go through, `close` does not."""

    def __init__(self, shared: Reader) -> None:
        self.shared = shared

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        return self.shared.query(sql, params)

    def close(self) -> None:
        return None  # the source closes the shared reader


class DuckDBSource:
    """A `ReaderFactory` over one shared analytics reader, made on first use.

    Args:
        con: Read through this open connection (the connection a process writes through,
            when the dashboard runs beside an embedded sink): each query on a cursor of it.
        owned: Close `con` in `close()`.
        opener: Instead of `con`, makes the shared reader (called once, in a worker).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None = None,
        *,
        owned: bool = False,
        opener: Callable[[], Reader] | None = None,
    ) -> None:
        if (con is None) == (opener is None):
            raise TypeError("give exactly one of con or opener")
        if con is not None:

            def opener() -> Reader:
                from comptroller.analytics import DuckDBReader

                return DuckDBReader(con, owned=owned)

        assert opener is not None
        self._opener = opener
        self._lock = threading.Lock()
        self._reader: Reader | None = None
        self._closed = False

    @classmethod
    def open(
        cls, path: Path, *, collector_url: str | None = None, token: str | None = None
    ) -> DuckDBSource:
        """Read the DuckDB file at `path` as it is at each refresh (`LocalReader`).

        Nothing is opened yet: the first refresh opens the file, a replaced or rewritten
        file is reopened, and while a writer holds it, reads go through `collector_url`.

        Raises:
            comptroller.errors.ConfigError: There is no file at `path`.
        """
        from comptroller.errors import ConfigError

        if not path.exists():
            raise ConfigError(
                f"{path}: no such database (run 'uv run comptroller demo' or a collector first)"
            )

        def opener() -> Reader:
            from comptroller.analytics import LocalReader

            return LocalReader(path, collector_url=collector_url, token=token)

        return cls(opener=opener)

    @classmethod
    def open_pg(cls, url: str) -> DuckDBSource:
        """Read the PostgreSQL ledger at `url` (`postgresql://…?schema=name`) through a
        `PgReader`: the panels run over its rows in an in-process DuckDB, budget state in
        PostgreSQL. Nothing is opened before the first refresh."""

        def opener() -> Reader:
            from comptroller.analytics import PgReader

            return PgReader(url)

        return cls(opener=opener)

    @property
    def reader(self) -> Reader | None:
        """The shared reader, once a worker made it."""
        return self._reader

    def __call__(self) -> Reader:
        # Workers of several views may ask at once: the shared reader is made once.
        with self._lock:
            if self._closed:
                from comptroller.analytics import QueryError

                raise QueryError("the dashboard is closing")
            if self._reader is None:
                self._reader = self._opener()
            return _Handle(self._reader)

    def close(self) -> None:
        """Close the shared reader (if it was made)."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
