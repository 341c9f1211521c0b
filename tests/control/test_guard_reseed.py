"""A Redis that forgets is not trusted: lost budget state is re-seeded from the ledger first.

Real Redis (the `redis_url` fixture, a unique key prefix per test) and a real DuckDB ledger
filled through the analytics rollups, read by the same `analytics.budget_state` the embedded
sink serves. Losing the state is simulated by deleting this test's keys (what a restart
without persistence, a FLUSHDB or an eviction does to them).
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from usage_db import fill, usage_row

from comptroller.analytics import DuckDBReader, budget_state, connect
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    GuardKey,
    RateLimitSpec,
    RedisGuard,
)
from comptroller.control._guard import BudgetReconciler, Ticket, budget_state_url_source
from comptroller.control.testing import FakeClock

pytestmark = pytest.mark.redis

KEY = GuardKey("acme", "ctx", "chat")
CAP = BudgetSpec(daily_usd=Decimal("1.00"))
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DAY = "2026-11-21"


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test-reseed-{uuid.uuid4().hex}"
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
    return FakeClock(start=NOW.timestamp())


@pytest.fixture
def ledger_db(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.duckdb"
    connect(db).close()
    return db


def ledger_source(db: Path) -> Callable[[], list[Any]]:
    """Today's spend per key from the rollups: what the embedded sink serves."""

    def read() -> list[Any]:
        con = connect(db)
        try:
            return list(budget_state(DuckDBReader(con), now=NOW, timezone="UTC"))
        finally:
            con.close()

    return read


def closed_port_source() -> Callable[[], list[Any]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return budget_state_url_source(f"http://127.0.0.1:{port}/api/budget-state", timeout_s=0.5)


def reserve(guard: RedisGuard, usd: str, key: GuardKey = KEY) -> Ticket:
    return guard.admit(key, tokens=0, reserve_usd=Decimal(usd), rate_limit=None, budget=CAP)


def spend(guard: RedisGuard, db: Path, usd: str, key: GuardKey = KEY) -> None:
    """One call: reserved, settled in Redis, and its usage landed in the ledger."""
    ticket = reserve(guard, usd, key)
    guard.settle(ticket, cost_usd=Decimal(usd), tokens=None)
    fill(
        db,
        [
            usage_row(
                NOW - dt.timedelta(minutes=5),
                tenant=key.tenant,
                context=key.context,
                purpose=key.purpose,
                cost=usd,
                cap=str(CAP.daily_usd),
            )
        ],
    )


def forget(raw: redis.Redis, prefix: str, suffix: str = "") -> int:
    """What a restart without persistence (or an eviction) does to this prefix's keys."""
    keys = [k for k in raw.scan_iter(match=f"{prefix}*") if k.decode().endswith(suffix)]
    return int(raw.delete(*keys)) if keys else 0


def new_guard(redis_url: str, prefix: str, clock: FakeClock, **kw: Any) -> RedisGuard:
    return RedisGuard(redis_url, prefix=prefix, clock=clock, background_flush=False, **kw)


def test_a_flushed_redis_is_reseeded_from_the_ledger_and_refuses_at_the_cap(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(redis_url, prefix, clock)
    BudgetReconciler(guard, ledger_source(ledger_db))  # names the ledger to the guard
    for _ in range(4):
        spend(guard, ledger_db, "0.25")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.25")
    guard.flush()

    assert forget(raw, prefix) >= 1

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.25")
    assert caught.value.spent == Decimal("1")
    assert guard.ledger(KEY).spent_usd == Decimal("1")
    guard.close()


async def test_a_flushed_redis_is_reseeded_on_the_async_path_too(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(redis_url, prefix, clock, ledger_source=ledger_source(ledger_db))
    try:
        for _ in range(3):
            spend(guard, ledger_db, "0.30")
        await guard.aflush()
        forget(raw, prefix)

        with pytest.raises(BudgetExceeded) as caught:
            await guard.aadmit(
                KEY, tokens=0, reserve_usd=Decimal("0.2"), rate_limit=None, budget=CAP
            )
        assert caught.value.spent == Decimal("0.9")
        ticket = await guard.aadmit(
            KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=None, budget=CAP
        )
        assert ticket.spent_usd == Decimal("0.9")
    finally:
        await guard.aclose()
    guard.close()


def test_with_no_reachable_ledger_a_lost_state_fails_closed_until_it_answers(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(redis_url, prefix, clock, ledger_source=ledger_source(ledger_db))
    for _ in range(2):
        spend(guard, ledger_db, "0.40")
    guard.flush()
    forget(raw, prefix)
    guard.use_ledger_source(closed_port_source())

    with pytest.raises(BudgetUnverifiable) as caught:
        reserve(guard, "0.10")
    assert "ledger" in caught.value.reason
    # Nothing was booked by the refused call, and nothing marks the state as seeded.
    assert guard.ledger(KEY).reserved_usd == Decimal(0)
    with pytest.raises(BudgetUnverifiable):
        reserve(guard, "0.10")

    guard.use_ledger_source(ledger_source(ledger_db))
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.30")
    assert reserve(guard, "0.20").spent_usd == Decimal("0.8")
    guard.close()


def test_an_empty_redis_needs_the_ledger_before_the_first_budgeted_call(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    guard = new_guard(redis_url, prefix, clock, ledger_source=closed_port_source())
    spec = RateLimitSpec(requests_per_interval=60)

    with pytest.raises(BudgetUnverifiable):
        reserve(guard, "0.10")
    # A rate-limited call without a budget has no spend to restore.
    guard.admit(KEY, tokens=0, reserve_usd=None, rate_limit=spec, budget=None)
    guard.close()


def test_an_evicted_ledger_hash_is_reseeded_and_keeps_the_calls_in_flight(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(redis_url, prefix, clock, ledger_source=ledger_source(ledger_db))
    spend(guard, ledger_db, "0.50")
    in_flight = reserve(guard, "0.30")
    guard.flush()

    # Only the hash holding spend, reservations total and seeding marker is gone; the
    # reservations' sorted set survives.
    assert forget(raw, prefix, suffix=f":b:{DAY}") == 1

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.30")  # 0.50 landed + 0.30 in flight + 0.30 > 1.00
    assert (caught.value.spent, caught.value.reserved) == (Decimal("0.5"), Decimal("0.3"))
    guard.settle(in_flight, cost_usd=Decimal("0.10"), tokens=None)
    guard.flush()
    ledger = guard.ledger(KEY)
    assert (ledger.spent_usd, ledger.reserved_usd) == (Decimal("0.6"), Decimal(0))
    guard.close()


def test_evicted_reservations_stay_counted_until_they_would_have_expired(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(
        redis_url, prefix, clock, ledger_source=ledger_source(ledger_db), reservation_ttl_s=60
    )
    reserve(guard, "0.80")  # in flight, its process about to lose track of it
    assert forget(raw, prefix, suffix=f":r:{DAY}") == 1

    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.30")  # stricter: the lost reservation still counts

    clock.advance(121)  # past every reservation the lost set could have held
    ticket = reserve(guard, "0.30")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.3")
    guard.release(ticket)
    guard.close()


def test_settlements_delivered_after_the_loss_are_not_undone_by_the_reseed(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    guard = new_guard(redis_url, prefix, clock, ledger_source=ledger_source(ledger_db))
    spend(guard, ledger_db, "0.40")
    late = reserve(guard, "0.50")
    guard.flush()
    forget(raw, prefix)
    # The call ends after the loss; its spend reaches Redis before it reaches the ledger.
    guard.settle(late, cost_usd=Decimal("0.50"), tokens=None)
    guard.flush()

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.20")
    # Settled since the loss (0.50) plus landed before it (0.40): counted at least once.
    assert caught.value.spent == Decimal("0.9")
    guard.close()


def test_without_a_ledger_source_redis_is_the_only_record(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    guard = new_guard(redis_url, prefix, clock)

    ticket = reserve(guard, "0.40")

    assert ticket.spent_usd == Decimal(0)
    guard.release(ticket)
    guard.close()


def test_one_ledger_read_seeds_every_key_it_reports(
    redis_url: str, prefix: str, clock: FakeClock, raw: redis.Redis, ledger_db: Path
) -> None:
    reads = [0]
    source = ledger_source(ledger_db)

    def counted() -> list[Any]:
        reads[0] += 1
        return source()

    other = GuardKey("acme", "ctx", "scoring")
    guard = new_guard(redis_url, prefix, clock, ledger_source=counted)
    spend(guard, ledger_db, "0.70")
    spend(guard, ledger_db, "0.90", key=other)
    guard.flush()
    forget(raw, prefix)
    reads[0] = 0

    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.40")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.20", key=other)

    assert reads == [1]
    guard.close()
