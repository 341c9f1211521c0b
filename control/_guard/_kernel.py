"""The guard's shared kernel: keys, tickets, money, the budget day, and the decision math.

Both backends decide the same way (a test holds Redis to the memory backend's decisions):
a token bucket refills continuously up to its capacity and a call waits for the request and
the tokens it takes; a reservation fits when settled spend + open reservations + the
reservation stays under the day's cap. The memory backend runs this Python; the Redis
backend runs the same arithmetic in its Lua script (`_apply.lua`), atomically on the server.

Money is kept as integer nano-dollars: costs and reservations are rounded *up* and caps
*down*, so rounding can only make the guard stricter.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from comptroller.control._errors import BudgetExceeded
from comptroller.control._profile_types import BudgetSpec, RateLimitSpec

TicketState = Literal["open", "settled", "released"]

_NANO = 9
_ONE = Decimal(1)


def to_nanos(usd: Decimal, *, up: bool = True) -> int:
    """USD as integer nano-dollars, rounded up (costs) or down (caps)."""
    return int(usd.scaleb(_NANO).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-dollars as USD, without trailing zeros (`Decimal("0.25")`, `Decimal("10")`)."""
    if not nanos:
        return Decimal(0)
    usd = Decimal(nanos).scaleb(-_NANO).normalize()
    # normalize() writes whole amounts as 1E+1; keep them plain for messages and telemetry.
    return usd.quantize(_ONE) if int(usd.as_tuple().exponent) > 0 else usd


@dataclass(frozen=True, slots=True)
class GuardKey:
    """What rate limits and budgets are keyed on: (tenant, context, purpose), and for a budget
    by attribution (a cap per end user, session, feature or tag) the attribute it counts.

    Example:
        >>> GuardKey("acme-eu", "support", "reasoning")
        GuardKey(tenant='acme-eu', context='support', purpose='reasoning')
    """

    tenant: str
    """The tenant (the domain, i.e. a tenant's workspace)."""
    context: str
    """The calling subsystem inside the application (`platform`, `worlds`, …)."""
    purpose: str
    """Why the call is made (`reasoning`, `scoring`, …); `*` for every purpose."""
    attribute: str = ""
    """Empty for the (tenant, context, purpose) key; for a budget by attribution, what it
    counts: `user=alice`, `session=…`, `feature=…` or `tag.team=search`."""

    def __str__(self) -> str:
        tail = f", {self.attribute}" if self.attribute else ""
        return f"(tenant={self.tenant}, context={self.context}, purpose={self.purpose}{tail})"


@dataclass(kw_only=True, slots=True, eq=False)
class Ticket:
    """An admitted call: what it took from the buckets and reserved from the budget.

    Hand it back to `settle` (or `release`) exactly once; a second hand-back is ignored.
    """

    key: GuardKey
    id: str
    """Unique among the tickets of every process sharing the state."""
    tokens: int = 0
    """Tokens taken from the tokens bucket (the estimate, capped at the bucket size)."""
    reserved_usd: Decimal = Decimal(0)
    """The worst-case cost reserved from the budget (0 without a budget)."""
    cap_usd: Decimal | None = None
    """The daily cap in force at admission (None: no budget)."""
    day: str | None = None
    """The budget day (ISO date in the budget time zone) the reservation is booked on."""
    wait_s: float = 0.0
    """Time the call waited for the rate limit (show it on the span)."""
    rate_limit: RateLimitSpec | None = None
    budget: BudgetSpec | None = None
    state: TicketState = "open"
    reserved_nanos: int = field(default=0, repr=False)
    spent_nanos: int | None = field(default=None, repr=False)
    """`spent_usd` in nano-dollars (kept as an integer: converted only when read)."""
    held: Any = field(default=None, repr=False)
    """The backend's handle on what the ticket took (settle finds it without a lookup)."""
    linked: tuple[Ticket, ...] = field(default=(), repr=False)
    """The tickets of the budgets by attribution the same call was admitted under (settled
    and released with this one by the call flow)."""

    @property
    def spent_usd(self) -> Decimal | None:
        """The day's settled spend at admission; after `settle`, the spend including this
        call as this process sees it. None without a budget."""
        nanos = self.spent_nanos
        return None if nanos is None else from_nanos(nanos)


@dataclass(frozen=True, kw_only=True, slots=True)
class LedgerState:
    """The budget ledger of one key on one day."""

    key: GuardKey
    day: str
    spent_usd: Decimal
    """Settled spend."""
    reserved_usd: Decimal
    """Reservations of calls in flight."""


class Guard(Protocol):
    """Rate limits and budgets of the guarded call; backends: memory, Redis."""

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
        """Take a request and `tokens` from the buckets and reserve `reserve_usd`, atomically.

        Args:
            key: (tenant, context, purpose).
            tokens: Estimated tokens of the call (input estimate + max output tokens).
            reserve_usd: The worst-case cost to reserve; None when no price is known (a
                budgeted call is then refused with `BudgetUnverifiable`).
            rate_limit: The bucket sizes and rates in force, or None for no rate limit.
            budget: The daily cap in force, or None for no budget.
            wait_s: How long the call may wait for room in the buckets; 0 fails at once.

        Returns:
            The ticket to hand to `settle` or `release`; `ticket.wait_s` is the time waited.

        Raises:
            RateLimited: The buckets would not have room within `wait_s`.
            BudgetExceeded: The reservation does not fit under the day's cap.
            BudgetUnverifiable: The budget could not be checked (store down, its state lost
                and the ledger unreadable, no price).
            GuardUnavailable: The state store is down for a rate-limited call without budget.
        """
        ...

    def settle(self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None) -> None:
        """Replace the reservation by the actual cost and correct the tokens taken.

        Args:
            ticket: The ticket of `admit`.
            cost_usd: The actual cost; None when unknown (usage missing, unpriced): the
                reservation is charged instead.
            tokens: The actual tokens (input + output); None leaves the estimate standing.
        """
        ...

    def release(self, ticket: Ticket) -> None:
        """Drop the reservation of a call that cost nothing (failed before billing, cancelled)."""
        ...

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
        """Async `admit`; a cancelled wait releases what it took."""
        ...

    async def asettle(
        self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None:
        """Async `settle`."""
        ...

    async def arelease(self, ticket: Ticket) -> None:
        """Async `release`."""
        ...

    def seed(self, spend_by_key: Mapping[GuardKey, Decimal], *, day: str | None = None) -> None:
        """Raise the day's settled spend to what analytics recorded, never lower it.

        Args:
            spend_by_key: Settled spend per key (from the analytics budget state).
            day: ISO date of that spend; default: today in the budget time zone.
        """
        ...

    def ledger(self, key: GuardKey, *, day: str | None = None) -> LedgerState:
        """The ledger of `key` on `day` (default: today)."""
        ...

    def today(self) -> str:
        """Today's ISO date in the budget time zone."""
        ...

    def close(self) -> None:
        """Release connections (no-op in memory)."""
        ...


class _BudgetDay:
    """The ISO date of an instant in the budget time zone, with the day's bounds cached."""

    __slots__ = ("_day", "_end", "_start", "tz")

    def __init__(self, timezone: str) -> None:
        self.tz = ZoneInfo(timezone)
        self._start = 0.0
        self._end = -1.0
        self._day = ""

    def of(self, t: float) -> str:
        if self._start <= t < self._end:
            return self._day
        # Floored to the second: fromtimestamp rounds to the microsecond, which would put
        # 0.2 µs before midnight in the next day when the cache is cold and in this one
        # when it is warm. Local midnights are whole seconds.
        local = datetime.fromtimestamp(math.floor(t), self.tz).date()
        start = datetime(local.year, local.month, local.day, tzinfo=self.tz).timestamp()
        after = local + timedelta(days=1)
        end = datetime(after.year, after.month, after.day, tzinfo=self.tz).timestamp()
        self._start, self._end, self._day = start, end, local.isoformat()
        return self._day

    def seconds_left(self, t: float) -> float:
        self.of(t)
        return self._end - t


def _previous_day(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _capacities(spec: RateLimitSpec) -> tuple[float, float, float, float]:
    """(request capacity, request rate/s, token capacity, token rate/s); 0 means unlimited."""
    interval = spec.interval_s if spec.interval_s > 0 else 1.0
    req_cap = req_rate = tok_cap = tok_rate = 0.0
    if spec.requests_per_interval:
        req_rate = spec.requests_per_interval / interval
        req_cap = float(spec.burst or spec.requests_per_interval)
    if spec.tokens_per_interval:
        tok_rate = spec.tokens_per_interval / interval
        tok_cap = float(spec.tokens_per_interval)
    return req_cap, req_rate, tok_cap, tok_rate


class _Bucket:
    """The request and token buckets of one key (the memory backend's; Lua mirrors it)."""

    __slots__ = ("req_level", "req_t", "tok_level", "tok_t")

    def __init__(self, req_level: float, tok_level: float, now: float) -> None:
        self.req_level = req_level
        self.tok_level = tok_level
        self.req_t = now
        self.tok_t = now

    def refill(
        self,
        now: float,
        limits: tuple[float, float, float, float],
        take: int,
    ) -> tuple[float, str]:
        """Refill both buckets to `now`; (seconds until one request and `take` tokens fit,
        which bucket is short)."""
        req_cap, req_rate, tok_cap, tok_rate = limits
        wait, short = 0.0, ""
        if req_rate:
            self.req_level = min(req_cap, self.req_level + (now - self.req_t) * req_rate)
            self.req_t = now
            if self.req_level < 1.0:
                wait, short = (1.0 - self.req_level) / req_rate, "requests"
        if tok_rate:
            self.tok_level = min(tok_cap, self.tok_level + (now - self.tok_t) * tok_rate)
            self.tok_t = now
            if self.tok_level < take:
                tok_wait = (take - self.tok_level) / tok_rate
                if tok_wait > wait:
                    wait, short = tok_wait, "tokens"
        return wait, short


def _exceeded(
    ticket: Ticket, budget: BudgetSpec, spent_nanos: int, reserved_nanos: int
) -> BudgetExceeded:
    """The refusal of a reservation that does not fit: spent + reserved + need > cap."""
    return BudgetExceeded(
        ticket.key,
        budget.daily_usd,
        from_nanos(spent_nanos),
        from_nanos(reserved_nanos),
        requested=ticket.reserved_usd,
        day=ticket.day,
    )


# Bumped in a forked child: its ticket ids must not repeat its parent's. Cheaper than asking
# for the pid on every admit.
_FORKS = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


class _TicketIds:
    """Ticket ids unique across processes: a per-process token and a counter."""

    def __init__(self) -> None:
        self._forks = -1
        self._prefix = ""
        self._counter = itertools.count(1)

    def next(self) -> str:
        if self._forks != _FORKS[0]:
            self._forks = _FORKS[0]
            self._prefix = f"{os.urandom(4).hex()}{os.getpid():x}-"
        return f"{self._prefix}{next(self._counter)}"
