"""Limits, budgets and pricing: what each adds to one guarded call.

    uv run python bench/bench_guard.py [--n 20000] [--redis redis://127.0.0.1:6379/0]

1. `Pricer.price` (warm cache) and `Pricer.worst_case` per call, next to
   `genai_prices.calc_price` for the same usage.
2. `MemoryGuard` admit + settle per call, with a rate limit (requests and tokens) and a
   daily budget both on, and with neither.
3. `RedisGuard` (if `--redis` answers): round trips per call (admit + settle) over 1,000
   calls, counted on the real connection (the settle rides in the next admit's script; the
   last one needs a flush), and admit / settle / admit+settle latency on loopback (sync and
   async), next to a bare PING on the same kind of connection (the floor of one round trip
   on this machine at this moment: on a loaded box, p99 is the scheduler's, not the
   guard's).

Every figure is per call, p50 and p99 over `--n` calls, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from comptroller.control import (
    BudgetSpec,
    GuardKey,
    MemoryGuard,
    Pricer,
    RateLimitSpec,
    RedisGuard,
    Usage,
)

KEY = GuardKey("acme-eu", "support", "reasoning")
LIMIT = RateLimitSpec(requests_per_interval=10**9, tokens_per_interval=10**12, interval_s=60)
BUDGET = BudgetSpec(daily_usd=Decimal(10**9))
AT = datetime(2026, 1, 1, 12, tzinfo=UTC)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "p50_us": round(ordered[n // 2] / 1000, 2),
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] / 1000, 2),
        "mean_us": round(sum(ordered) / n / 1000, 2),
    }


def timed(fn: Callable[[], object], n: int) -> dict[str, float]:
    for _ in range(min(n, 1000)):  # warm caches and connections
        fn()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return percentiles(samples)


def bench_pricing(n: int) -> dict[str, Any]:
    import genai_prices

    pricer = Pricer()
    usage = Usage(
        input_tokens=1_200, output_tokens=300, cache_read_tokens=800, reasoning_tokens=100
    )
    genai_usage = genai_prices.Usage(
        input_tokens=1_200, output_tokens=300, cache_read_tokens=800, output_reasoning_tokens=100
    )
    return {
        "pricer.price gpt-4o-mini": timed(
            lambda: pricer.price("openai", "gpt-4o-mini", usage, AT), n
        ),
        "pricer.price claude-opus-4-6 (tiers, dated)": timed(
            lambda: pricer.price("anthropic", "claude-opus-4-6", usage, AT), n
        ),
        "pricer.price deepseek-chat (time of day)": timed(
            lambda: pricer.price("deepseek", "deepseek-chat", usage, AT), n
        ),
        "pricer.worst_case gpt-4o-mini": timed(
            lambda: pricer.worst_case(
                "openai", "gpt-4o-mini", input_tokens=1_200, max_output_tokens=1_024, at=AT
            ),
            n,
        ),
        "genai_prices.calc_price gpt-4o-mini (reference)": timed(
            lambda: genai_prices.calc_price(
                genai_usage, "gpt-4o-mini", provider_id="openai", genai_request_timestamp=AT
            ),
            max(n // 10, 100),
        ),
    }


def bench_memory(n: int) -> dict[str, Any]:
    guard = MemoryGuard()
    reserve, cost = Decimal("0.0123"), Decimal("0.0042")

    def limited() -> None:
        ticket = guard.admit(
            KEY, tokens=1_500, reserve_usd=reserve, rate_limit=LIMIT, budget=BUDGET
        )
        guard.settle(ticket, cost_usd=cost, tokens=1_100)

    def admit_only() -> None:
        guard.admit(KEY, tokens=1_500, reserve_usd=reserve, rate_limit=LIMIT, budget=BUDGET)

    def unlimited() -> None:
        ticket = guard.admit(KEY, tokens=1_500, reserve_usd=None, rate_limit=None, budget=None)
        guard.settle(ticket, cost_usd=cost, tokens=1_100)

    return {
        "memory admit+settle (rate limit + budget)": timed(limited, n),
        "memory admit (rate limit + budget)": timed(admit_only, n),
        "memory admit+settle (no limits)": timed(unlimited, n),
    }


def bench_redis(url: str, n: int) -> dict[str, Any]:
    import redis

    sends = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends[0] += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    prefix = f"bench-{uuid.uuid4().hex}"
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    guard = RedisGuard(url, prefix=prefix, client=client)
    reserve, cost = Decimal("0.0123"), Decimal("0.0042")
    out: dict[str, Any] = {}

    def both() -> None:
        ticket = guard.admit(
            KEY, tokens=1_500, reserve_usd=reserve, rate_limit=LIMIT, budget=BUDGET
        )
        guard.settle(ticket, cost_usd=cost, tokens=1_100)

    try:
        both()  # script loaded, connected
        guard.flush()
        calls = 1000
        before = sends[0]
        for _ in range(calls):
            both()
        during = sends[0] - before
        flushed = guard.flush()
        out["redis round trips per call (admit + settle), steady state"] = during / calls
        out["redis round trips to flush the last settle"] = sends[0] - before - during
        out["redis settles left for the flush"] = flushed

        # The floor on this machine: one bare round trip on the same kind of connection.
        out["redis PING (baseline round trip)"] = timed(client.ping, n)
        out["redis admit+settle (loopback)"] = timed(both, n)

        admit_samples: list[int] = []
        settle_samples: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            ticket = guard.admit(
                KEY, tokens=1_500, reserve_usd=reserve, rate_limit=LIMIT, budget=BUDGET
            )
            t1 = clock()
            guard.settle(ticket, cost_usd=cost, tokens=1_100)
            settle_samples.append(clock() - t1)
            admit_samples.append(t1 - t0)
        out["redis admit carrying the last settle (loopback)"] = percentiles(admit_samples)
        out["redis settle (local, queued)"] = percentiles(settle_samples)
        out["redis async admit+settle (loopback)"] = asyncio.run(_bench_async(url, prefix, n))
    finally:
        guard.close()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    return out


async def _bench_async(url: str, prefix: str, n: int) -> dict[str, float]:
    guard = RedisGuard(url, prefix=prefix)
    reserve, cost = Decimal("0.0123"), Decimal("0.0042")
    samples: list[int] = []
    try:
        for i in range(n + 500):
            t0 = time.perf_counter_ns()
            ticket = await guard.aadmit(
                KEY, tokens=1_500, reserve_usd=reserve, rate_limit=LIMIT, budget=BUDGET
            )
            await guard.asettle(ticket, cost_usd=cost, tokens=1_100)
            if i >= 500:
                samples.append(time.perf_counter_ns() - t0)
    finally:
        await guard.aclose()
        guard.close()
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per measurement")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    results.update(bench_pricing(args.n))
    results.update(bench_memory(args.n))
    if args.redis:
        try:
            results.update(bench_redis(args.redis, max(args.n // 4, 1000)))
        except Exception as exc:  # no Redis here: report and go on
            results["redis"] = f"skipped: {exc}"
    width = max(len(name) for name in results)
    for name, value in results.items():
        if isinstance(value, dict):
            shown = "  ".join(f"{k}={v}" for k, v in value.items())
        else:
            shown = str(value)
        print(f"{name:<{width}}  {shown}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
