"""`MemoryGuard`: rate limits and budgets in this process's memory (the default backend).

Overshoot bound (one process): settled spend exceeds the cap by at most
Σ max(0, actual − reserved) over the day's calls, i.e. by what calls cost beyond their
worst-case reservation (possible only when the reservation was capped by
`control.budget_max_reservation_usd`, or usage came back above `max_tokens`), plus the
reservations of calls that outlived `reservation_ttl_s`. With reservations at the true worst
case, it is zero. P processes each with their own in-memory ledger share nothing but the
analytics reconciliation (`BudgetReconciler`, which raises each ledger to the spend landed by
all): between two reconciliations each may spend up to the cap, so the overshoot is bounded
by (P − 1) × cap plus the spend of one reconciliation interval and the collector's landing
lag. Use the Redis backend for several processes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal

from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._errors import BudgetUnverifiable, RateLimited
from comptroller.control._guard._kernel import (
    GuardKey,
    LedgerState,
    Ticket,
    _Bucket,
    _BudgetDay,
    _capacities,
    _exceeded,
    _previous_day,
    _TicketIds,
    from_nanos,
    to_nanos,
)
from comptroller.control._profile_types import BudgetSpec, RateLimitSpec


class _Ledger:
    __slots__ = ("next_expiry", "open", "reserved", "spent")

    def __init__(self) -> None:
        self.spent = 0
        self.reserved = 0
        # ticket id → (reserved nanos, expiry wall time); expired ones are swept on admit.
        self.open: dict[str, tuple[int, float]] = {}
        self.next_expiry = float("inf")

    def sweep(self, now: float) -> None:
        expired = [tid for tid, (_, exp) in self.open.items() if exp <= now]
        for tid in expired:
            self.reserved -= self.open.pop(tid)[0]
        self.next_expiry = min((exp for _, exp in self.open.values()), default=float("inf"))

    def drop(self, ticket_id: str) -> None:
        held = self.open.pop(ticket_id, None)
        if held is not None:
            self.reserved -= held[0]


class _KeyState:
    """Per key: its bucket and today's ledger, so an admit hashes the key once."""

    __slots__ = ("bucket", "day", "ledger")

    def __init__(self) -> None:
        self.bucket: _Bucket | None = None
        self.day = ""
        self.ledger: _Ledger | None = None


class MemoryGuard:
    """Rate limits and budgets in this process's memory (the default backend).

    Atomic under threads and asyncio: each admit, settle and release is one critical
    section under a lock, with no await inside.

    Example:
        >>> from decimal import Decimal
        >>> guard = MemoryGuard()
        >>> key = GuardKey("acme", "support", "reasoning")
        >>> ticket = guard.admit(
        ...     key, tokens=100, reserve_usd=Decimal("0.01"), rate_limit=None,
        ...     budget=BudgetSpec(daily_usd=Decimal("1")),
        ... )
        >>> guard.settle(ticket, cost_usd=Decimal("0.004"), tokens=80)
        >>> guard.ledger(key).spent_usd
        Decimal('0.004')
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        timezone: str = "UTC",
        reservation_ttl_s: float = 900.0,
    ) -> None:
        """Build an in-memory guard.

        Args:
            clock: Time source (default: the system clock).
            timezone: IANA time zone of the budget day.
            reservation_ttl_s: An unsettled reservation older than this is dropped.
        """
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._days = _BudgetDay(timezone)
        self._ttl = reservation_ttl_s
        self._lock = threading.Lock()
        self._keys: dict[GuardKey, _KeyState] = {}
        self._ledgers: dict[tuple[GuardKey, str], _Ledger] = {}
        self._ids = _TicketIds()
        self._caps: dict[Decimal, int] = {}
        self._limits: dict[RateLimitSpec, tuple[float, float, float, float]] = {}
        self._current_day = ""

    @property
    def timezone(self) -> str:
        """The IANA time zone of the budget day."""
        return str(self._days.tz)

    def _cap_nanos(self, cap: Decimal) -> int:
        nanos = self._caps.get(cap)
        if nanos is None:
            nanos = self._caps[cap] = to_nanos(cap, up=False)
        return nanos

    def _ledger_for(self, key: GuardKey, day: str) -> _Ledger:
        # Only a later day rolls the ledgers (a settle may still book on yesterday's).
        if day > self._current_day:
            self._roll_to(day)
        ledger = self._ledgers.get((key, day))
        if ledger is None:
            ledger = self._ledgers[(key, day)] = _Ledger()
        return ledger

    def _roll_to(self, day: str) -> None:
        # Keep today's and yesterday's ledgers (a call admitted before midnight settles on
        # the day it was reserved on); older ones can no longer be touched.
        keep = {day, _previous_day(day)}
        for ledger_key in [k for k in self._ledgers if k[1] not in keep]:
            del self._ledgers[ledger_key]
        self._current_day = day

    def _admit_locked(
        self,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
    ) -> Ticket:
        """The whole decision, under the lock: refuse having taken nothing, or take it all."""
        wait = 0.0
        bucket: _Bucket | None = None
        take = 0
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if rate_limit is not None:
            limits = self._limits.get(rate_limit)
            if limits is None:
                limits = self._limits[rate_limit] = _capacities(rate_limit)
            now_m = self._clock.monotonic()
            bucket = state.bucket
            if bucket is None:
                bucket = state.bucket = _Bucket(limits[0], limits[2], now_m)
            if limits[3]:
                # A call larger than the bucket waits for a full bucket instead of forever.
                take = min(max(tokens, 0), int(limits[2]))
            wait, short = bucket.refill(now_m, limits, take)
            if wait > wait_s:
                raise RateLimited(key, wait, bucket=short)

        ticket = Ticket(key=key, id=self._ids.next(), rate_limit=rate_limit, budget=budget)
        if budget is not None:
            if reserve_usd is None:
                raise BudgetUnverifiable(key, "no price is known for the model")
            now_t = self._clock.time()
            day = ticket.day = self._days.of(now_t)
            ticket.reserved_usd = reserve_usd
            ledger = state.ledger
            if state.day != day or ledger is None:
                ledger = state.ledger = self._ledger_for(key, day)
                state.day = day
            if ledger.next_expiry <= now_t:
                ledger.sweep(now_t)
            need = max(to_nanos(reserve_usd), 0)
            if ledger.spent + ledger.reserved + need > self._cap_nanos(budget.daily_usd):
                raise _exceeded(ticket, budget, ledger.spent, ledger.reserved)
            ledger.reserved += need
            expiry = now_t + self._ttl
            ledger.open[ticket.id] = (need, expiry)
            if expiry < ledger.next_expiry:
                ledger.next_expiry = expiry
            ticket.reserved_nanos = need
            ticket.cap_usd = budget.daily_usd
            ticket.spent_nanos = ledger.spent
            ticket.held = ledger
        if bucket is not None:
            bucket.req_level -= 1.0
            bucket.tok_level -= take
            ticket.tokens = take
        ticket.wait_s = wait
        return ticket

    # The only I/O of an admission is its wait: the sync and async drivers below differ in
    # how they sleep, nothing else.

    def _take(
        self,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
    ) -> Ticket:
        """The admission, without its wait (which the sync and async callers do their way)."""
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        with self._lock:
            return self._admit_locked(key, tokens, reserve_usd, rate_limit, budget, wait_s)

    def admit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float = 0.0,
    ) -> Ticket:
        """See `Guard.admit`."""
        ticket = self._take(key, tokens, reserve_usd, rate_limit, budget, wait_s)
        if ticket.wait_s > 0:
            try:
                self._clock.sleep(ticket.wait_s)
            except BaseException:
                self.release(ticket)
                raise
        return ticket

    async def aadmit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float = 0.0,
    ) -> Ticket:
        """See `Guard.aadmit`."""
        ticket = self._take(key, tokens, reserve_usd, rate_limit, budget, wait_s)
        if ticket.wait_s > 0:
            try:
                await self._clock.asleep(ticket.wait_s)
            except BaseException:
                self.release(ticket)
                raise
        return ticket

    def _held(self, ticket: Ticket) -> _Ledger:
        ledger = ticket.held
        if isinstance(ledger, _Ledger):
            return ledger
        assert ticket.day is not None
        return self._ledger_for(ticket.key, ticket.day)

    def settle(self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None) -> None:
        """See `Guard.settle`."""
        if ticket.state != "open":
            return
        ticket.state = "settled"
        # Unknown cost: charge the worst case that was reserved for it.
        charge = ticket.reserved_nanos if cost_usd is None else max(to_nanos(cost_usd), 0)
        with self._lock:
            if ticket.day is not None:
                ledger = self._held(ticket)
                ledger.drop(ticket.id)
                ledger.spent += charge
                ticket.spent_nanos = ledger.spent
            spec = ticket.rate_limit
            if tokens is not None and spec is not None and spec.tokens_per_interval:
                state = self._keys.get(ticket.key)
                bucket = state.bucket if state is not None else None
                if bucket is not None:
                    bucket.tok_level = min(
                        float(spec.tokens_per_interval), bucket.tok_level - (tokens - ticket.tokens)
                    )

    def release(self, ticket: Ticket) -> None:
        """See `Guard.release`."""
        if ticket.state != "open":
            return
        ticket.state = "released"
        if ticket.day is None:
            return
        with self._lock:
            self._held(ticket).drop(ticket.id)

    async def asettle(
        self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None:
        """See `Guard.asettle` (no I/O: the sync body)."""
        self.settle(ticket, cost_usd=cost_usd, tokens=tokens)

    async def arelease(self, ticket: Ticket) -> None:
        """See `Guard.arelease` (no I/O: the sync body)."""
        self.release(ticket)

    def today(self) -> str:
        """Today's ISO date in the budget time zone."""
        return self._days.of(self._clock.time())

    def seed(self, spend_by_key: Mapping[GuardKey, Decimal], *, day: str | None = None) -> None:
        """See `Guard.seed`."""
        day = day or self.today()
        with self._lock:
            for key, spent in spend_by_key.items():
                ledger = self._ledger_for(key, day)
                ledger.spent = max(ledger.spent, to_nanos(spent))

    def ledger(self, key: GuardKey, *, day: str | None = None) -> LedgerState:
        """See `Guard.ledger`."""
        day = day or self.today()
        with self._lock:
            found = self._ledgers.get((key, day))
            if found is not None and found.next_expiry <= self._clock.time():
                found.sweep(self._clock.time())
            spent, reserved = (found.spent, found.reserved) if found else (0, 0)
        return LedgerState(
            key=key, day=day, spent_usd=from_nanos(spent), reserved_usd=from_nanos(reserved)
        )

    def close(self) -> None:
        """Nothing to release."""
