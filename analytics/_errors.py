"""Errors of analytics.

::

    ComptrollerError
    └── AnalyticsError               anything analytics raised on purpose
        ├── QueryError               a query failed (bad SQL, missing parameter, remote 400)
        └── ReaderUnavailable        the database or the collector cannot be reached (exit 2)
"""

from __future__ import annotations

from comptroller.errors import ComptrollerError


class AnalyticsError(ComptrollerError):
    """Root of the errors analytics raises on purpose."""

    exit_code = 2


class QueryError(AnalyticsError):
    """A query failed: its SQL, a parameter, or the remote reader refused it."""


class ReaderUnavailable(AnalyticsError):
    """The DuckDB file or the collector's read API cannot be reached."""
