"""Concurrency proof: concurrent admits never let settled spend exceed the cap.

The documented overshoot bound (control/_guard.py, control/_guard_redis.py) is
Σ max(0, actual − reserved) plus reservations of calls outliving the reservation TTL. Every
call here costs at most its reservation and finishes well within the TTL, so the bound is
zero: settled spend must never exceed the cap, in memory and across processes on Redis.
On Redis, settlements are queued and ride in the next admit's script; `aclose` delivers the
rest, so `reserved == 0` at the end proves every one of them reached the shared ledger.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    Guard,
    GuardKey,
    MemoryGuard,
    RedisGuard,
)

KEY = GuardKey("acme-eu", "support", "reasoning")
CAP = BudgetSpec(daily_usd=Decimal("1.00"))
RESERVE = Decimal("0.30")  # at most three calls in flight under the cap


def cost_of(rng: random.Random) -> Decimal | None:
    """An actual cost at most the reservation; None = usage missing (charged in full)."""
    roll = rng.random()
    if roll < 0.1:
        return None
    return Decimal(rng.randint(1, 30)) / 100


async def run_calls(guard: Guard, calls: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    charged: list[Decimal] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        for _ in range(rng.randint(0, 30)):  # calls arrive over time
            await asyncio.sleep(0)
        try:
            ticket = await guard.aadmit(
                KEY, tokens=0, reserve_usd=RESERVE, rate_limit=None, budget=CAP
            )
        except BudgetExceeded:
            refused += 1
            return
        for _ in range(rng.randint(1, 5)):  # the provider call: other tasks run meanwhile
            await asyncio.sleep(0)
        if rng.random() < 0.2:
            await guard.arelease(ticket)  # the call failed before billing
            return
        cost = cost_of(rng)
        await guard.asettle(ticket, cost_usd=cost, tokens=None)
        charged.append(RESERVE if cost is None else cost)

    await asyncio.gather(*(one() for _ in range(calls)))
    return {"charged": str(sum(charged, Decimal(0))), "settled": len(charged), "refused": refused}


async def test_200_concurrent_async_calls_never_exceed_the_cap_in_memory() -> None:
    guard = MemoryGuard()

    result = await run_calls(guard, 200, seed=1)

    ledger = guard.ledger(KEY)
    assert ledger.spent_usd == Decimal(str(result["charged"]))
    assert ledger.spent_usd <= CAP.daily_usd
    assert ledger.reserved_usd == 0
    assert 3 <= int(str(result["settled"])) < 200
    assert int(str(result["refused"])) > 0


def test_threads_racing_on_admit_never_exceed_the_cap_in_memory() -> None:
    guard = MemoryGuard()
    barrier = threading.Barrier(8)
    charged: list[Decimal] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(100):
            try:
                ticket = guard.admit(
                    KEY, tokens=0, reserve_usd=RESERVE, rate_limit=None, budget=CAP
                )
            except BudgetExceeded:
                continue
            cost = cost_of(rng)
            guard.settle(ticket, cost_usd=cost, tokens=None)
            with lock:
                charged.append(RESERVE if cost is None else cost)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert guard.ledger(KEY).spent_usd == sum(charged, Decimal(0))
    assert guard.ledger(KEY).spent_usd <= CAP.daily_usd
    assert len(charged) >= 3


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    import redis

    name = f"test-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
async def test_200_concurrent_async_calls_never_exceed_the_cap_on_redis(
    redis_url: str, prefix: str
) -> None:
    guard = RedisGuard(redis_url, prefix=prefix)
    try:
        result = await run_calls(guard, 200, seed=2)
    finally:
        await guard.aclose()

    ledger = guard.ledger(KEY)
    guard.close()
    assert ledger.spent_usd == Decimal(str(result["charged"]))
    assert ledger.spent_usd <= CAP.daily_usd
    assert ledger.reserved_usd == 0
    assert int(str(result["refused"])) > 0


_WORKER = """
import asyncio, json, sys
import redis
from comptroller.control import RedisGuard
from test_budget_concurrency import run_calls

url, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = redis.Redis.from_url(url, socket_timeout=120)
client.rpush(prefix + ":ready", seed)
client.blpop([prefix + ":go"], timeout=60)
client.close()

async def main():
    guard = RedisGuard(url, prefix=prefix)
    try:
        return await run_calls(guard, 50, seed)
    finally:
        await guard.aclose()

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.redis
@pytest.mark.slow  # four interpreters importing the package: seconds on a loaded 2-core box
def test_four_processes_sharing_redis_never_exceed_the_cap(redis_url: str, prefix: str) -> None:
    import redis

    # The workers import this very module for `run_calls`.
    env_path = str(Path(__file__).parent)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, prefix, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_env(), "PYTHONPATH": env_path},
        )
        for seed in range(4)
    ]
    client = redis.Redis.from_url(redis_url, socket_timeout=120)
    try:
        # Start all four at once, once every one has imported and connected.
        for _ in workers:
            assert client.blpop([f"{prefix}:ready"], timeout=60) is not None
        client.rpush(f"{prefix}:go", *range(len(workers)))
        outputs = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        client.close()

    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    charged = sum((Decimal(r["charged"]) for r in results), Decimal(0))
    guard = RedisGuard(redis_url, prefix=prefix)
    ledger = guard.ledger(KEY)
    guard.close()
    assert ledger.spent_usd == charged
    assert ledger.spent_usd <= CAP.daily_usd  # the documented bound is 0 here
    assert ledger.reserved_usd == 0
    assert sum(r["refused"] for r in results) > 0
    assert sum(r["settled"] for r in results) >= 3


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
