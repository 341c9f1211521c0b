"""Overhead of the guarded call over a bare LangChain fake-model invoke, in one run.

Both sides call the same fake chat model instance (a constant answer with usage); the
guarded side has everything on: parent + attempt spans through batch processors, one usage
row (log record), a token-bucket rate limit and a daily budget (in-memory guard: admit +
settle), and pricing from genai-prices. Calls alternate bare / guarded so that drift hits
both alike; the figure is the difference of the percentiles.

Run:  uv run python bench/bench_overhead.py [--calls 20000] [--breakdown] [--redis URL] [--no-gc]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from decimal import Decimal
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    NullSink,
    RateLimitSpec,
    ResolvedProfile,
    StaticProfiles,
)


class BenchModel(BaseChatModel):
    """The cheapest honest chat model: a constant answer that reports its usage."""

    @property
    def _llm_type(self) -> str:
        return "bench"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        message = AIMessage(
            content="ok",
            response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop", "id": "r1"},
            usage_metadata={"input_tokens": 120, "output_tokens": 20, "total_tokens": 140},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build(guard: Any, inner: BaseChatModel) -> ControlPlane:
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o-mini"),
        rate_limit=RateLimitSpec(requests_per_interval=10**9, tokens_per_interval=10**12),
        budget=BudgetSpec(daily_usd=Decimal(10**9)),
    )
    return ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": prof}),
        guard=guard,
        sink=NullSink(),
        providers={"openai": lambda spec: inner},
    )


def measure(calls: int, guard: Any, *, collect: bool = True) -> dict[str, float]:
    inner = BenchModel()
    plane = build(guard, inner)
    model = plane.chat_model("reasoning", domain="acme-eu", org="acme", context="support")
    prompt = "Summarise the ticket in one line."
    for _ in range(2000):  # warm caches: profile, price, model instance, SDK paths
        inner.invoke(prompt)
        model.invoke(prompt)
    bare: list[float] = []
    guarded: list[float] = []
    clock = time.perf_counter_ns
    gc.collect()
    if not collect:
        gc.disable()
    try:
        for i in range(calls):
            t0 = clock()
            inner.invoke(prompt)
            t1 = clock()
            model.invoke(prompt)
            t2 = clock()
            bare.append((t1 - t0) / 1000)
            guarded.append((t2 - t1) / 1000)
            if not collect and i % 1000 == 999:
                gc.collect()  # outside the timed region
    finally:
        gc.enable()
    plane.shutdown()
    return {
        "bare_p50": percentile(bare, 0.5),
        "bare_p99": percentile(bare, 0.99),
        "guarded_p50": percentile(guarded, 0.5),
        "guarded_p99": percentile(guarded, 0.99),
        "added_p50": percentile(guarded, 0.5) - percentile(bare, 0.5),
        "added_p99": percentile(guarded, 0.99) - percentile(bare, 0.99),
        "added_mean": statistics.fmean(guarded) - statistics.fmean(bare),
    }


def measure_redis(url: str, calls: int, *, collect: bool) -> dict[str, float | str]:
    """`measure` with the Redis guard, counting round trips on the real connections."""
    import uuid

    import redis

    from comptroller.control._guard import RedisGuard

    sends = [0]

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends[0] += 1
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    )
    guard = RedisGuard(url, prefix=prefix, client=client)
    try:
        result: dict[str, float | str] = dict(measure(calls, guard, collect=collect))
        # measure() makes 2,000 warm-up calls and `calls` timed ones; its shutdown() closed
        # the guard, which flushed the last settle. The first call also loaded the script.
        total = calls + 2000
        result["round trips"] = f"{sends[0]} for {total} calls ({sends[0] / total:.4f} per call)"
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    return result


def breakdown(calls: int) -> dict[str, float]:
    """Median cost of each part of the guarded path, measured alone."""
    from datetime import UTC, datetime

    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    from comptroller.control import GuardKey, Pricer, Usage
    from comptroller.control._telemetry import Telemetry

    tel = Telemetry(NullSink())
    tracer, logger = tel.tracer, tel.logger
    attrs = {f"gen_ai.attr{i}": i for i in range(16)}
    guard = MemoryGuard()
    key = GuardKey("acme-eu", "support", "reasoning")
    rl = RateLimitSpec(requests_per_interval=10**9, tokens_per_interval=10**12)
    budget = BudgetSpec(daily_usd=Decimal(10**9))
    pricer = Pricer()
    at = datetime.now(UTC)
    usage = Usage(input_tokens=120, output_tokens=20)
    pricer.price("openai", "gpt-4o-mini", usage, at)

    def spans() -> None:
        parent = tracer.start_span("comptroller.call reasoning", attributes=attrs)
        ctx = trace.set_span_in_context(parent)
        child = tracer.start_span(
            "chat gpt-4o-mini", context=ctx, kind=SpanKind.CLIENT, attributes=attrs
        )
        child.set_attributes(attrs)
        child.end()
        parent.end()

    def log() -> None:
        logger.emit(event_name="comptroller.usage", attributes={**attrs, **attrs})

    def guard_step() -> None:
        ticket = guard.admit(
            key, tokens=200, reserve_usd=Decimal("0.001"), rate_limit=rl, budget=budget
        )
        guard.settle(ticket, cost_usd=Decimal("0.0001"), tokens=140)

    def price() -> None:
        pricer.worst_case("openai", "gpt-4o-mini", input_tokens=120, max_output_tokens=4096, at=at)
        pricer.price("openai", "gpt-4o-mini", usage, at)

    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    from comptroller.control._telemetry import new_span_id

    ok = Status(StatusCode.OK)

    def fast_spans() -> None:
        call = SpanContext(1 << 70, new_span_id(), False, TraceFlags(1))
        attempt = SpanContext(1 << 70, new_span_id(), False, TraceFlags(1))
        now = time.time_ns()
        tel.export_span(
            "chat gpt-4o-mini", SpanKind.CLIENT, attempt, call, dict(attrs), now, now, ok
        )
        tel.export_span(
            "comptroller.call reasoning", SpanKind.INTERNAL, call, None, dict(attrs), now, now, ok
        )

    def fast_row() -> None:
        ctx = SpanContext(1 << 70, new_span_id(), False, TraceFlags(1))
        tel.export_record("comptroller.usage", {**attrs, **attrs}, time.time_ns(), ctx)

    out = {}
    for name, fn in (
        ("2 spans, SDK API (comparison)", spans),
        ("usage row, SDK API (comparison)", log),
        ("2 spans, comptroller fast path", fast_spans),
        ("usage row, comptroller fast path", fast_row),
        ("guard admit+settle (memory)", guard_step),
        ("pricing (worst case + price)", price),
    ):
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1000)
        out[name] = percentile(samples, 0.5)
    tel.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument(
        "--redis", default=None, help="also measure with the Redis guard at this URL"
    )
    parser.add_argument(
        "--no-gc", action="store_true", help="collect garbage outside the timed calls only"
    )
    args = parser.parse_args()

    result = measure(args.calls, MemoryGuard(), collect=not args.no_gc)
    gc_note = "GC outside timed calls" if args.no_gc else "GC on"
    print(f"in-memory guard, {args.calls} calls each, {gc_note} (µs):")
    for name, value in result.items():
        print(f"  {name:12s} {value:8.1f}")
    if args.redis:
        print(f"redis guard at {args.redis}, {args.calls} calls each (µs):")
        for name, value in measure_redis(args.redis, args.calls, collect=not args.no_gc).items():
            print(f"  {name:12s} {value:8.1f}" if isinstance(value, float) else f"  {name} {value}")
    if args.breakdown:
        print("breakdown (median µs of each part alone):")
        for name, value in breakdown(args.calls).items():
            print(f"  {name:30s} {value:8.1f}")


if __name__ == "__main__":
    main()
