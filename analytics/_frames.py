"""The Python API: the usage data as polars DataFrames."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeAlias, get_args

import polars as pl
import pyarrow as pa

from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import DuckDBReader, HttpReader, Reader, open_reader
from comptroller.dashboards import Clock, Param, coerce
from comptroller.errors import UsageError

Dimension: TypeAlias = Literal["day", "tenant", "org", "context", "purpose", "provider", "model"]
DIMENSIONS: tuple[str, ...] = get_args(Dimension)

_DATE = Param(name="date", type="date")
_STAMP = Param(name="timestamp", type="timestamp")


class Analytics:
    """Usage, spend, budgets, circuits and profile history as polars DataFrames.

    Args:
        reader: Where to read (see `open_reader`).
        timezone: Time zone of the rollup's days and of relative dates (`today-6d`).
        now: Fixed "now" for relative dates (default: the clock).

    Example:
        >>> ana = Analytics.open(db="comptroller.duckdb")  # doctest: +SKIP
        >>> ana.spend(by=("purpose", "model"), since="today-6d")  # doctest: +SKIP
    """

    def __init__(
        self, reader: Reader, *, timezone: str = "UTC", now: dt.datetime | None = None
    ) -> None:
        self.reader = reader
        self.timezone = timezone
        self._now = now

    @classmethod
    def open(
        cls,
        *,
        db: Path | str | None = None,
        url: str | None = None,
        token: str | None = None,
        timezone: str = "UTC",
    ) -> Analytics:
        """Open a DuckDB file read-only (`db`) or a running collector (`url`)."""
        reader: DuckDBReader | HttpReader = open_reader(db=db, url=url, token=token)
        return cls(reader, timezone=timezone)

    def close(self) -> None:
        """Close the reader."""
        self.reader.close()

    def __enter__(self) -> Analytics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sql(self, query: str, params: Mapping[str, object] | None = None) -> pl.DataFrame:
        """Run one read-only statement."""
        return _frame(self.reader.query(query, params))

    def panel(self, name: str, **params: object) -> pl.DataFrame:
        """Run a shipped panel by name with `params`."""
        return _frame(
            run_panel(
                self.reader,
                builtin_panels()[name],
                now=self._now,
                timezone=self.timezone,
                **params,
            )
        )

    def spend(
        self,
        by: Sequence[Dimension] | Dimension = ("purpose",),
        *,
        since: dt.date | str = "today-29d",
        until: dt.date | str = "today",
        tenant: str | None = None,
        purpose: str | None = None,
    ) -> pl.DataFrame:
        """Spend, calls, tokens and unpriced calls per `by`, from the daily rollup.

        Args:
            by: Dimensions to group by: day, tenant, org, context, purpose, provider, model.
            since: First local day (a date, ISO text, or relative: `today-6d`, `month_start`).
            until: Last local day, inclusive.
            tenant: Only this tenant.
            purpose: Only this purpose.

        Raises:
            UsageError: An unknown dimension or an unreadable date.
        """
        dims = [by] if isinstance(by, str) else list(by)
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown or not dims:
            raise UsageError(
                f"cannot group spend by {', '.join(unknown) or 'nothing'} "
                f"(choose from {', '.join(DIMENSIONS)})"
            )
        keys = ", ".join(dims)
        query = f"""
            SELECT {keys},
                sum(cost_usd) AS cost_usd,
                sum(calls)::BIGINT AS calls,
                sum(errors)::BIGINT AS errors,
                sum(input_tokens)::BIGINT AS input_tokens,
                sum(output_tokens)::BIGINT AS output_tokens,
                sum(cache_read_tokens)::BIGINT AS cache_read_tokens,
                sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
                sum(reasoning_tokens)::BIGINT AS reasoning_tokens,
                sum(estimated_calls)::BIGINT AS estimated_calls,
                sum(unpriced_calls)::BIGINT AS unpriced_calls
            FROM llm_usage_daily
            WHERE day >= $since::DATE AND day <= $until::DATE
              AND ($tenant IS NULL OR tenant = $tenant)
              AND ($purpose IS NULL OR purpose = $purpose)
            GROUP BY {keys}
            ORDER BY cost_usd DESC, {keys}
        """
        return self.sql(
            query,
            {
                "since": self._day(since),
                "until": self._day(until),
                "tenant": tenant,
                "purpose": purpose,
            },
        )

    def budget_state(
        self, *, warn_ratio: float = 0.8, tenant: str | None = None, purpose: str | None = None
    ) -> pl.DataFrame:
        """Today's budget state per key with a cap (see `budget_state`)."""
        return self.panel("budget_state", warn_ratio=warn_ratio, tenant=tenant, purpose=purpose)

    def circuit_events(
        self,
        *,
        since: dt.datetime | str = "now-24h",
        provider: str | None = None,
        model: str | None = None,
        limit: int = 10_000,
    ) -> pl.DataFrame:
        """Circuit state changes since `since`, newest first."""
        return self.panel(
            "circuit_timeline", since=since, provider=provider, model=model, limit=limit
        )

    def profile_history(
        self,
        purpose: str | None = None,
        *,
        since: dt.datetime | str = "today-89d",
        scope_id: str | None = None,
        limit: int = 10_000,
    ) -> pl.DataFrame:
        """Profile activations, rollbacks and warnings (of one purpose), newest first."""
        return self.panel(
            "profile_history", purpose=purpose, since=since, scope_id=scope_id, limit=limit
        )

    def budget_events(
        self, *, since: dt.datetime | str = "today-6d", tenant: str | None = None
    ) -> pl.DataFrame:
        """Budget warnings, caps reached and rejections, newest first."""
        return self.panel("budget_events", since=since, tenant=tenant, limit=100_000)

    def usage(
        self,
        *,
        since: dt.datetime | str = "now-1h",
        tenant: str | None = None,
        purpose: str | None = None,
        limit: int = 1_000,
    ) -> pl.DataFrame:
        """The latest usage rows (one per priced attempt), newest first."""
        return self.panel("recent_calls", since=since, tenant=tenant, purpose=purpose, limit=limit)

    def _clock(self) -> Clock:
        return Clock.at(self._now, self.timezone)

    def _day(self, value: dt.date | str) -> object:
        return coerce(_DATE, value, self._clock())

    def _stamp(self, value: dt.datetime | str) -> object:
        return coerce(_STAMP, value, self._clock())


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
