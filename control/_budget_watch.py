"""The control plane's budget warnings: raised as calls settle, from the guard's view of the
day's spend (see `comptroller.budget_alerts` for when a budget warns).

After each settled call of a budgeted key the guard's ticket says what the key has spent
today. `BudgetWatch.observe` raises a `comptroller.budget.warning` event for each warning
that spend calls for and this process has not raised yet; across processes and with the
ledger's own warnings, the event's id (from key, day and threshold) deduplicates.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from opentelemetry.util.types import AttributeValue

from comptroller import semconv
from comptroller.budget_alerts import Crossing, WarningPolicy, crossings, day_bounds
from comptroller.budget_alerts import warning_event_id as _event_id

if TYPE_CHECKING:
    from decimal import Decimal

    from comptroller.control._clock import Clock
    from comptroller.control._guard import GuardKey
    from comptroller.control._guard._kernel import Ticket
    from comptroller.control._telemetry import EventEmitter


class BudgetWatch:
    """Raises budget warnings as settled spend calls for them."""

    def __init__(
        self, policy: WarningPolicy, *, clock: Clock, events: EventEmitter, timezone: str
    ) -> None:
        self.policy = policy
        self._lowest = min(policy.thresholds) if policy.thresholds else None
        self._min_projected = policy.projected_min_share if policy.projected else None
        self._clock = clock
        self._events = events
        self._timezone = timezone
        self._bounds: tuple[str, float, float] = ("", 0.0, 0.0)
        self._raised: dict[str, set[tuple[GuardKey, str]]] = {}
        """Per budget day: the (key, label) warnings raised in this process."""
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether anything can be raised at all."""
        return self.policy.active

    def observe(self, ticket: Ticket) -> None:
        """Raise what the spend after `ticket`'s settlement calls for (cheap when nothing)."""
        cap = ticket.cap_usd
        spent = ticket.spent_usd
        day = ticket.day
        if cap is None or spent is None or day is None or cap <= 0:
            return
        share = float(spent / cap)
        lowest = self._lowest
        floor = self._min_projected
        if (lowest is None or share < lowest) and (floor is None or share < floor):
            return  # the common case: far from every warning
        bounds = self._bounds
        if bounds[0] != day:
            bounds = self._bounds = (day, *day_bounds(day, self._timezone))
        found = crossings(
            spent,
            cap,
            now=self._clock.time(),
            day_start=bounds[1],
            day_end=bounds[2],
            policy=self.policy,
        )
        if not found:
            return
        key = ticket.key
        fresh: list[Crossing] = []
        with self._lock:
            raised = self._raised.get(day)
            if raised is None:
                # A new day: what was raised before it no longer dedupes anything.
                self._raised = {day: set()}
                raised = self._raised[day]
            for crossing in found:
                if (key, crossing.label) not in raised:
                    raised.add((key, crossing.label))
                    fresh.append(crossing)
        for crossing in fresh:
            self._emit(key, day, cap, spent, crossing)

    def _emit(
        self, key: GuardKey, day: str, cap: Decimal, spent: Decimal, crossing: Crossing
    ) -> None:
        attributes: dict[str, AttributeValue] = {
            semconv.EVENT_ID: _event_id(key.tenant, key.context, key.purpose, day, crossing.label),
            semconv.TENANT: key.tenant,
            semconv.CONTEXT: key.context,
            semconv.PURPOSE: key.purpose,
            semconv.BUDGET_DAY: day,
            semconv.BUDGET_CAP_USD: str(cap),
            semconv.BUDGET_SPENT_USD: str(spent),
            semconv.BUDGET_WARNING_KIND: crossing.kind,
        }
        if crossing.threshold is not None:
            attributes[semconv.BUDGET_THRESHOLD] = crossing.threshold
        if crossing.projected_usd is not None:
            attributes[semconv.BUDGET_PROJECTED_USD] = str(crossing.projected_usd)
        try:
            self._events.emit(semconv.EVENT_BUDGET_WARNING, attributes)
        except Exception:  # telemetry trouble never fails a call that was already paid
            return
