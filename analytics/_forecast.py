"""Spend forecasts: today's spend at the end of the day, this month's at the end of the month.

One question, one panel (`dashboards/panels/forecast.toml`): the numbers here are the
panel's rows, so `comptroller sql` with the panel's SQL gives the same. The method and its
back-test on the demo's data are in docs/FORECAST.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeAlias

from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import Reader

ForecastBy: TypeAlias = Literal["key", "purpose"]
"""One forecast per budget key (tenant, context, purpose) or per purpose."""

ALL: str = "*"
"""The tenant and context of a per-purpose forecast (every tenant and context)."""


@dataclass(frozen=True, kw_only=True)
class Forecast:
    """Where the spend of one budget key (or purpose) is heading, today and this month."""

    tenant: str
    """The key's tenant; `ALL` (`*`) in a per-purpose forecast."""
    context: str
    purpose: str
    spent_usd: Decimal
    """Spent today so far."""
    day_end_usd: Decimal
    """Today's spend at the end of the day: spent so far plus the key's average spend, over
    the baseline days, in the hours of the day still to come."""
    burn_usd: Decimal
    """Today's spend at the end of the day if the burn rate since midnight holds (the
    budget state's `projected_usd`), for comparison."""
    cap_usd: Decimal | None
    """The key's daily cap today (None without one, and per purpose)."""
    day_end_utilisation: float | None
    """`day_end_usd` over the cap (None without a cap)."""
    month_to_date_usd: Decimal
    """Spent this month, today included."""
    month_end_usd: Decimal
    """This month's spend at its end: before today, plus `day_end_usd`, plus `days_left`
    times `daily_avg_usd`."""
    daily_avg_usd: Decimal
    """Average daily spend over the baseline days (a day the key was idle counts 0)."""
    days_left: int
    """Whole days of the month after today."""
    history_days: int
    """Baseline days: days of the window the ledger recorded anything in."""
    method: Literal["hour_of_day", "burn_rate"]
    """`burn_rate` when the ledger has no history yet (the burn rate stands in)."""

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose)."""
        return (self.tenant, self.context, self.purpose)

    @property
    def over_cap(self) -> bool:
        """Whether the day-end projection exceeds the key's cap."""
        return self.cap_usd is not None and self.day_end_usd > self.cap_usd


def forecast(
    reader: Reader,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    by: ForecastBy = "key",
    days: int = 7,
    tenant: str | None = None,
    purpose: str | None = None,
    context: str | None = None,
) -> list[Forecast]:
    """Day-end and month-end projections of spend, largest month end first.

    Reads the hourly rollup through the shipped `forecast` panel.

    Args:
        reader: A DuckDB file or a running collector.
        now: The instant the projections are made at (default: now).
        timezone: Time zone of the budget day (`settings.timezone`).
        by: One forecast per budget key, or per purpose.
        days: Days of history the hour-of-day profile and the daily average are taken over.
        tenant: Only this tenant.
        purpose: Only this purpose.
        context: Only this context.

    Example:
        >>> from comptroller.analytics import forecast, open_reader
        >>> [f.purpose for f in forecast(open_reader(db="c.duckdb"), by="purpose")]  # doctest: +SKIP
        ['reasoning', 'scoring']
    """
    rows = run_panel(
        reader,
        builtin_panels()["forecast"],
        now=now,
        timezone=timezone,
        by=by,
        days=days,
        tenant=tenant,
        purpose=purpose,
        context=context,
    ).to_pylist()
    return [
        Forecast(
            tenant=row["tenant"],
            context=row["context"],
            purpose=row["purpose"],
            spent_usd=row["spent_usd"],
            day_end_usd=row["day_end_usd"],
            burn_usd=row["burn_usd"],
            cap_usd=row["cap_usd"],
            day_end_utilisation=row["day_end_utilisation"],
            month_to_date_usd=row["month_to_date_usd"],
            month_end_usd=row["month_end_usd"],
            daily_avg_usd=row["daily_avg_usd"],
            days_left=int(row["days_left"]),
            history_days=int(row["history_days"]),
            method=row["method"],
        )
        for row in rows
    ]
