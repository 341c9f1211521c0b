"""When a budget warns before it stops calls: one definition for control plane and ledger.

A budget key (tenant, context, purpose) with a daily cap warns once per day for each share of
the cap its spend crosses (`AlertSettings.budget_warn_at`, 50 %, 80 % and 100 % by default),
and once a day when its burn rate — the spend so far over the elapsed part of the budget day
— will cross the cap before the day ends. The control plane raises them as calls settle
(`control/_budget_watch.py`, its own view of the spend); the ledger raises them as usage lands
(`analytics.record_budget_events`, every process's spend). Both name a warning with
`warning_event_id`, made from (key, day, threshold), so the ledger keeps one row per warning
whichever raised it first, and notifications go out once.

Pure functions of decimals and seconds: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from comptroller.config import AlertSettings

PROJECTED: Final = "projected"
"""The label of a projected-overrun warning (a threshold's label is its share: `0.8`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WarningPolicy:
    """When budgets warn (see `AlertSettings` for each field)."""

    thresholds: Sequence[float] = (0.5, 0.8, 1.0)
    projected: bool = True
    projected_min_share: float = 0.1
    projected_min_elapsed_s: float = 3600.0

    @classmethod
    def from_settings(cls, alerts: AlertSettings) -> WarningPolicy:
        """The policy of `settings.alerts`."""
        return cls(
            thresholds=tuple(alerts.budget_warn_at),
            projected=alerts.budget_warn_projected,
            projected_min_share=alerts.projected_min_share,
            projected_min_elapsed_s=alerts.projected_min_elapsed_s,
        )

    @property
    def active(self) -> bool:
        """Whether anything can warn at all."""
        return bool(self.thresholds) or self.projected


@dataclass(frozen=True, kw_only=True, slots=True)
class Crossing:
    """One warning a key's spend calls for."""

    label: str
    """The share crossed (`"0.8"`) or `PROJECTED`."""
    threshold: float | None
    """The share crossed; None for a projection."""
    projected_usd: Decimal | None = None
    """The day's spend at the current burn rate (projections only)."""

    @property
    def kind(self) -> str:
        """`threshold` or `projected` (the event's `comptroller.budget.warning_kind`)."""
        return PROJECTED if self.threshold is None else "threshold"


def day_bounds(day: str | date, timezone: str) -> tuple[float, float]:
    """The start and end (epoch seconds) of budget day `day` in `timezone`.

    23 or 25 hours apart on the days clocks change.
    """
    local = date.fromisoformat(day) if isinstance(day, str) else day
    tz = ZoneInfo(timezone)
    start = datetime(local.year, local.month, local.day, tzinfo=tz)
    after = local + timedelta(days=1)
    end = datetime(after.year, after.month, after.day, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def crossings(
    spent: Decimal,
    cap: Decimal,
    *,
    now: float,
    day_start: float,
    day_end: float,
    policy: WarningPolicy,
) -> list[Crossing]:
    """Every warning that `spent` against `cap` calls for at `now` (already raised or not).

    Example:
        >>> policy = WarningPolicy(thresholds=(0.5, 0.8), projected=False)
        >>> [c.label for c in crossings(Decimal("0.9"), Decimal(1), now=0, day_start=0,
        ...                              day_end=86400, policy=policy)]
        ['0.5', '0.8']
    """
    if cap <= 0:
        return []
    share = spent / cap
    found = [
        Crossing(label=_label(t), threshold=float(t))
        for t in sorted(policy.thresholds)
        if share >= Decimal(str(t))
    ]
    if policy.projected and Decimal(str(policy.projected_min_share)) <= share < 1:
        elapsed = now - day_start
        length = day_end - day_start
        if policy.projected_min_elapsed_s <= elapsed < length and elapsed > 0:
            projection = spent * Decimal(length) / Decimal(elapsed)
            if projection > cap:
                found.append(
                    Crossing(
                        label=PROJECTED,
                        threshold=None,
                        projected_usd=projection.quantize(Decimal("0.0000000001")),
                    )
                )
    return found


def warning_event_id(tenant: str, context: str, purpose: str, day: str, label: str) -> str:
    """The identity of one warning: the same for every process that raises it."""
    identity = "\x1f".join((tenant, context, purpose, day, label))
    return "budget-warning-" + hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _label(share: float) -> str:
    return format(Decimal(str(share)).normalize(), "f")
