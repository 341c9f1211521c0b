"""Rate limits and fail-closed daily budgets per (tenant, context, purpose).

A call goes through a `Guard` twice. `admit` takes, in one atomic step, a request and the
estimated tokens from the token buckets and a worst-case reservation from the day's budget
ledger, or refuses the call (`RateLimited`, `BudgetExceeded`, `BudgetUnverifiable`) having
taken nothing. After the call, `settle` replaces the reservation by the actual cost and
corrects the token estimate; `release` drops the reservation of a call that cost nothing
(an error before the provider billed, a cancellation). On Redis, `settle` and `release` are
applied to the ticket at once and delivered inside the next `admit`'s script, so a call
costs one round trip (`control/_guard_redis.py` gives the bound this adds: none while the
process lives — the reservation stays booked until delivered, which is stricter).

Money is kept as integer nano-dollars: costs and reservations are rounded *up* and caps
*down*, so rounding can only make the guard stricter. The check and the increment happen
under one lock (one Lua script on Redis): no interleaving of concurrent admits can let two
reservations both fit into the room of one, which is the classic check-then-increment bug.

Overshoot bound (in-memory backend, one process): settled spend exceeds the cap by at most
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

import itertools
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._errors import BudgetExceeded, BudgetUnverifiable, RateLimited
from comptroller.control._profile_types import BudgetSpec, RateLimitSpec

if TYPE_CHECKING:
    from comptroller.config import Settings

TicketState = Literal["open", "settled", "released"]

_NANO = 9


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


_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class GuardKey:
    """What rate limits and budgets are keyed on: (tenant, context, purpose).

    Example:
        >>> GuardKey("acme-eu", "support", "reasoning")
        GuardKey(tenant='acme-eu', context='support', purpose='reasoning')
    """

    tenant: str
    """The tenant (the domain, i.e. a tenant's workspace)."""
    context: str
    """The calling subsystem inside the application (`platform`, `worlds`, …)."""
    purpose: str
    """Why the call is made (`reasoning`, `scoring`, …)."""

    def __str__(self) -> str:
        return f"(tenant={self.tenant}, context={self.context}, purpose={self.purpose})"


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
            BudgetUnverifiable: The budget could not be checked (store down, no price).
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


class _Bucket:
    __slots__ = ("req_level", "req_t", "tok_level", "tok_t")

    def __init__(self, req_level: float, tok_level: float, now: float) -> None:
        self.req_level = req_level
        self.tok_level = tok_level
        self.req_t = now
        self.tok_t = now


class _KeyState:
    """Per key: its bucket and today's ledger, so an admit hashes the key once."""

    __slots__ = ("bucket", "day", "ledger")

    def __init__(self) -> None:
        self.bucket: _Bucket | None = None
        self.day = ""
        self.ledger: _Ledger | None = None


class _Ledger:
    __slots__ = ("next_expiry", "open", "reserved", "spent")

    def __init__(self) -> None:
        self.spent = 0
        self.reserved = 0
        # ticket id → (reserved nanos, expiry wall time); expired ones are swept on admit.
        self.open: dict[str, tuple[int, float]] = {}
        self.next_expiry = float("inf")


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


class _TicketIds:
    """Ticket ids unique across processes: a per-process token and a counter."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count(1)

    def next(self) -> str:
        pid = os.getpid()
        if pid != self._pid:
            # A forked child must not reuse its parent's ids.
            self._pid = pid
            self._prefix = f"{os.urandom(4).hex()}{pid:x}-"
        return f"{self._prefix}{next(self._counter)}"


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

    @staticmethod
    def _sweep(ledger: _Ledger, now: float) -> None:
        expired = [tid for tid, (_, exp) in ledger.open.items() if exp <= now]
        for tid in expired:
            ledger.reserved -= ledger.open.pop(tid)[0]
        ledger.next_expiry = min((exp for _, exp in ledger.open.values()), default=float("inf"))

    def _admit_locked(
        self,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
    ) -> Ticket:
        wait = 0.0
        bucket: _Bucket | None = None
        take_tokens = 0
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if rate_limit is not None:
            req_cap, req_rate, tok_cap, tok_rate = _capacities(rate_limit)
            now_m = self._clock.monotonic()
            bucket = state.bucket
            if bucket is None:
                bucket = state.bucket = _Bucket(req_cap, tok_cap, now_m)
            short = ""
            if req_rate:
                bucket.req_level = min(
                    req_cap, bucket.req_level + (now_m - bucket.req_t) * req_rate
                )
                bucket.req_t = now_m
                if bucket.req_level < 1.0:
                    wait, short = (1.0 - bucket.req_level) / req_rate, "requests"
            if tok_rate:
                bucket.tok_level = min(
                    tok_cap, bucket.tok_level + (now_m - bucket.tok_t) * tok_rate
                )
                bucket.tok_t = now_m
                # A call larger than the bucket waits for a full bucket instead of forever.
                take_tokens = min(max(tokens, 0), int(tok_cap))
                if bucket.tok_level < take_tokens:
                    tok_wait = (take_tokens - bucket.tok_level) / tok_rate
                    if tok_wait > wait:
                        wait, short = tok_wait, "tokens"
            if wait > wait_s:
                raise RateLimited(key, wait, bucket=short)

        ticket = Ticket(key=key, id=self._ids.next(), rate_limit=rate_limit, budget=budget)
        if budget is not None:
            if reserve_usd is None:
                raise BudgetUnverifiable(key, "no price is known for the model")
            now_t = self._clock.time()
            day = self._days.of(now_t)
            ledger = state.ledger
            if state.day != day or ledger is None:
                ledger = state.ledger = self._ledger_for(key, day)
                state.day = day
            if ledger.next_expiry <= now_t:
                self._sweep(ledger, now_t)
            need = max(to_nanos(reserve_usd), 0)
            cap = self._cap_nanos(budget.daily_usd)
            if ledger.spent + ledger.reserved + need > cap:
                raise BudgetExceeded(
                    key,
                    budget.daily_usd,
                    from_nanos(ledger.spent),
                    from_nanos(ledger.reserved),
                    requested=reserve_usd,
                    day=day,
                )
            ledger.reserved += need
            expiry = now_t + self._ttl
            ledger.open[ticket.id] = (need, expiry)
            if expiry < ledger.next_expiry:
                ledger.next_expiry = expiry
            ticket.reserved_nanos = need
            ticket.reserved_usd = reserve_usd
            ticket.cap_usd = budget.daily_usd
            ticket.spent_nanos = ledger.spent
            ticket.day = day
            ticket.held = ledger
        if bucket is not None:
            bucket.req_level -= 1.0
            bucket.tok_level -= take_tokens
            ticket.tokens = take_tokens
        ticket.wait_s = wait
        return ticket

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
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        with self._lock:
            ticket = self._admit_locked(key, tokens, reserve_usd, rate_limit, budget, wait_s)
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
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        with self._lock:
            ticket = self._admit_locked(key, tokens, reserve_usd, rate_limit, budget, wait_s)
        if ticket.wait_s > 0:
            try:
                await self._clock.asleep(ticket.wait_s)
            except BaseException:
                self.release(ticket)
                raise
        return ticket

    def settle(self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None) -> None:
        """See `Guard.settle`."""
        if ticket.state != "open":
            return
        ticket.state = "settled"
        # Unknown cost: charge the worst case that was reserved for it.
        charge = ticket.reserved_nanos if cost_usd is None else max(to_nanos(cost_usd), 0)
        with self._lock:
            if ticket.day is not None:
                ledger = ticket.held
                if not isinstance(ledger, _Ledger):
                    ledger = self._ledger_for(ticket.key, ticket.day)
                held = ledger.open.pop(ticket.id, None)
                if held is not None:
                    ledger.reserved -= held[0]
                ledger.spent += charge
                ticket.spent_nanos = ledger.spent
            spec = ticket.rate_limit
            if tokens is not None and spec is not None and spec.tokens_per_interval:
                state = self._keys.get(ticket.key)
                bucket = state.bucket if state is not None else None
                if bucket is not None:
                    bucket.tok_level = min(
                        float(spec.tokens_per_interval),
                        bucket.tok_level - (tokens - ticket.tokens),
                    )

    def release(self, ticket: Ticket) -> None:
        """See `Guard.release`."""
        if ticket.state != "open":
            return
        ticket.state = "released"
        if ticket.day is None:
            return
        with self._lock:
            ledger = ticket.held
            if not isinstance(ledger, _Ledger):
                ledger = self._ledger_for(ticket.key, ticket.day)
            held = ledger.open.pop(ticket.id, None)
            if held is not None:
                ledger.reserved -= held[0]

    async def asettle(
        self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None:
        """See `Guard.asettle`."""
        self.settle(ticket, cost_usd=cost_usd, tokens=tokens)

    async def arelease(self, ticket: Ticket) -> None:
        """See `Guard.arelease`."""
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
                self._sweep(found, self._clock.time())
            spent, reserved = (found.spent, found.reserved) if found else (0, 0)
        return LedgerState(
            key=key, day=day, spent_usd=from_nanos(spent), reserved_usd=from_nanos(reserved)
        )

    def close(self) -> None:
        """Nothing to release."""


def make_guard(settings: Settings, *, clock: Clock | None = None) -> Guard:
    """The guard `settings.control.state_backend` names: `memory` or a `redis://` URL.

    Raises:
        ConfigError: The backend is neither, or Redis support is not installed.
    """
    from comptroller.errors import ConfigError

    backend = settings.control.state_backend
    if backend == "memory":
        return MemoryGuard(
            clock=clock,
            timezone=settings.timezone,
            reservation_ttl_s=settings.control.reservation_ttl_s,
        )
    if backend.startswith(("redis://", "rediss://", "unix://")):
        try:
            from comptroller.control._guard_redis import RedisGuard
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                f"control.state_backend is a Redis URL but Redis support is missing ({exc}); "
                "install comptroller[redis]"
            ) from exc
        return RedisGuard(
            backend,
            clock=clock,
            timezone=settings.timezone,
            prefix=settings.control.state_prefix,
            reservation_ttl_s=settings.control.reservation_ttl_s,
        )
    raise ConfigError(
        f"control.state_backend: expected 'memory' or a redis:// URL, got {backend!r}"
    )


ReconcileSource = Callable[[], Iterable[Any] | Mapping[GuardKey, Decimal]]
"""Today's settled spend: rows with `tenant`, `context`, `purpose`, `day`, `spent_usd`
(attributes or keys, e.g. `comptroller.analytics.budget_state(reader)` or the JSON of the
collector's `GET /api/budget-state`), or a mapping GuardKey → spend for today."""

_log = logging.getLogger("comptroller.control.guard")


def budget_state_url_source(
    url: str, *, token: str | None = None, timeout_s: float = 2.0
) -> ReconcileSource:
    """A reconciliation source reading the collector's `GET /api/budget-state`.

    Args:
        url: The full URL, e.g. `http://127.0.0.1:4318/api/budget-state`.
        token: The collector's bearer token, if it requires one.
        timeout_s: Timeout of one request.
    """

    def fetch() -> list[Any]:
        import urllib.request  # only reconciling processes pay for http.client

        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            rows = json.loads(response.read())
        if not isinstance(rows, list):
            raise ValueError(f"{url}: expected a JSON list of budget states")
        return rows

    return fetch


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def spend_by_day(
    rows: Iterable[Any] | Mapping[GuardKey, Decimal], *, today: str
) -> dict[str, dict[GuardKey, Decimal]]:
    """Group budget-state rows into {day: {key: settled spend}} (a mapping is `today`'s)."""
    if isinstance(rows, Mapping):
        return {today: {key: Decimal(str(spent)) for key, spent in rows.items()}}
    out: dict[str, dict[GuardKey, Decimal]] = {}
    for row in rows:
        spent = _field(row, "spent_usd")
        if spent is None:
            continue
        day = _field(row, "day")
        day_text = day.isoformat() if isinstance(day, date) else str(day or today)[:10]
        key = GuardKey(
            str(_field(row, "tenant") or ""),
            str(_field(row, "context") or ""),
            str(_field(row, "purpose") or ""),
        )
        out.setdefault(day_text, {})[key] = Decimal(str(spent))
    return out


class BudgetReconciler:
    """Seeds a guard's ledger from the analytics budget state, once or periodically.

    The ledger's spend is only ever raised (`Guard.seed` takes the larger of the two), so
    reconciliation restores spend the ledger missed (a restarted process, a flushed Redis,
    other processes with in-memory ledgers) and never lets a lagging rollup undo spend.

    Example:
        >>> reconciler = BudgetReconciler(guard, "http://127.0.0.1:4318/api/budget-state")  # doctest: +SKIP
        >>> reconciler.run_once()  # doctest: +SKIP
        >>> reconciler.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        guard: Guard,
        source: ReconcileSource | str,
        *,
        interval_s: float = 60.0,
        token: str | None = None,
        today: Callable[[], str] | None = None,
    ) -> None:
        """Build a reconciler.

        Args:
            guard: The guard whose ledger is seeded.
            source: A callable returning budget-state rows, or the collector's URL.
            interval_s: Period of the background reconciliation.
            token: Bearer token for a URL source.
            today: Today's ISO date in the budget time zone (default: the guard's `today`).
        """
        self._guard = guard
        self._source = (
            budget_state_url_source(source, token=token) if isinstance(source, str) else source
        )
        self._interval = interval_s
        self._today = today or guard.today
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Fetch the budget state and seed the ledger; returns the number of keys seeded.

        Raises:
            Exception: Whatever the source or the guard raised (the background loop logs it).
        """
        seeded = 0
        for day, spend in spend_by_day(self._source(), today=self._today()).items():
            self._guard.seed(spend, day=day)
            seeded += len(spend)
        return seeded

    def start(self) -> None:
        """Reconcile every `interval_s` in a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="comptroller-budget-reconcile", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a failed reconciliation must not kill the loop
                _log.warning("budget reconciliation failed: %s", exc)
            self._stop.wait(self._interval)

    def stop(self) -> None:
        """Stop the background reconciliation."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def make_reconciler(settings: Settings, guard: Guard) -> BudgetReconciler | None:
    """The reconciler of `settings.control.budget_state_url`, or None when none is set."""
    url = settings.control.budget_state_url
    if not url:
        return None
    return BudgetReconciler(guard, url, interval_s=settings.control.reconcile_interval_s)
