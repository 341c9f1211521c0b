"""Every usage shape, over real HTTP through the control plane, lands priced as genai-prices.

ChatOpenAI talks to the local OpenAI-compatible server, which reports service tiers, audio,
cached and reasoning tokens as OpenAI does (buffered, and in the final chunk of a stream);
the plane's usage rows must cost exactly what `genai_prices.calc_price` says for that usage,
whichever of invoke, ainvoke, stream and astream made the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    CircuitPolicy,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import (
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
)

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # OpenAI's flex and priority prices in force

# (model, what the server reports, the same usage in genai-prices' terms, the tier)
SHAPES: dict[str, tuple[str, ModelBehaviour, GPUsage, str | None]] = {
    "plain": (
        "gpt-5",
        ModelBehaviour(content="a b", prompt_tokens=1_500, completion_tokens=40),
        GPUsage(input_tokens=1_500, output_tokens=40),
        None,
    ),
    "cache read": (
        "gpt-5",
        ModelBehaviour(
            content="a b", prompt_tokens=1_500, completion_tokens=40, cached_tokens=1_024
        ),
        GPUsage(input_tokens=1_500, output_tokens=40, cache_read_tokens=1_024),
        None,
    ),
    "reasoning": (
        "gpt-5",
        ModelBehaviour(
            content="a b", prompt_tokens=1_500, completion_tokens=340, reasoning_tokens=300
        ),
        GPUsage(input_tokens=1_500, output_tokens=340, output_reasoning_tokens=300),
        None,
    ),
    "audio in and out": (
        "gpt-audio",
        ModelBehaviour(
            content="a b",
            prompt_tokens=1_500,
            completion_tokens=400,
            audio_prompt_tokens=1_200,
            audio_completion_tokens=300,
        ),
        GPUsage(
            input_tokens=1_500,
            output_tokens=400,
            input_audio_tokens=1_200,
            output_audio_tokens=300,
        ),
        None,
    ),
    "flex": (
        "gpt-5",
        ModelBehaviour(
            content="a b", prompt_tokens=1_500, completion_tokens=40, service_tier="flex"
        ),
        GPUsage(input_tokens=1_500, output_tokens=40),
        "flex",
    ),
    "priority": (
        "gpt-5",
        ModelBehaviour(
            content="a b", prompt_tokens=1_500, completion_tokens=40, service_tier="priority"
        ),
        GPUsage(input_tokens=1_500, output_tokens=40),
        "priority",
    ),
    "flex + cache + reasoning": (
        "gpt-5",
        ModelBehaviour(
            content="a b",
            prompt_tokens=1_500,
            completion_tokens=340,
            cached_tokens=1_024,
            reasoning_tokens=300,
            service_tier="flex",
        ),
        GPUsage(
            input_tokens=1_500,
            output_tokens=340,
            cache_read_tokens=1_024,
            output_reasoning_tokens=300,
        ),
        "flex",
    ),
    "default tier reported": (
        "gpt-5",
        ModelBehaviour(
            content="a b", prompt_tokens=1_500, completion_tokens=40, service_tier="default"
        ),
        GPUsage(input_tokens=1_500, output_tokens=40),
        "default",
    ),
}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A server per test: langchain-openai caches its async HTTP client per base URL, and a
    pooled connection cannot outlive the event loop of the test that opened it."""
    with FakeOpenAIServer() as running:
        yield running


def make_plane(server: FakeOpenAIServer, model: str) -> tuple[ControlPlane, InMemorySink]:
    sink = InMemorySink()
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model=model),
        base_url=server.base_url,
    )
    clock = FakeClock(start=AT.timestamp())
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": prof}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=0, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=50),
    )
    return plane, sink


def genai_cost(model: str, usage: GPUsage, tier: str | None) -> Decimal:
    price = calc_price(
        usage,
        model_ref=model,
        provider_id="openai",
        genai_request_timestamp=AT,
        price_context={"service_tier": tier} if tier else None,
    )
    return Decimal(price.total_price)


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_invoke_ainvoke_stream_and_astream_land_the_genai_prices_cost(
    server: FakeOpenAIServer, shape: str
) -> None:
    model_name, behaviour, usage, tier = SHAPES[shape]
    server.behave(model_name, behaviour)
    plane, sink = make_plane(server, model_name)
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        answers = [
            model.invoke("q").content,
            (await model.ainvoke("q")).content,
            "".join(str(c.content) for c in model.stream("q")),
            "".join([str(c.content) async for c in model.astream("q")]),
        ]
        assert plane.flush()

    assert answers == ["a b"] * 4
    rows = sink.usage_rows()
    expected = genai_cost(model_name, usage, tier)
    assert [Decimal(row[semconv.COST_USD]) for row in rows] == [expected] * 4
    assert all(row[semconv.PRICE_SOURCE].startswith("genai-prices@") for row in rows)


def test_a_tier_changes_the_landed_cost(server: FakeOpenAIServer) -> None:
    costs: dict[str, Decimal] = {}
    for shape in ("plain", "flex", "priority"):
        model_name, behaviour, _, _ = SHAPES[shape]
        server.behave(model_name, behaviour)
        plane, sink = make_plane(server, model_name)
        with plane:
            plane.chat_model("reasoning").invoke("q")
            assert plane.flush()
        (row,) = sink.usage_rows()
        costs[shape] = Decimal(row[semconv.COST_USD])

    assert costs["flex"] == costs["plain"] / 2
    assert costs["priority"] == costs["plain"] * 2
