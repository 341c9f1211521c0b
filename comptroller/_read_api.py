"""The shape of every reader of the usage database (`comptroller.analytics.Reader`).

Defined here, outside the analytics package, so that code which only passes readers around
(the dashboard, before its first query) names the type without importing DuckDB, Arrow and
analytics: the dashboard's first frame must not wait for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa


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
