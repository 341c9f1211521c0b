"""The control plane's budget warnings: raised as calls settle, from the guard's view of the
day's spend (see `comptroller.budget_alerts` for when a budget warns).

After each settled call of a budgeted key the guard's ticket says what the key has spent
today. `BudgetWatch.observe` raises a `comptroller.budget.warning` event for each warning
that spend calls for and this process has not raised yet; across processes and with the
ledger's own warnings, the event's id (from key, day and threshold) deduplicates.

A key's warnings are those of its policy (`WarningPolicy.for_key`: `[[alerts.budgets]]`
over `[alerts]`), resolved on its first settlement and kept: nothing is matched per call.
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


_MAX_CACHED = 10_000
"""Caps and keys are few; a bound on what is cached for them all the same."""

_NEVER: int = 1 << 62
"""A floor no spend reaches (a policy with nothing to warn of)."""


def _floor_share(policy: WarningPolicy) -> float | None:
    """Below this share of its cap a key's spend calls for no warning at all."""
    shares = [*policy.thresholds]
    if policy.projected:
        shares.append(policy.projected_min_share)
    return min(shares) if shares else None


def _floor_nanos(cap: Decimal, share: float | None) -> int:
    return int(cap * Decimal(str(share)) * 1_000_000_000) if share is not None else _NEVER


class _KeyWatch:
    """One key's resolved policy, and its floor for the cap last seen (never changed once
    made: replaced whole when the cap changes, so no reader sees a floor of another cap)."""

    __slots__ = ("cap", "floor", "policy", "share")

    def __init__(self, policy: WarningPolicy, share: float | None, cap: Decimal) -> None:
        self.policy = policy
        self.share = share
        self.cap = cap
        self.floor = _floor_nanos(cap, share)


class BudgetWatch:
    """Raises budget warnings as settled spend calls for them."""

    def __init__(
        self, policy: WarningPolicy, *, clock: Clock, events: EventEmitter, timezone: str
    ) -> None:
        self.policy = policy
        self._uniform = not policy.budgets
        """No per-budget rules: every key has `policy` (floors are cached per cap alone)."""
        self._floor_share = _floor_share(policy)
        self._floors: dict[Decimal, int] = {}
        """Per cap (uniform policy): the floor in nano-dollars (the ticket's own unit: no
        Decimal per call)."""
        self._keys: dict[GuardKey, _KeyWatch] = {}
        """Per key (per-budget rules): its policy and floor."""
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
        if self._uniform:
            policy = self.policy
            floor = self._floors.get(cap)
            if floor is None:
                floor = self._floor(cap)
        else:
            watch = self._keys.get(ticket.key)
            if watch is None or (watch.cap is not cap and watch.cap != cap):
                watch = self._watch(ticket.key, cap, watch)
            policy = watch.policy
            floor = watch.floor
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
            policy=policy,
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

    def policy_for(self, key: GuardKey) -> WarningPolicy:
        """The warning policy of budget key `key` (its `[[alerts.budgets]]` rule, if any)."""
        return self.policy.for_key(key.tenant, key.context, key.purpose, key.attribute)

    def _floor(self, cap: Decimal) -> int:
        floor = _floor_nanos(cap, self._floor_share)
        if len(self._floors) >= _MAX_CACHED:
            self._floors.clear()
        self._floors[cap] = floor
        return floor

    def _watch(self, key: GuardKey, cap: Decimal, known: _KeyWatch | None) -> _KeyWatch:
        if known is not None:  # the cap changed: the policy stands
            watch = _KeyWatch(known.policy, known.share, cap)
        else:
            policy = self.policy_for(key)
            watch = _KeyWatch(policy, _floor_share(policy), cap)
            if len(self._keys) >= _MAX_CACHED:
                self._keys.clear()
        self._keys[key] = watch
        return watch

    def _emit(
        self, key: GuardKey, day: str, cap: Decimal, spent: Decimal, crossing: Crossing
    ) -> None:
        attributes: dict[str, AttributeValue] = {
            semconv.EVENT_ID: _event_id(
                key.tenant, key.context, key.purpose, day, crossing.label, attribute=key.attribute
            ),
            semconv.TENANT: key.tenant,
            semconv.CONTEXT: key.context,
            semconv.PURPOSE: key.purpose,
            semconv.BUDGET_DAY: day,
            semconv.BUDGET_CAP_USD: str(cap),
            semconv.BUDGET_SPENT_USD: str(spent),
            semconv.BUDGET_WARNING_KIND: crossing.kind,
        }
        if key.attribute:
            attributes[semconv.BUDGET_ATTRIBUTE] = key.attribute
        if crossing.threshold is not None:
            attributes[semconv.BUDGET_THRESHOLD] = crossing.threshold
        if crossing.projected_usd is not None:
            attributes[semconv.BUDGET_PROJECTED_USD] = str(crossing.projected_usd)
        try:
            self._events.emit(semconv.EVENT_BUDGET_WARNING, attributes)
        except Exception:  # telemetry trouble never fails a call that was already paid
            return
