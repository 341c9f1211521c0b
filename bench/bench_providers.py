"""What the control plane adds to each provider's call over real HTTP, in one run.

For every way in that issue 17 added — Anthropic and Gemini chat, embeddings, a pydantic-ai
`Agent` — the same request goes to the same local server (`FakeAnthropicServer`,
`FakeGeminiServer`, `FakeOpenAIServer`: real HTTP, the real SDKs) once bare and once guarded,
alternating, so that the shared machine's drift hits both sides alike. Bare is what a user
would write without comptroller: the LangChain model built by the same factory with the same
arguments, `OpenAIEmbeddings`, or pydantic-ai's own `OpenAIChatModel`. Guarded has an
in-memory guard with a rate limit and a daily budget (admit + settle), pricing, spans and a
usage row per call (exported to a null sink: the export threads still build them).

The servers run in this process (uvicorn in a thread), so both sides also pay for the
server's share of the GIL; the difference of the percentiles is the control plane's.

Run:  uv run python bench/bench_providers.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

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
from comptroller.control._providers import (
    ModelSpec,
    anthropic_chat_model,
    google_chat_model,
    openai_chat_model,
)
from comptroller.control.testing import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

PROMPT = "Summarise the ticket in one line."
TEXTS = ["refund policy for damaged goods", "shipping times to the EU", "warranty terms"]
KEY = "bench-key"


def plane_for(purpose: str, model: str, base_url: str) -> ControlPlane:
    ref = ModelRef.parse(model)
    profile = ResolvedProfile(
        purpose=purpose,
        model=ref,
        base_url=base_url,
        rate_limit=RateLimitSpec(requests_per_interval=10**9, tokens_per_interval=10**12),
        budget=BudgetSpec(daily_usd=Decimal(10**9)),
    )
    return ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({purpose: profile}),
        guard=MemoryGuard(),
        sink=NullSink(),
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(bare: list[float], guarded: list[float]) -> dict[str, float]:
    return {
        "bare_p50_us": round(pct(bare, 0.5), 1),
        "guarded_p50_us": round(pct(guarded, 0.5), 1),
        "added_p50_us": round(pct(guarded, 0.5) - pct(bare, 0.5), 1),
        "added_p99_us": round(pct(guarded, 0.99) - pct(bare, 0.99), 1),
        "added_mean_us": round(statistics.fmean(guarded) - statistics.fmean(bare), 1),
    }


def alternate(calls: int, bare: Callable[[], Any], guarded: Callable[[], Any]) -> dict[str, float]:
    for _ in range(max(20, calls // 10)):  # warm: connections, prices, model instances
        bare()
        guarded()
    gc.collect()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(calls):
        for side, fn in ((0, bare), (1, guarded)):
            t0 = time.perf_counter_ns()
            fn()
            times[side].append((time.perf_counter_ns() - t0) / 1000)
    return summary(*times)


async def aalternate(
    calls: int, bare: Callable[[], Awaitable[Any]], guarded: Callable[[], Awaitable[Any]]
) -> dict[str, float]:
    for _ in range(max(20, calls // 10)):
        await bare()
        await guarded()
    gc.collect()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(calls):
        for side, fn in ((0, bare), (1, guarded)):
            t0 = time.perf_counter_ns()
            await fn()
            times[side].append((time.perf_counter_ns() - t0) / 1000)
    return summary(*times)


def stream_all(model: Any) -> Callable[[], None]:
    def run() -> None:
        for _chunk in model.stream(PROMPT):
            pass

    return run


def chat_paths(calls: int, name: str, bare: Any, guarded: Any) -> dict[str, dict[str, float]]:
    return {
        f"{name} invoke": alternate(
            calls, lambda: bare.invoke(PROMPT), lambda: guarded.invoke(PROMPT)
        ),
        f"{name} stream (whole)": alternate(calls, stream_all(bare), stream_all(guarded)),
        f"{name} ainvoke": asyncio.run(
            aalternate(calls, lambda: bare.ainvoke(PROMPT), lambda: guarded.ainvoke(PROMPT))
        ),
    }


def measure(calls: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with (
        FakeOpenAIServer() as openai,
        FakeAnthropicServer() as anthropic,
        FakeGeminiServer() as gemini,
    ):
        cases = (
            ("openai", "openai:gpt-4o-mini", openai.base_url, openai_chat_model),
            ("anthropic", "anthropic:claude-sonnet-4-5", anthropic.base_url, anthropic_chat_model),
            ("gemini", "gcp.gemini:gemini-2.5-flash", gemini.base_url, google_chat_model),
        )
        for name, model, base_url, factory in cases:
            ref = ModelRef.parse(model)
            plane = plane_for("reasoning", model, base_url)
            bare = factory(
                ModelSpec(
                    provider=ref.provider,
                    model=ref.model,
                    base_url=base_url,
                    api_key=KEY,
                    default_max_tokens=plane.settings.control.default_max_output_tokens,
                )
            )
            out.update(chat_paths(calls, name, bare, plane.chat_model("reasoning", org="acme")))
            plane.shutdown()

        from langchain_openai import OpenAIEmbeddings
        from pydantic import SecretStr

        plane = plane_for("embedding", "openai:text-embedding-3-small", openai.base_url)
        bare_emb = OpenAIEmbeddings(
            model="text-embedding-3-small",
            base_url=openai.base_url,
            api_key=SecretStr(KEY),
            max_retries=0,
            check_embedding_ctx_length=False,
        )
        emb = plane.embeddings("embedding", org="acme")
        out["embeddings embed_documents (3 texts)"] = alternate(
            calls, lambda: bare_emb.embed_documents(TEXTS), lambda: emb.embed_documents(TEXTS)
        )
        out["embeddings aembed_query"] = asyncio.run(
            aalternate(
                calls,
                lambda: bare_emb.aembed_query(TEXTS[0]),
                lambda: emb.aembed_query(TEXTS[0]),
            )
        )
        plane.shutdown()

        from pydantic_ai import Agent
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        plane = plane_for("reasoning", "openai:gpt-4o-mini", openai.base_url)
        bare_agent = Agent(
            OpenAIChatModel(
                "gpt-4o-mini", provider=OpenAIProvider(base_url=openai.base_url, api_key=KEY)
            )
        )
        agent = Agent(plane.pydantic_ai_model("reasoning", org="acme"))
        out["pydantic-ai Agent.run_sync"] = alternate(
            calls, lambda: bare_agent.run_sync(PROMPT), lambda: agent.run_sync(PROMPT)
        )
        out["pydantic-ai Agent.run"] = asyncio.run(
            aalternate(calls, lambda: bare_agent.run(PROMPT), lambda: agent.run(PROMPT))
        )
        plane.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    result = measure(args.calls)
    print(f"µs per call over real HTTP, {args.calls} calls each, alternating bare / guarded")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
