"""Overhead of every way of calling (invoke, ainvoke, stream, astream) over the bare LangChain
call of the same model, in one run.

Both sides call one fake chat model instance (a constant answer with usage; a stream of
`--chunks` chunks whose last carries the usage); the guarded side has a rate limit, a daily
budget (in-memory guard: admit + settle), pricing and spans + a usage row per call. Calls
alternate bare / guarded so that drift hits both alike; each figure is the difference of the
percentiles. Streams report the time to the first chunk and the whole stream.

Run:  uv run python bench/bench_call_paths.py [--calls 5000] [--chunks 20] [--long-chunks 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

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

_META = {"model_name": "gpt-4o-mini", "finish_reason": "stop", "id": "r1"}
_USAGE = {"input_tokens": 120, "output_tokens": 20, "total_tokens": 140}


class BenchModel(BaseChatModel):
    """The cheapest honest chat model: a constant answer that reports its usage."""

    chunks: int = 20

    @property
    def _llm_type(self) -> str:
        return "bench"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        message = AIMessage(content="ok", response_metadata=_META, usage_metadata=_USAGE)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return self._generate(messages)

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Iterator[ChatGenerationChunk]:
        for _ in range(self.chunks - 1):
            yield ChatGenerationChunk(message=AIMessageChunk(content="tok "))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", response_metadata=_META, usage_metadata=_USAGE, chunk_position="last"
            )
        )

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages):
            yield chunk


def build(inner: BaseChatModel) -> Any:
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o-mini"),
        rate_limit=RateLimitSpec(requests_per_interval=10**9, tokens_per_interval=10**12),
        budget=BudgetSpec(daily_usd=Decimal(10**9)),
    )
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": prof}),
        guard=MemoryGuard(),
        sink=NullSink(),
        providers={"openai": lambda spec: inner},
    )
    return plane.chat_model("reasoning", domain="acme-eu", org="acme", context="support")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PROMPT = "Summarise the ticket in one line."


def timed_sync(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1000


# The clock starts before `.stream()` is called: what a caller waits for runs from the call to
# the first chunk, and a wrapper may do part of its work in `.stream()` itself (the previous
# main read its private attributes there, ~5 µs that a clock started after it did not see).


def stream_times(make: Callable[[], Iterator[Any]]) -> tuple[float, float]:
    t0 = time.perf_counter_ns()
    first = 0
    for _chunk in make():
        if not first:
            first = time.perf_counter_ns()
    end = time.perf_counter_ns()
    return (first - t0) / 1000, (end - t0) / 1000


async def astream_times(make: Callable[[], AsyncIterator[Any]]) -> tuple[float, float]:
    t0 = time.perf_counter_ns()
    first = 0
    async for _chunk in make():
        if not first:
            first = time.perf_counter_ns()
    end = time.perf_counter_ns()
    return (first - t0) / 1000, (end - t0) / 1000


def summary(bare: list[float], guarded: list[float]) -> dict[str, float]:
    return {
        "bare_p50": round(pct(bare, 0.5), 1),
        "guarded_p50": round(pct(guarded, 0.5), 1),
        "added_p50": round(pct(guarded, 0.5) - pct(bare, 0.5), 1),
        "added_p99": round(pct(guarded, 0.99) - pct(bare, 0.99), 1),
    }


async def measure(calls: int, chunks: int, long_chunks: int) -> dict[str, dict[str, float]]:
    inner = BenchModel(chunks=chunks)
    model = build(inner)
    long_inner = BenchModel(chunks=long_chunks)
    long_model = build(long_inner)
    for _ in range(500):  # warm caches: profile, price, model instance, SDK paths
        inner.invoke(PROMPT)
        model.invoke(PROMPT)
        list(model.stream(PROMPT))
        await model.ainvoke(PROMPT)
    out: dict[str, dict[str, float]] = {}
    series: dict[str, tuple[list[float], list[float]]] = {
        name: ([], [])
        for name in (
            "invoke",
            "ainvoke",
            "stream_first",
            "stream_total",
            "astream_first",
            "astream_total",
        )
    }
    gc.collect()
    for _ in range(calls):
        series["invoke"][0].append(timed_sync(lambda: inner.invoke(PROMPT)))
        series["invoke"][1].append(timed_sync(lambda: model.invoke(PROMPT)))
        t0 = time.perf_counter_ns()
        await inner.ainvoke(PROMPT)
        t1 = time.perf_counter_ns()
        await model.ainvoke(PROMPT)
        t2 = time.perf_counter_ns()
        series["ainvoke"][0].append((t1 - t0) / 1000)
        series["ainvoke"][1].append((t2 - t1) / 1000)
        for side, m in ((0, inner), (1, model)):
            first, total = stream_times(lambda m=m: m.stream(PROMPT))
            series["stream_first"][side].append(first)
            series["stream_total"][side].append(total)
            first, total = await astream_times(lambda m=m: m.astream(PROMPT))
            series["astream_first"][side].append(first)
            series["astream_total"][side].append(total)
    for name, (bare, guarded) in series.items():
        out[name] = summary(bare, guarded)
    long_bare: list[float] = []
    long_guarded: list[float] = []
    for _ in range(max(20, calls // 100)):
        long_bare.append(stream_times(lambda: long_inner.stream(PROMPT))[1])
        long_guarded.append(stream_times(lambda: long_model.stream(PROMPT))[1])
    out[f"stream_{long_chunks}_chunks_total"] = summary(long_bare, long_guarded)
    out[f"stream_{long_chunks}_chunks_total"]["ratio_p50"] = round(
        pct(long_guarded, 0.5) / pct(long_bare, 0.5), 2
    )
    return out


class Instant:
    """A "model" that answers at once, without LangChain's machinery: what is left of a
    guarded call's time is the control plane's own."""

    answer = AIMessage(content="ok", response_metadata=_META, usage_metadata=_USAGE)

    def invoke(self, input: Any, config: Any = None, **kw: Any) -> AIMessage:
        return self.answer


def pure_overhead(calls: int) -> float:
    """Mean µs of a guarded `invoke` whose provider answers instantly (GC off)."""
    model = build(Instant())  # type: ignore[arg-type]
    for _ in range(2000):
        model.invoke(PROMPT)
    gc.collect()
    gc.disable()
    try:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                model.invoke(PROMPT)
            best = min(best, (time.perf_counter_ns() - t0) / calls / 1000)
        return round(best, 1)
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--long-chunks", type=int, default=1000)
    args = parser.parse_args()
    result: dict[str, Any] = asyncio.run(measure(args.calls, args.chunks, args.long_chunks))
    result["pure_overhead_us (instant provider, best of 5 means)"] = pure_overhead(args.calls)
    print(f"µs, {args.calls} calls of each path, alternating bare / guarded")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
