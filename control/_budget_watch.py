"""The control plane's budget warnings: raised as calls settle, from the guard's view of the
day's spend (see `comptroller.budget_alerts` for when a budget warns).

After each settled call of a budgeted key the guard's ticket says what the key has spent
today. `BudgetWatch.observe` raises a `comptroller.budget.warning` event for each warning
that spend calls for and this process has not raised yet; across processes and with the
ledger's own warnings, the event's id (from key, day and threshold) deduplicates.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import TYPE_CHECKING

from opentelemetry.util.types import AttributeValue

from comptroller import semconv
from comptroller.budget_alerts import Crossing, WarningPolicy, crossings, day_bounds
from comptroller.budget_alerts import warning_event_id as _event_id

if TYPE_CHECKING:
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
        shares = [*policy.thresholds]
        if policy.projected:
            shares.append(policy.projected_min_share)
        self._floor_share = min(shares) if shares else None
        """Below this share of its cap a key's spend calls for no warning at all."""
        self._floors: dict[Decimal, int] = {}
        """Per cap: the floor in nano-dollars (the ticket's own unit: no Decimal per call)."""
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
        nanos = ticket.spent_nanos
        cap = ticket.cap_usd
        if nanos is None or cap is None:
            return
        floor = self._floors.get(cap)
        if floor is None:
            floor = self._floor(cap)
        if nanos < floor:
            return  # the common case: far from every warning
        spent = ticket.spent_usd
        day = ticket.day
        if spent is None or day is None or cap <= 0:
            return
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

    def _floor(self, cap: Decimal) -> int:
        share = self._floor_share
        # No share at all: a floor no spend reaches.
        floor = int(cap * Decimal(str(share)) * 1_000_000_000) if share is not None else 1 << 62
        if len(self._floors) >= 10_000:
            self._floors.clear()  # caps are few; a bound all the same
        self._floors[cap] = floor
        return floor

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
