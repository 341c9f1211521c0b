from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    Guard,
    GuardKey,
    GuardUnavailable,
    MemoryGuard,
    RateLimited,
    RateLimitSpec,
    RedisGuard,
)
from comptroller.control._guard import BudgetReconciler, Ticket
from comptroller.control.testing import FakeClock

pytestmark = pytest.mark.redis

KEY = GuardKey("acme-eu", "support", "reasoning")
CAP = BudgetSpec(daily_usd=Decimal("1.00"))
NOON_UTC = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one send = one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=NOON_UTC)


@pytest.fixture
def guard(redis_url: str, prefix: str, clock: FakeClock) -> Iterator[RedisGuard]:
    g = RedisGuard(redis_url, prefix=prefix, clock=clock)
    yield g
    g.close()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://:hunter2@127.0.0.1:{port}/0"


def reserve(guard: RedisGuard, usd: str, key: GuardKey = KEY) -> Ticket:
    return guard.admit(key, tokens=0, reserve_usd=Decimal(usd), rate_limit=None, budget=CAP)


def counting_guard(redis_url: str, prefix: str, clock: FakeClock, **kw: Any) -> RedisGuard:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    return RedisGuard(
        redis_url,
        prefix=prefix,
        clock=clock,
        client=redis.Redis(connection_pool=pool),
        background_flush=False,
        **kw,
    )


def test_n_calls_cost_n_round_trips_settles_ride_with_the_next_admit(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    guard = counting_guard(redis_url, prefix, clock)
    spec = RateLimitSpec(requests_per_interval=10_000, tokens_per_interval=10_000_000)
    warm = guard.admit(KEY, tokens=10, reserve_usd=Decimal("0.01"), rate_limit=spec, budget=CAP)
    guard.settle(warm, cost_usd=Decimal("0.01"), tokens=10)  # script loaded, connected
    calls = 50

    before = CountingConnection.sends
    for _ in range(calls):
        ticket = guard.admit(
            KEY, tokens=100, reserve_usd=Decimal("0.01"), rate_limit=spec, budget=CAP
        )
        guard.settle(ticket, cost_usd=Decimal("0.005"), tokens=80)
    during = CountingConnection.sends - before
    assert guard.pending_settlements == 1  # the last call's, for the next admit or the timer
    assert guard.flush() == 1
    after_flush = CountingConnection.sends - before

    assert during == calls
    assert after_flush == calls + 1
    ledger = guard.ledger(KEY)
    assert (ledger.spent_usd, ledger.reserved_usd) == (Decimal("0.26"), Decimal(0))
    guard.close()


def test_settle_is_visible_to_the_caller_at_once(guard: RedisGuard) -> None:
    first = reserve(guard, "0.50")
    guard.settle(first, cost_usd=Decimal("0.20"), tokens=None)

    assert first.state == "settled"
    assert first.spent_usd == Decimal("0.2")
    assert guard.pending_settlements == 1
    assert reserve(guard, "0.10").spent_usd == Decimal("0.2")  # applied before this admit
    assert guard.pending_settlements == 0


def test_pending_settles_are_flushed_by_the_timer_on_the_guard_clock(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis
) -> None:
    guard = counting_guard(redis_url, prefix, clock, settle_flush_s=0.05)
    ticket = reserve(guard, "0.50")
    guard.settle(ticket, cost_usd=Decimal("0.20"), tokens=None)
    ledger_key = f"{prefix}:{{acme-eu|support|reasoning}}:b:2026-01-01"

    clock.advance(0.04)
    assert guard.flush_due() == 0
    assert raw.hget(ledger_key, "reserved") == b"500000000"  # still booked: stricter

    clock.advance(0.02)
    before = CountingConnection.sends
    assert guard.flush_due() == 1
    assert CountingConnection.sends - before == 1
    assert raw.hmget(ledger_key, "spent", "reserved") == [b"200000000", b"0"]
    guard.close()


def test_background_thread_flushes_an_idle_process(
    redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    guard = RedisGuard(redis_url, prefix=prefix, settle_flush_s=0.01)
    ledger_key = f"{prefix}:{{acme-eu|support|reasoning}}:b:{guard.today()}"
    ticket = reserve(guard, "0.50")
    guard.settle(ticket, cost_usd=Decimal("0.20"), tokens=None)

    # Real time here: the thread runs on its own; wait for it, bounded.
    deadline = time.monotonic() + 5
    while guard.pending_settlements and time.monotonic() < deadline:
        time.sleep(0.005)

    assert guard.pending_settlements == 0
    assert raw.hmget(ledger_key, "spent", "reserved") == [b"200000000", b"0"]
    guard.close()


def test_pending_settles_are_flushed_at_close(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis
) -> None:
    guard = counting_guard(redis_url, prefix, clock)
    first, second = reserve(guard, "0.30"), reserve(guard, "0.30")
    guard.settle(first, cost_usd=Decimal("0.10"), tokens=None)
    guard.release(second)
    ledger_key = f"{prefix}:{{acme-eu|support|reasoning}}:b:2026-01-01"
    assert raw.hget(ledger_key, "reserved") == b"600000000"

    before = CountingConnection.sends
    guard.close()

    assert CountingConnection.sends - before == 1  # both in one round trip
    assert raw.hmget(ledger_key, "spent", "reserved") == [b"100000000", b"0"]


async def test_pending_settles_are_flushed_at_async_close(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis
) -> None:
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock, background_flush=False)
    ticket = await guard.aadmit(
        KEY, tokens=0, reserve_usd=Decimal("0.3"), rate_limit=None, budget=CAP
    )
    await guard.asettle(ticket, cost_usd=Decimal("0.1"), tokens=None)

    await guard.aclose()

    ledger_key = f"{prefix}:{{acme-eu|support|reasoning}}:b:2026-01-01"
    assert raw.hmget(ledger_key, "spent", "reserved") == [b"100000000", b"0"]
    guard.close()


def test_a_full_queue_is_flushed_by_the_settle_that_fills_it(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    guard = counting_guard(redis_url, prefix, clock, max_pending_settles=3)
    tickets = [reserve(guard, "0.10") for _ in range(3)]
    guard.settle(tickets[0], cost_usd=Decimal("0.01"), tokens=None)
    guard.settle(tickets[1], cost_usd=Decimal("0.01"), tokens=None)
    before = CountingConnection.sends

    guard.settle(tickets[2], cost_usd=Decimal("0.01"), tokens=None)

    assert CountingConnection.sends - before == 1
    assert guard.pending_settlements == 0
    guard.close()


def test_crash_with_pending_settles_keeps_reservations_booked_until_they_expire(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    crashed = counting_guard(redis_url, prefix, clock, reservation_ttl_s=60)
    tickets = [reserve(crashed, "0.30") for _ in range(3)]
    for ticket in tickets:
        crashed.settle(ticket, cost_usd=Decimal("0.05"), tokens=None)
    assert crashed.pending_settlements == 3
    # The process dies: its queue is lost (no close, no flush).
    crashed._pending.clear()
    survivor = RedisGuard(
        redis_url, prefix=prefix, clock=clock, reservation_ttl_s=60, background_flush=False
    )

    # Stricter, never looser: the worst case stays booked although the calls cost less.
    assert survivor.ledger(KEY).reserved_usd == Decimal("0.9")
    with pytest.raises(BudgetExceeded):
        reserve(survivor, "0.20")

    clock.advance(61)

    reserve(survivor, "0.20")
    assert survivor.ledger(KEY).reserved_usd == Decimal("0.2")
    survivor.close()
    crashed.close()


def test_budget_exceeded_carries_key_cap_spent_and_reserved(guard: RedisGuard) -> None:
    guard.settle(reserve(guard, "0.50"), cost_usd=Decimal("0.25"), tokens=None)
    reserve(guard, "0.60")

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.20")

    err = caught.value
    assert (err.key, err.cap, err.spent, err.reserved, err.requested) == (
        KEY,
        Decimal("1.00"),
        Decimal("0.25"),
        Decimal("0.6"),
        Decimal("0.20"),
    )
    assert "$0.25" in str(err)


def test_exhausting_one_context_leaves_another_untouched(guard: RedisGuard) -> None:
    context_a = GuardKey("acme-eu", "platform", "reasoning")
    context_b = GuardKey("acme-eu", "worlds", "reasoning")
    guard.settle(reserve(guard, "1.00", key=context_a), cost_usd=Decimal("1.00"), tokens=None)
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.01", key=context_a)

    ticket = reserve(guard, "1.00", key=context_b)

    assert ticket.spent_usd == Decimal(0)


def test_keys_with_separator_characters_do_not_collide(guard: RedisGuard) -> None:
    guard.settle(
        reserve(guard, "1.00", key=GuardKey("a|b", "c", "d")), cost_usd=Decimal(1), tokens=None
    )

    reserve(guard, "1.00", key=GuardKey("a", "b|c", "d"))


def test_keys_are_namespaced_by_prefix_and_day_keys_expire(
    guard: RedisGuard, prefix: str, raw: redis.Redis
) -> None:
    spec = RateLimitSpec(requests_per_interval=60)
    guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    keys = sorted(k.decode() for k in raw.scan_iter(match="*acme-eu*"))
    mine = [k for k in keys if k.startswith(prefix + ":")]
    assert len(mine) == 3
    assert any(k.endswith(":b:2026-01-01") for k in mine)
    for key in mine:
        ttl = raw.pttl(key)
        assert 0 < ttl <= 3 * 86_400 * 1000, key


def test_other_prefix_shares_nothing(
    redis_url: str, guard: RedisGuard, clock: FakeClock, raw: redis.Redis
) -> None:
    guard.settle(reserve(guard, "1.00"), cost_usd=Decimal(1), tokens=None)
    other_prefix = f"test-{uuid.uuid4().hex}"
    other = RedisGuard(redis_url, prefix=other_prefix, clock=clock)
    try:
        t = reserve(other, "1.00")
        other.release(t)
    finally:
        other.close()
        for key in raw.scan_iter(match=f"{other_prefix}*"):
            raw.delete(key)


def test_day_rolls_over_at_local_midnight(redis_url: str, prefix: str) -> None:
    clock = FakeClock(start=datetime(2026, 1, 1, 10, 30, tzinfo=UTC).timestamp())
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock, timezone="Pacific/Auckland")
    guard.settle(reserve(guard, "1.00"), cost_usd=Decimal(1), tokens=None)
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.01")

    clock.advance(3600)

    assert reserve(guard, "1.00").day == "2026-01-02"
    assert guard.ledger(KEY, day="2026-01-01").spent_usd == Decimal(1)
    guard.close()


def test_release_frees_the_reservation(guard: RedisGuard) -> None:
    ticket = reserve(guard, "0.80")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.80")

    guard.release(ticket)

    assert guard.ledger(KEY).reserved_usd == Decimal(0)
    assert guard.ledger(KEY).spent_usd == Decimal(0)
    reserve(guard, "0.80")


def test_settle_without_cost_charges_the_reservation(guard: RedisGuard) -> None:
    ticket = reserve(guard, "0.30")

    guard.settle(ticket, cost_usd=None, tokens=None)

    assert guard.ledger(KEY).spent_usd == Decimal("0.3")
    assert ticket.spent_usd == Decimal("0.3")


def test_reservation_of_a_dead_process_expires_after_its_ttl(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock, reservation_ttl_s=60)
    reserve(guard, "1.00")  # never settled
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.10")

    clock.advance(61)

    reserve(guard, "0.10")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")
    guard.close()


def test_seed_raises_spend_never_lowers_it(guard: RedisGuard) -> None:
    guard.settle(reserve(guard, "0.50"), cost_usd=Decimal("0.30"), tokens=None)

    guard.seed({KEY: Decimal("0.70"), GuardKey("x", "y", "z"): Decimal("0.2")})
    guard.seed({KEY: Decimal("0.10")})

    assert guard.ledger(KEY).spent_usd == Decimal("0.7")
    assert guard.ledger(GuardKey("x", "y", "z")).spent_usd == Decimal("0.2")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.40")


def test_request_bucket_burst_then_rate_limited(guard: RedisGuard, clock: FakeClock) -> None:
    spec = RateLimitSpec(requests_per_interval=60, burst=3)
    for _ in range(3):
        guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)

    with pytest.raises(RateLimited) as caught:
        guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)

    assert caught.value.retry_after_s == pytest.approx(1.0)
    clock.advance(1.0)
    guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)


def test_bounded_wait_and_token_correction(guard: RedisGuard, clock: FakeClock) -> None:
    spec = RateLimitSpec(tokens_per_interval=6_000)  # 100 tokens/s
    first = guard.admit(KEY, tokens=5_000, reserve_usd=None, rate_limit=spec, budget=None)
    with pytest.raises(RateLimited) as caught:
        guard.admit(KEY, tokens=3_000, reserve_usd=None, rate_limit=spec, budget=None)
    assert caught.value.bucket == "tokens"
    assert clock.sleeps == []

    waited = guard.admit(
        KEY, tokens=2_000, reserve_usd=None, rate_limit=spec, budget=None, wait_s=20
    )
    assert waited.wait_s == pytest.approx(10.0)
    assert clock.sleeps == [pytest.approx(10.0)]

    # 5,000 estimated, 500 used: 4,500 come back and a 4,000-token call fits at once.
    guard.settle(first, cost_usd=None, tokens=500)
    assert (
        guard.admit(KEY, tokens=4_000, reserve_usd=None, rate_limit=spec, budget=None).wait_s == 0
    )


def test_queued_token_corrections_apply_in_order_as_in_memory(
    guard: RedisGuard, clock: FakeClock
) -> None:
    memory = MemoryGuard(clock=clock)
    spec = RateLimitSpec(tokens_per_interval=6_000)  # 100 tokens/s, capacity 6,000
    outcomes: list[list[object]] = [[], []]
    tickets: list[list[Ticket]] = [[], []]
    for i, g in enumerate((memory, guard)):
        tickets[i].append(
            g.admit(KEY, tokens=3_000, reserve_usd=None, rate_limit=spec, budget=None)
        )
    clock.advance(60)  # refills the bucket: the first correction must clamp at capacity
    for i, g in enumerate((memory, guard)):
        tickets[i].append(
            g.admit(KEY, tokens=1_000, reserve_usd=None, rate_limit=spec, budget=None)
        )
        g.settle(tickets[i][0], cost_usd=None, tokens=0)  # gives 3,000 back: clamps at 6,000
        g.settle(tickets[i][1], cost_usd=None, tokens=2_000)  # takes 1,000 more
        try:
            g.admit(KEY, tokens=5_500, reserve_usd=None, rate_limit=spec, budget=None)
        except RateLimited as err:
            outcomes[i].append(round(err.retry_after_s, 6))
        else:
            outcomes[i].append("admitted")

    assert outcomes[0] == outcomes[1] == [5.0]


def test_rate_limited_admit_books_no_reservation(guard: RedisGuard) -> None:
    spec = RateLimitSpec(requests_per_interval=60, burst=1)
    guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    with pytest.raises(RateLimited):
        guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")


def test_unreachable_redis_fails_closed_for_a_budgeted_call(closed_port_url: str) -> None:
    guard = RedisGuard(closed_port_url)

    with pytest.raises(BudgetUnverifiable) as caught:
        guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.01"), rate_limit=None, budget=CAP)

    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    guard.close()


def test_unreachable_redis_fails_closed_for_a_rate_limited_call(closed_port_url: str) -> None:
    guard = RedisGuard(closed_port_url)
    spec = RateLimitSpec(requests_per_interval=60)

    with pytest.raises(GuardUnavailable):
        guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)
    guard.close()


async def test_unreachable_redis_fails_closed_async(closed_port_url: str) -> None:
    guard = RedisGuard(closed_port_url)

    with pytest.raises(BudgetUnverifiable):
        await guard.aadmit(KEY, tokens=0, reserve_usd=Decimal("0.01"), rate_limit=None, budget=CAP)
    await guard.aclose()


def test_unlimited_call_needs_no_redis(closed_port_url: str) -> None:
    guard = RedisGuard(closed_port_url)

    ticket = guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=None, budget=None)
    guard.settle(ticket, cost_usd=Decimal("0.1"), tokens=None)

    assert ticket.state == "settled"


def test_settles_survive_a_redis_outage_and_ride_with_the_next_admit(
    redis_url: str, prefix: str, clock: FakeClock, closed_port_url: str
) -> None:
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock, background_flush=False)
    ticket = reserve(guard, "0.50")
    guard.settle(ticket, cost_usd=Decimal("0.20"), tokens=None)
    # Point the guard at a dead server, as if Redis went away after the call.
    alive = guard._conns
    dead = RedisGuard(closed_port_url, socket_timeout_s=0.2)
    guard._conns = dead._connections()

    with pytest.raises(BudgetUnverifiable):
        reserve(guard, "0.10")  # fails closed; the settlement stays queued
    guard.close()  # the flush at close fails too: logged, kept

    assert guard.pending_settlements == 1
    guard._conns = alive
    assert reserve(guard, "0.10").spent_usd == Decimal("0.2")  # replayed first
    assert guard.pending_settlements == 0
    assert guard.ledger(KEY).spent_usd == Decimal("0.2")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")
    dead.close()
    guard.close()


async def test_async_admit_settle_and_wait(redis_url: str, prefix: str, clock: FakeClock) -> None:
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock)
    spec = RateLimitSpec(requests_per_interval=60, burst=1)
    try:
        await guard.aadmit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)
        ticket = await guard.aadmit(
            KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP, wait_s=5
        )
        await guard.asettle(ticket, cost_usd=Decimal("0.05"), tokens=0)
    finally:
        await guard.aclose()

    assert ticket.wait_s == pytest.approx(1.0)
    assert guard.ledger(KEY).spent_usd == Decimal("0.05")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")
    guard.close()


class _StallingClock(FakeClock):
    """A clock whose async sleep never ends (until the task is cancelled)."""

    def __init__(self, start: float) -> None:
        super().__init__(start=start)
        self.sleeping = asyncio.Event()

    async def asleep(self, seconds: float) -> None:
        self.sleeping.set()
        await asyncio.Event().wait()


async def test_cancelled_async_wait_releases_the_reservation(redis_url: str, prefix: str) -> None:
    clock = _StallingClock(start=NOON_UTC)
    guard = RedisGuard(redis_url, prefix=prefix, clock=clock)
    spec = RateLimitSpec(requests_per_interval=60, burst=1)
    try:
        await guard.aadmit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)
        waiting = asyncio.create_task(
            guard.aadmit(
                KEY, tokens=0, reserve_usd=Decimal("0.5"), rate_limit=spec, budget=CAP, wait_s=5
            )
        )
        await clock.sleeping.wait()
        assert guard.ledger(KEY).reserved_usd == Decimal("0.6")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await guard.aclose()

    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")
    guard.close()


def test_unbounded_wait_is_accepted(guard: RedisGuard, clock: FakeClock) -> None:
    spec = RateLimitSpec(requests_per_interval=60, burst=1)
    guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)

    ticket = guard.admit(
        KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None, wait_s=float("inf")
    )

    assert ticket.wait_s == pytest.approx(1.0)


class CountingAsyncConnection(redis.asyncio.Connection):
    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingAsyncConnection.sends += 1
        await super().send_packed_command(command, check_health)


async def test_async_calls_cost_one_round_trip_each(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    pool = redis.asyncio.ConnectionPool.from_url(
        redis_url, connection_class=CountingAsyncConnection
    )
    aclient = redis.asyncio.Redis.from_pool(pool)
    guard = RedisGuard(
        redis_url, prefix=prefix, clock=clock, aclient=aclient, background_flush=False
    )
    calls = 20
    try:
        warm = await guard.aadmit(
            KEY, tokens=0, reserve_usd=Decimal("0.01"), rate_limit=None, budget=CAP
        )
        await guard.asettle(warm, cost_usd=Decimal("0.01"), tokens=None)

        before = CountingAsyncConnection.sends
        for _ in range(calls):
            ticket = await guard.aadmit(
                KEY, tokens=0, reserve_usd=Decimal("0.01"), rate_limit=None, budget=CAP
            )
            await guard.asettle(ticket, cost_usd=Decimal("0.01"), tokens=None)
        during = CountingAsyncConnection.sends - before
        assert await guard.aflush() == 1
        after_flush = CountingAsyncConnection.sends - before
    finally:
        await guard.aclose()

    assert during == calls
    assert after_flush == calls + 1
    assert guard.ledger(KEY).spent_usd == Decimal("0.21")
    guard.close()


def test_guard_serves_successive_event_loops(guard: RedisGuard) -> None:
    async def one_call() -> None:
        ticket = await guard.aadmit(
            KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=None, budget=CAP
        )
        await guard.asettle(ticket, cost_usd=Decimal("0.1"), tokens=None)
        await guard.aclose()  # an async client closes on the loop that opened it

    asyncio.run(one_call())
    asyncio.run(one_call())

    assert guard.ledger(KEY).spent_usd == Decimal("0.2")


def test_reconciler_seeds_the_shared_ledger(guard: RedisGuard) -> None:
    rows = [
        {"tenant": KEY.tenant, "context": KEY.context, "purpose": KEY.purpose,
         "day": "2026-01-01", "spent_usd": "0.9"},
    ]  # fmt: skip

    BudgetReconciler(guard, lambda: rows).run_once()

    assert guard.ledger(KEY).spent_usd == Decimal("0.9")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.2")


# --- model-based: Redis decides exactly as memory does ---------------------------------------


class SameAsMemory(RuleBasedStateMachine):
    """The same random operations on both backends give the same decisions and ledgers."""

    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=NOON_UTC)
        self.prefix = f"test-{uuid.uuid4().hex}"
        self.memory = MemoryGuard(clock=self.clock, reservation_ttl_s=600)
        self.redis = RedisGuard(
            self.redis_url, prefix=self.prefix, clock=self.clock, reservation_ttl_s=600
        )
        self.open: list[tuple[Ticket, Ticket]] = []
        self.spec = RateLimitSpec(requests_per_interval=60, burst=3)  # one per second

    def teardown(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(match=f"{self.prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        self.redis.close()

    @rule(cents=st.integers(1, 60), limited=st.booleans())
    def admit(self, cents: int, limited: bool) -> None:
        spec = self.spec if limited else None
        outcomes: list[object] = []
        tickets: list[Ticket] = []
        for guard in (self.memory, self.redis):
            try:
                ticket = guard.admit(
                    KEY, tokens=0, reserve_usd=Decimal(cents) / 100, rate_limit=spec, budget=CAP
                )
            except (BudgetExceeded, RateLimited) as err:
                outcomes.append(type(err))
            else:
                outcomes.append(ticket.spent_usd)
                tickets.append(ticket)
        assert outcomes[0] == outcomes[1]
        if len(tickets) == 2:
            self.open.append((tickets[0], tickets[1]))

    @precondition(lambda self: self.open)
    @rule(index=st.integers(0, 10), share=st.integers(0, 100), release=st.booleans())
    def finish(self, index: int, share: int, release: bool) -> None:
        pair = self.open.pop(index % len(self.open))
        guards: tuple[Guard, Guard] = (self.memory, self.redis)
        for guard, ticket in zip(guards, pair, strict=True):
            if release:
                guard.release(ticket)
            else:
                guard.settle(ticket, cost_usd=ticket.reserved_usd * share / 100, tokens=None)

    @rule(seconds=st.sampled_from([1, 2, 700, 6 * 3600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def ledgers_agree(self) -> None:
        assert self.memory.ledger(KEY) == self.redis.ledger(KEY)


@pytest.mark.redis
def test_redis_decides_exactly_as_memory(redis_url: str) -> None:
    SameAsMemory.redis_url = redis_url
    run_state_machine_as_test(
        SameAsMemory, settings=settings(max_examples=25, stateful_step_count=30, deadline=None)
    )
