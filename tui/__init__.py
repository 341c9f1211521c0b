"""The terminal dashboard: spend, budgets, circuits, profile history and live calls.

Start it with `comptroller tui`, or embed it::

    from comptroller.tui import ComptrollerApp, open_source
    ComptrollerApp(open_source(db=None, url=None, default_db=path)).run()

Every figure comes from a panel of `comptroller.dashboards`; queries run in background
workers, each with its own reader, and only the visible view refreshes.
"""

from comptroller.tui._admin import ProfileAdmin, ProfileRef, ReadOnly, RollbackDone, TuiError
from comptroller.tui._app import AppOptions, ComptrollerApp, RefreshDone
from comptroller.tui._model import VIEW_IDS, Filters, Operator, QueryResult, RangeName, ViewId
from comptroller.tui._source import DuckDBSource, Reader, ReaderFactory
from comptroller.tui._wiring import ServiceProfileAdmin, open_source, profile_admin

__all__ = [
    "VIEW_IDS",
    "AppOptions",
    "ComptrollerApp",
    "DuckDBSource",
    "Filters",
    "Operator",
    "ProfileAdmin",
    "ProfileRef",
    "QueryResult",
    "RangeName",
    "ReadOnly",
    "Reader",
    "ReaderFactory",
    "RefreshDone",
    "RollbackDone",
    "ServiceProfileAdmin",
    "TuiError",
    "ViewId",
    "open_source",
    "profile_admin",
]
