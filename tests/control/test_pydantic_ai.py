"""pydantic-ai agents on `ControlPlane.pydantic_ai_model`: every request runs the guarded call
flow, over real HTTP to the local OpenAI and Anthropic servers (langchain-openai /
langchain-anthropic underneath, no mocks)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.messages import AudioUrl, BinaryContent, ImageUrl, ModelResponse, ToolCallPart
from pydantic_ai.settings import ModelSettings

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    ExhaustedFallbacks,
    MemoryGuard,
    ModelRef,
    RateLimited,
    RateLimitSpec,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    FakeAnthropicServer,
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)
from comptroller.errors import ConfigError, UsageError

MODEL = "gpt-4o-mini"
USAGE = ModelBehaviour(
    content="Paris is lovely", prompt_tokens=1500, completion_tokens=40, cached_tokens=1024
)


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A server per test: langchain-openai caches its async HTTP client per base URL, and a
    pooled connection cannot outlive the event loop of the test that opened it."""
    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture
def sync_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop `run_sync` runs in: pydantic-ai leaves the loop it uses open (as the
    thread's current loop, for the next run), so the test provides one and closes it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def make_plane(
    server: FakeOpenAIServer | FakeAnthropicServer,
    *,
    provider: str = "openai",
    model: str = MODEL,
    fallbacks: tuple[str, ...] = (),
    max_retries: int = 0,
    **kw: Any,
) -> tuple[ControlPlane, InMemorySink]:
    clock = FakeClock()
    sink = InMemorySink()
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider=provider, model=model),
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
        base_url=server.base_url,
        **kw,
    )
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": prof}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=max_retries, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=50),
    )
    return plane, sink


def last_response(messages: list[Any]) -> ModelResponse:
    response = messages[-1]
    assert isinstance(response, ModelResponse)
    return response


# -- the ways of running an agent ----------------------------------------------------------------


async def test_agent_run_is_one_guarded_call_with_the_providers_usage(
    server: FakeOpenAIServer,
) -> None:
    server.behave(MODEL, USAGE)
    plane, sink = make_plane(server)
    with plane:
        model = plane.pydantic_ai_model("reasoning", org="acme", domain="acme-eu", context="ci")
        assert (model.model_name, model.system) == (MODEL, "openai")
        result = await Agent(model, instructions="Answer briefly.").run("Capital of France?")
        assert plane.flush()

    assert result.output == "Paris is lovely"
    response = last_response(result.all_messages())
    assert response.model_name == MODEL
    assert response.provider_name == "openai"
    assert str(response.provider_response_id).startswith("chatcmpl-fake")
    assert response.finish_reason == "stop"
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.cache_read_tokens,
    ) == (1500, 40, 1024)
    (request,) = server.requests
    assert request["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"},
    ]
    (row,) = sink.usage_rows()
    assert row[semconv.PURPOSE] == "reasoning"
    assert row[semconv.TENANT] == "acme-eu"
    assert row[semconv.CONTEXT] == "ci"
    assert row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1024
    assert row[semconv.OUTCOME] == "ok"


@pytest.mark.usefixtures("sync_loop")
def test_run_sync_runs_the_same_flow(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, USAGE)
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        assert agent.run_sync("q").output == "Paris is lovely"
        assert plane.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1500


async def test_run_stream_streams_text_and_takes_usage_from_the_final_chunk(
    server: FakeOpenAIServer,
) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            content="one two three four", prompt_tokens=700, completion_tokens=4, cached_tokens=512
        ),
    )
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        async with agent.run_stream("count") as stream:
            deltas = [d async for d in stream.stream_text(delta=True, debounce_by=None)]
            usage = stream.usage
        assert plane.flush()

    assert len(deltas) > 1
    assert "".join(deltas) == "one two three four"
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (700, 4, 512)
    (request,) = server.requests
    assert request["stream"] is True
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert row[semconv.OUTCOME] == "ok"


async def test_model_settings_reach_the_provider(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, ModelBehaviour(content="a b END c"))
    plane, _ = make_plane(server)
    settings = ModelSettings(temperature=0.2, top_p=0.5, max_tokens=50, stop_sequences=["END"])
    with plane:
        result = await Agent(plane.pydantic_ai_model("reasoning")).run("q", model_settings=settings)
    assert result.output == "a b "
    (request,) = server.requests
    assert request["temperature"] == 0.2
    assert request["top_p"] == 0.5
    assert 50 in (request.get("max_tokens"), request.get("max_completion_tokens"))
    assert request["stop"] == ["END"]


async def test_a_stream_left_early_is_charged_as_cancelled(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, ModelBehaviour(content="one two three four five six", latency_s=0.3))
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        async with agent.run_stream("count") as stream:
            async for _ in stream.stream_text(delta=True, debounce_by=None):
                break
        assert plane.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "cancelled"


async def test_images_in_the_prompt_reach_the_provider(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, ModelBehaviour(content="a cat"))
    plane, _ = make_plane(server)
    png = BinaryContent(data=b"\x89PNG fake", media_type="image/png")
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        result = await agent.run(["What is this?", ImageUrl("https://example.com/cat.png"), png])
    assert result.output == "a cat"
    (request,) = server.requests
    (user,) = request["messages"]
    kinds = [
        (block["type"], block.get("image_url", {}).get("url", "")[:22]) for block in user["content"]
    ]
    assert kinds == [
        ("text", ""),
        ("image_url", "https://example.com/ca"),
        ("image_url", "data:image/png;base64,"),
    ]


async def test_content_the_model_cannot_send_is_a_usage_error(server: FakeOpenAIServer) -> None:
    plane, _ = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        with pytest.raises(UsageError, match="text and images only"):
            await agent.run(["Read this", AudioUrl("https://example.com/a.mp3")])
    assert server.requests == []


# -- tools and structured output -----------------------------------------------------------------


async def test_tool_call_round_trip(server: FakeOpenAIServer) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            content="Sunny in Paris.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        ),
    )
    plane, sink = make_plane(server)
    asked: list[str] = []
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))

        @agent.tool_plain
        def get_weather(city: str) -> str:
            """The weather in a city."""
            asked.append(city)
            return f"sunny in {city}"

        result = await agent.run("Weather in Paris?")
        assert plane.flush()

    assert asked == ["Paris"]
    assert result.output == "Sunny in Paris."
    first, second = server.requests
    (tool,) = first["tools"]
    assert tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert first.get("tool_choice") in (None, "auto")
    call = next(
        p
        for m in result.all_messages()
        if isinstance(m, ModelResponse)
        for p in m.parts
        if isinstance(p, ToolCallPart)
    )
    assistant, tool_message = second["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == call.tool_call_id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool_message == {
        "role": "tool",
        "content": "sunny in Paris",
        "tool_call_id": call.tool_call_id,
    }
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok", "ok"]


async def test_invalid_tool_arguments_go_back_as_a_retry_for_that_call(
    server: FakeOpenAIServer,
) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            content="Sorry, no weather.",
            tool_calls=[{"name": "get_weather", "arguments": {"city": 42}}],
        ),
    )
    plane, _ = make_plane(server)
    asked: list[str] = []
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))

        @agent.tool_plain
        def get_weather(city: str) -> str:
            """The weather in a city."""
            asked.append(city)  # pragma: no cover - the arguments never validate
            return "sunny"  # pragma: no cover

        result = await agent.run("Weather?")

    assert asked == []
    assert result.output == "Sorry, no weather."
    _, second = server.requests
    call_id = second["messages"][-2]["tool_calls"][0]["id"]
    retry = second["messages"][-1]
    assert retry["role"] == "tool"
    assert retry["tool_call_id"] == call_id
    assert "city" in retry["content"]


async def test_invalid_native_output_is_retried_with_the_validation_errors(
    server: FakeOpenAIServer,
) -> None:
    def answer(body: Mapping[str, Any]) -> str:
        retried = len(body["messages"]) > 1
        return '{"name": "Nice", "population": 340000}' if retried else '{"name": "Nice"}'

    server.behave(MODEL, ModelBehaviour(content=answer))
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=NativeOutput(City))
        result = await agent.run("Nice?")
        assert plane.flush()

    assert result.output == City(name="Nice", population=340000)
    _, second = server.requests
    feedback = second["messages"][-1]
    assert feedback["role"] == "user"
    assert "population" in str(feedback["content"])
    assert len(sink.usage_rows()) == 2


async def test_structured_output_is_an_output_tool_the_model_must_call(
    server: FakeOpenAIServer,
) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            tool_calls=[
                {"name": "final_result", "arguments": {"name": "Paris", "population": 2100000}}
            ]
        ),
    )
    plane, _ = make_plane(server)
    with plane:
        result = await Agent(plane.pydantic_ai_model("reasoning"), output_type=City).run("Paris?")
    assert result.output == City(name="Paris", population=2100000)
    (request,) = server.requests
    # Text is not an answer here: the one output tool is forced.
    assert request["tool_choice"] == {"type": "function", "function": {"name": "final_result"}}


async def test_structured_output_streams_tool_call_deltas(server: FakeOpenAIServer) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            tool_calls=[{"name": "final_result", "arguments": {"name": "Lyon", "population": 5}}]
        ),
    )
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=City)
        async with agent.run_stream("Lyon?") as stream:
            output = await stream.get_output()
        assert plane.flush()
    assert output == City(name="Lyon", population=5)
    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "ok"


async def test_native_structured_output_sends_a_json_schema_response_format(
    server: FakeOpenAIServer,
) -> None:
    server.behave(MODEL, ModelBehaviour(content='{"name": "Nice", "population": 340000}'))
    plane, _ = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=NativeOutput(City))
        result = await agent.run("Nice?")
    assert result.output == City(name="Nice", population=340000)
    (request,) = server.requests
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    assert set(response_format["json_schema"]["schema"]["properties"]) == {"name", "population"}
    assert "tools" not in request


async def test_native_structured_output_streams(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, ModelBehaviour(content='{"name": "Nice", "population": 340000}'))
    plane, sink = make_plane(server)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=NativeOutput(City))
        async with agent.run_stream("Nice?") as stream:
            output = await stream.get_output()
        assert plane.flush()
    assert output == City(name="Nice", population=340000)
    (request,) = server.requests
    assert request["response_format"]["type"] == "json_schema"
    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "ok"


# -- identical to the LangChain path -------------------------------------------------------------


@pytest.mark.usefixtures("sync_loop")
def test_agent_and_langchain_land_the_same_usage_row_in_duckdb(
    server: FakeOpenAIServer, data_dir: Path
) -> None:
    from comptroller.analytics import connect

    server.behave(
        "gpt-4o-mini-2024-07-18",
        ModelBehaviour(content="same", prompt_tokens=900, completion_tokens=50, cached_tokens=512),
    )
    settings = load_settings()
    assert settings.telemetry == "embedded"
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o-mini-2024-07-18"),
        base_url=server.base_url,
    )
    scope: dict[str, Any] = {"org": "acme", "domain": "acme-eu", "context": "support"}
    with ControlPlane(settings, resolver=StaticProfiles({"reasoning": prof})) as plane:
        plane.chat_model("reasoning", **scope).invoke("Same question?")
        Agent(plane.pydantic_ai_model("reasoning", **scope)).run_sync("Same question?")

    langchain_request, agent_request = server.requests
    assert agent_request["messages"] == langchain_request["messages"]
    con = connect(settings.db_file, read_only=True)
    try:
        rows = con.execute(
            "select provider, request_model, response_model, input_tokens, output_tokens, "
            "cache_read_tokens, cost_usd, price_source, tenant, org, context, purpose, outcome "
            "from llm_usage order by ts"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 2
    assert rows[0] == rows[1]
    provider, _, response_model, inp, out, cached, cost, *_, tenant, org, context, purpose, _ = (
        rows[0]
    )
    assert (provider, response_model, inp, out, cached) == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        900,
        50,
        512,
    )
    assert cost > 0
    assert (tenant, org, context, purpose) == ("acme-eu", "acme", "support", "reasoning")


# -- the control plane's decisions reach the agent's caller --------------------------------------


async def test_budget_cap_refuses_the_agents_call(server: FakeOpenAIServer) -> None:
    server.behave("gpt-4o", USAGE)
    plane, sink = make_plane(
        server,
        model="gpt-4o",
        budget=BudgetSpec(daily_usd=Decimal("0.000001")),
        defaults=CallDefaults(max_tokens=100),
    )
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning", domain="acme-eu", context="ci"))
        with pytest.raises(BudgetExceeded) as refused:
            await agent.run("score this")
        with pytest.raises(BudgetExceeded):
            async with agent.run_stream("score this"):
                pass  # never reached: the stream is refused when it opens
        assert plane.flush()
    assert refused.value.key.tenant == "acme-eu"
    assert server.requests == []
    assert sink.usage_rows() == []


@pytest.mark.usefixtures("sync_loop")
def test_rate_limit_refuses_the_second_run(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, USAGE)
    plane, _ = make_plane(server, rate_limit=RateLimitSpec(requests_per_interval=1, interval_s=60))
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning", domain="acme-eu"))
        assert agent.run_sync("first").output == "Paris is lovely"
        with pytest.raises(RateLimited):
            agent.run_sync("second")
    assert len(server.requests) == 1


async def test_failing_primary_falls_back_to_the_next_model(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, USAGE)
    server.behave("gpt-4.1-mini", ModelBehaviour(content="from the fallback"))
    server.script(MODEL, ServerReply.server_error(500), ServerReply.server_error(500))
    plane, sink = make_plane(server, fallbacks=("openai:gpt-4.1-mini",), max_retries=1)
    with plane:
        result = await Agent(plane.pydantic_ai_model("reasoning")).run("q")
        assert plane.flush()

    assert result.output == "from the fallback"
    assert last_response(result.all_messages()).model_name == "gpt-4.1-mini"
    assert [r["model"] for r in server.requests] == [MODEL, MODEL, "gpt-4.1-mini"]
    rows = sink.usage_rows()
    assert [(r[semconv.GEN_AI_REQUEST_MODEL], r.get(semconv.ERROR_TYPE)) for r in rows] == [
        (MODEL, "500"),
        (MODEL, "500"),
        ("gpt-4.1-mini", None),
    ]


async def test_fallback_to_another_provider_binds_the_tools_its_way(
    server: FakeOpenAIServer,
) -> None:
    claude = "claude-sonnet-4-5"
    server.script(MODEL, ServerReply.server_error(500))
    with FakeAnthropicServer() as anthropic:
        anthropic.behave(claude, AnthropicBehaviour(content="from claude"))
        plane, sink = make_plane(
            server,
            fallbacks=(f"anthropic:{claude}@{anthropic.base_url}",),
            allow_cross_provider=True,
        )
        with plane:
            agent = Agent(plane.pydantic_ai_model("reasoning"), instructions="Be brief.")

            @agent.tool_plain
            def get_weather(city: str) -> str:
                """The weather in a city."""
                return "sunny"  # pragma: no cover - the fake Anthropic server calls no tool

            result = await agent.run("Weather in Paris?")
            assert plane.flush()
        (claude_request,) = anthropic.requests

    assert result.output == "from claude"
    response = last_response(result.all_messages())
    assert (response.model_name, response.provider_name) == (claude, "anthropic")
    (tool,) = claude_request["tools"]
    assert tool["name"] == "get_weather"
    assert tool["input_schema"]["properties"]["city"]["type"] == "string"
    assert [r[semconv.GEN_AI_PROVIDER_NAME] for r in sink.usage_rows()] == ["openai", "anthropic"]


async def test_exhausted_chain_raises_the_control_planes_error(server: FakeOpenAIServer) -> None:
    server.script(MODEL, ServerReply.server_error(503))
    server.script("gpt-4.1-mini", ServerReply.server_error(502))
    plane, _ = make_plane(server, fallbacks=("openai:gpt-4.1-mini",))
    with plane, pytest.raises(ExhaustedFallbacks) as exhausted:
        await Agent(plane.pydantic_ai_model("reasoning")).run("q")
    assert len(exhausted.value.exceptions) == 2


# -- Anthropic -----------------------------------------------------------------------------------


async def test_anthropic_profile_runs_and_streams_through_the_flow() -> None:
    claude = "claude-sonnet-4-5"
    with FakeAnthropicServer() as server:
        server.behave(
            claude,
            AnthropicBehaviour(
                content="one two three", input_tokens=120, output_tokens=3, cache_read_tokens=2000
            ),
        )
        plane, sink = make_plane(server, provider="anthropic", model=claude)
        with plane:
            model = plane.pydantic_ai_model("reasoning", domain="acme-eu")
            assert (model.model_name, model.system) == (claude, "anthropic")
            agent = Agent(model, instructions="Be brief.")
            result = await agent.run("count")
            async with agent.run_stream("count") as stream:
                streamed = await stream.get_output()
                stream_usage = stream.usage
            assert plane.flush()
        requests = list(server.requests)

    assert result.output == streamed == "one two three"
    response = last_response(result.all_messages())
    assert response.provider_name == "anthropic"
    assert response.finish_reason == "stop"
    # Anthropic reports input without cache reads; the usage is inclusive, as on every path.
    assert (response.usage.input_tokens, response.usage.cache_read_tokens) == (2120, 2000)
    assert (stream_usage.input_tokens, stream_usage.output_tokens) == (2120, 3)
    assert requests[0]["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    rows = sink.usage_rows()
    assert [r[semconv.GEN_AI_USAGE_INPUT_TOKENS] for r in rows] == [2120, 2120]


# -- packaging -----------------------------------------------------------------------------------


def test_missing_pydantic_ai_is_a_config_error_naming_the_extra(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if not installed: an import of any pydantic_ai module fails, ours are imported anew.
    for name in [n for n in sys.modules if n == "pydantic_ai" or n.startswith("pydantic_ai.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("_pydantic_ai_model", "_pydantic_ai_messages"):
        monkeypatch.delitem(sys.modules, f"comptroller.control.{name}", raising=False)
    plane, _ = make_plane(server)
    with plane, pytest.raises(ConfigError, match=r"comptroller\[pydantic-ai\]"):
        plane.pydantic_ai_model("reasoning")


def test_importing_the_control_plane_does_not_import_pydantic_ai() -> None:
    code = (
        "import sys, comptroller.control\n"
        "assert 'pydantic_ai' not in sys.modules, 'pydantic_ai imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
