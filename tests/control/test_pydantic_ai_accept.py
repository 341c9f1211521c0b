"""pydantic-ai agents as a user runs them, on each built-in provider: the agent's calls are
the LangChain path's calls (same rows, same spans), tools and structured output work on every
provider and across a fallback chain, and settings reach each provider in its own terms.
Real HTTP to the local OpenAI, Anthropic and Gemini servers; no mocks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel, Field
from pydantic_ai import Agent, ModelRetry, NativeOutput
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.settings import ModelSettings

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
    attribution,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    AnthropicReply,
    FakeAnthropicServer,
    FakeClock,
    FakeGeminiServer,
    FakeOpenAIServer,
    GeminiBehaviour,
    GeminiReply,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-5"
FLASH = "gemini-2.5-flash"


class City(BaseModel):
    name: str
    population: int


@dataclass(frozen=True)
class Provider:
    """One built-in provider: its local server, how it is told what to answer, its errors."""

    name: str
    model: str
    server: Callable[[], Any]
    behaviour: Callable[..., Any]
    reply: Any

    def answer(self, content: str, *, tools: list[dict[str, Any]] | None = None) -> Any:
        return self.behaviour(content=content, tool_calls=tools or ())


PROVIDERS = [
    Provider("openai", GPT, FakeOpenAIServer, ModelBehaviour, ServerReply),
    Provider("anthropic", CLAUDE, FakeAnthropicServer, AnthropicBehaviour, AnthropicReply),
    Provider("gcp.gemini", FLASH, FakeGeminiServer, GeminiBehaviour, GeminiReply),
]


@pytest.fixture(params=PROVIDERS, ids=[p.name for p in PROVIDERS])
def provider(request: pytest.FixtureRequest) -> Provider:
    found: Provider = request.param
    return found


@pytest.fixture
def server(provider: Provider) -> Iterator[Any]:
    # One per test: the SDKs' async clients pool connections, which must not outlive the
    # event loop of the test that opened them.
    with provider.server() as running:
        yield running


def make_plane(
    server: Any,
    provider: str,
    model: str,
    *,
    fallbacks: tuple[str, ...] = (),
    max_retries: int = 0,
    **kw: Any,
) -> tuple[ControlPlane, InMemorySink]:
    clock = FakeClock()
    sink = InMemorySink()
    profile = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider=provider, model=model),
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
        base_url=server.base_url,
        **kw,
    )
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": profile}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=max_retries, base_s=0.0),
        circuit_policy=CircuitPolicy(consecutive_failures=50),
    )
    return plane, sink


def last_response(messages: list[Any]) -> ModelResponse:
    response = messages[-1]
    assert isinstance(response, ModelResponse)
    return response


# Differ between any two calls, whoever makes them.
_PER_CALL = {semconv.USAGE_ID, semconv.GEN_AI_RESPONSE_ID}


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    keys = (a.keys() | b.keys()) - _PER_CALL
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


# -- the agent's calls are the LangChain path's calls --------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_agent_and_chat_model_calls_land_identical_rows_and_spans(
    provider: Provider, server: Any, streamed: bool
) -> None:
    server.behave(provider.model, provider.answer("the same answer"))
    plane, sink = make_plane(server, provider.name, provider.model)
    scope: dict[str, Any] = {"org": "acme", "domain": "acme-eu", "context": "support"}
    with plane, attribution(user="u-42", session="s-9", feature="triage", team="growth"):
        chat = plane.chat_model("reasoning", **scope)
        agent = Agent(plane.pydantic_ai_model("reasoning", **scope))
        if streamed:
            async for _ in chat.astream("Same question?"):
                pass
            async with agent.run_stream("Same question?") as stream:
                assert await stream.get_output() == "the same answer"
                usage = stream.usage
        else:
            await chat.ainvoke("Same question?")
            result = await agent.run("Same question?")
            assert result.output == "the same answer"
            usage = result.usage
        assert plane.flush()

    first, second = server.requests
    assert first == second  # the same request body, whoever sent it
    chat_row, agent_row = sink.usage_rows()
    assert _differences(chat_row, agent_row) == {}
    assert agent_row[semconv.OUTCOME] == "ok"
    assert agent_row[semconv.GEN_AI_PROVIDER_NAME] == provider.name
    assert (agent_row[semconv.TENANT], agent_row[semconv.CONTEXT]) == ("acme-eu", "support")
    assert agent_row["user.id"] == "u-42"
    assert (usage.input_tokens, usage.output_tokens) == (
        agent_row[semconv.GEN_AI_USAGE_INPUT_TOKENS],
        agent_row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS],
    )
    chat_attempt, agent_attempt = sink.attempt_spans()
    assert chat_attempt.name == agent_attempt.name
    assert (
        _differences(dict(chat_attempt.attributes or {}), dict(agent_attempt.attributes or {}))
        == {}
    )
    chat_call, agent_call = sink.call_spans()
    assert chat_call.name == agent_call.name
    assert _differences(dict(chat_call.attributes or {}), dict(agent_call.attributes or {})) == {}


# -- tools and structured output on every provider -----------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_several_tool_calls_and_a_retry_on_every_provider(
    provider: Provider, server: Any, streamed: bool
) -> None:
    server.behave(
        provider.model,
        provider.answer(
            "sunny at noon",
            tools=[
                {"name": "weather", "arguments": {"city": "Paris"}},
                {"name": "clock", "arguments": {"tz": "CET"}},
            ],
        ),
    )
    plane, sink = make_plane(server, provider.name, provider.model)
    calls: list[str] = []
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), instructions="Be brief.")

        @agent.tool_plain
        def weather(city: str) -> str:
            """The weather in a city."""
            calls.append(city)
            if calls.count(city) == 1:
                raise ModelRetry("say the city again")
            return "sunny"

        @agent.tool_plain
        def clock(tz: str) -> str:
            """The time in a time zone."""
            calls.append(tz)
            return "noon"

        if streamed:
            async with agent.run_stream("Weather and time in Paris?") as stream:
                output = await stream.get_output()
                usage = stream.usage
        else:
            result = await agent.run("Weather and time in Paris?")
            output, usage = result.output, result.usage
        assert plane.flush()

    assert output == "sunny at noon"
    assert sorted(calls) == ["CET", "Paris"]
    rows = sink.usage_rows()
    assert [r[semconv.OUTCOME] for r in rows] == ["ok", "ok"]
    assert usage.requests == 2
    assert usage.input_tokens == sum(r[semconv.GEN_AI_USAGE_INPUT_TOKENS] for r in rows)
    assert usage.output_tokens == sum(r[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] for r in rows)


async def test_a_retried_tool_call_goes_back_on_anthropics_error_channel() -> None:
    with FakeAnthropicServer() as server:
        server.behave(
            CLAUDE,
            AnthropicBehaviour(content="done", tool_calls=[{"name": "lookup", "arguments": {}}]),
        )
        plane, _ = make_plane(server, "anthropic", CLAUDE)
        tries: list[int] = []
        with plane:
            agent = Agent(plane.pydantic_ai_model("reasoning"))

            @agent.tool_plain
            def lookup() -> str:
                """Look it up."""
                tries.append(1)
                if len(tries) == 1:
                    raise ModelRetry("not yet")
                return "found"

            assert (await agent.run("q")).output == "done"
        answer = server.requests[1]["messages"][-1]["content"]
    assert [(block["type"], block["is_error"]) for block in answer] == [("tool_result", True)]


async def test_native_output_with_function_tools_on_openai() -> None:
    # langchain-openai parses a `response_format` with the SDK's `parse`, which refuses tools
    # that are not strict: the agent must still get its tools and its JSON schema output.
    with FakeOpenAIServer() as server:
        server.behave(
            GPT,
            ModelBehaviour(
                content='{"name": "Oslo", "population": 700000}',
                tool_calls=[{"name": "lookup", "arguments": {"city": "Oslo"}}],
            ),
        )
        plane, sink = make_plane(server, "openai", GPT)
        looked_up: list[str] = []
        with plane:
            agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=NativeOutput(City))

            @agent.tool_plain
            def lookup(city: str) -> str:
                """Facts about a city."""
                looked_up.append(city)
                return "700000 people"

            result = await agent.run("Biggest city of Norway?")
            async with agent.run_stream("Biggest city of Norway?") as stream:
                streamed = await stream.get_output()
            assert plane.flush()

    assert result.output == streamed == City(name="Oslo", population=700000)
    assert looked_up == ["Oslo", "Oslo"]
    for body in server.requests:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"]["title"] == "City"
        assert [t["function"]["name"] for t in body["tools"]] == ["lookup"]
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok"] * 4


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_tool_output_on_every_provider(
    provider: Provider, server: Any, streamed: bool
) -> None:
    server.behave(
        provider.model,
        provider.answer(
            "", tools=[{"name": "final_result", "arguments": {"name": "Rome", "population": 3}}]
        ),
    )
    plane, _ = make_plane(server, provider.name, provider.model)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=City)
        if streamed:
            async with agent.run_stream("A city?") as stream:
                output = await stream.get_output()
        else:
            output = (await agent.run("A city?")).output
    assert output == City(name="Rome", population=3)


# -- settings reach each provider in its own terms -----------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_model_settings_reach_gemini_as_its_generation_config(streamed: bool) -> None:
    with FakeGeminiServer() as server:
        server.behave(FLASH, GeminiBehaviour(content="short"))
        plane, _ = make_plane(server, "gcp.gemini", FLASH)
        settings = ModelSettings(temperature=0.1, top_p=0.4, max_tokens=77, stop_sequences=["Z"])
        with plane:
            agent = Agent(plane.pydantic_ai_model("reasoning"), model_settings=settings)
            if streamed:
                async with agent.run_stream("q") as stream:
                    assert await stream.get_output() == "short"
            else:
                assert (await agent.run("q")).output == "short"
        (body,) = server.requests
    config = body["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"], config["topP"]) == (77, 0.1, 0.4)
    assert config["stopSequences"] == ["Z"]


async def test_settings_and_tools_follow_a_fallback_across_providers() -> None:
    with (
        FakeOpenAIServer() as openai,
        FakeAnthropicServer() as anthropic,
        FakeGeminiServer() as gemini,
    ):
        openai.script(GPT, ServerReply.server_error(500))
        anthropic.script(CLAUDE, AnthropicReply.overloaded())
        gemini.behave(FLASH, GeminiBehaviour(content='{"name": "Rome", "population": 3}'))
        plane, sink = make_plane(
            openai,
            "openai",
            GPT,
            fallbacks=(
                f"anthropic:{CLAUDE}@{anthropic.base_url}",
                f"google:{FLASH}@{gemini.base_url}",
            ),
            allow_cross_provider=True,
        )
        with plane:
            agent = Agent(plane.pydantic_ai_model("reasoning"), output_type=NativeOutput(City))

            @agent.tool_plain
            def lookup(city: str) -> str:
                """Facts about a city."""
                return "big"  # pragma: no cover - no model of this test calls it

            result = await agent.run(
                "q", model_settings=ModelSettings(max_tokens=64, temperature=0.3)
            )
            assert plane.flush()
        (claude_body,) = anthropic.requests
        (gemini_body,) = gemini.requests

    assert result.output == City(name="Rome", population=3)
    response = last_response(result.all_messages())
    rows = sink.usage_rows()
    # The response names the provider as the usage row does (not LangChain's `google_genai`).
    assert (response.model_name, response.provider_name) == (FLASH, "gcp.gemini")
    assert [(r[semconv.GEN_AI_PROVIDER_NAME], r[semconv.OUTCOME]) for r in rows] == [
        ("openai", "error"),
        ("anthropic", "error"),
        ("gcp.gemini", "ok"),
    ]
    assert (claude_body["max_tokens"], claude_body["temperature"]) == (64, 0.3)
    assert claude_body["output_config"]["format"]["type"] == "json_schema"
    assert [t["name"] for t in claude_body["tools"]] == ["lookup"]
    config = gemini_body["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"]) == (64, 0.3)
    assert config["responseMimeType"] == "application/json"
    assert [d["name"] for d in gemini_body["tools"][0]["functionDeclarations"]] == ["lookup"]


# -- degradation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_429_and_5xx_are_retried_on_every_provider(
    provider: Provider, server: Any, streamed: bool
) -> None:
    server.behave(provider.model, provider.answer("at last"))
    server.script(
        provider.model,
        provider.reply.rate_limited(retry_after_s=0),
        provider.reply.server_error(503),
    )
    plane, sink = make_plane(server, provider.name, provider.model, max_retries=2)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))
        if streamed:
            async with agent.run_stream("q") as stream:
                output = await stream.get_output()
        else:
            output = (await agent.run("q")).output
        assert plane.flush()
    assert output == "at last"
    assert [(r[semconv.OUTCOME], r.get(semconv.ERROR_TYPE)) for r in sink.usage_rows()] == [
        ("error", "429"),
        ("error", "503"),
        ("ok", None),
    ]


async def test_cancelling_a_streaming_run_records_the_call_as_cancelled(
    provider: Provider, server: Any
) -> None:
    server.behave(
        provider.model, provider.behaviour(content="one two three four five six", latency_s=1.2)
    )
    plane, sink = make_plane(server, provider.name, provider.model)
    received = asyncio.Event()
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))

        async def read() -> None:
            async with agent.run_stream("count") as stream:
                async for _ in stream.stream_text(delta=True, debounce_by=None):
                    received.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(received.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert plane.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "cancelled"
    assert row[semconv.GEN_AI_PROVIDER_NAME] == provider.name


# -- packaging -----------------------------------------------------------------------------------


def test_pydantic_ai_blocked_by_an_import_hook_is_a_config_error() -> None:
    # An ImportError without a module name (as import hooks and broken installs raise) is
    # the missing extra too, not a bare ImportError out of `pydantic_ai_model`.
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "pydantic_ai" or name.startswith("pydantic_ai."):
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, Block())
        from comptroller.config import load_settings
        from comptroller.control import ControlPlane, ModelRef, ResolvedProfile, StaticProfiles
        from comptroller.errors import ConfigError

        profile = ResolvedProfile(purpose="reasoning", model=ModelRef(provider="openai", model="gpt-4o-mini"))
        with ControlPlane(
            load_settings(telemetry="none"), resolver=StaticProfiles({"reasoning": profile})
        ) as plane:
            try:
                plane.pydantic_ai_model("reasoning")
            except ConfigError as exc:
                assert "comptroller[pydantic-ai]" in str(exc), exc
                print("config error")
        assert "pydantic_ai" not in sys.modules
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "config error"


# -- Gemini's thought signatures -----------------------------------------------------------------

_SIGNATURES = "__gemini_function_call_thought_signatures__"


class _SigningGemini(BaseChatModel):
    """Answers as langchain-google-genai does for a thinking Gemini model: a function call
    with its thought signature (in `additional_kwargs`, by call id), then text; keeps what it
    was sent."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "signing-gemini"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Runnable[Any, Any]:
        return self.bind(tools=tools, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        usage = UsageMetadata(input_tokens=10, output_tokens=2, total_tokens=12)
        metadata = {"finish_reason": "STOP", "model_name": FLASH, "model_provider": "google_genai"}
        if len(self.seen) % 2:
            message = AIMessage(
                content="",
                tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "call-1"}],
                additional_kwargs={_SIGNATURES: {"call-1": "c2lnbmVk"}},
                usage_metadata=usage,
                response_metadata=metadata,
            )
        else:
            message = AIMessage(content="done", usage_metadata=usage, response_metadata=metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_a_function_calls_thought_signature_goes_back_with_it(streamed: bool) -> None:
    with FakeGeminiServer() as server:
        plane, _ = make_plane(server, "gcp.gemini", FLASH)
    gemini = _SigningGemini()
    plane.register_provider("gcp.gemini", lambda spec: gemini)
    with plane:
        agent = Agent(plane.pydantic_ai_model("reasoning"))

        @agent.tool_plain
        def lookup(city: str) -> str:
            """Facts about a city."""
            return "big"

        if streamed:
            async with agent.run_stream("q") as stream:
                assert await stream.get_output() == "done"
                messages = stream.all_messages()
        else:
            result = await agent.run("q")
            assert result.output == "done"
            messages = result.all_messages()

    call = next(
        p
        for m in messages
        if isinstance(m, ModelResponse)
        for p in m.parts
        if isinstance(p, ToolCallPart)
    )
    assert call.provider_details == {"gemini_thought_signature": "c2lnbmVk"}
    replayed = next(m for m in gemini.seen[1] if isinstance(m, AIMessage))
    assert replayed.additional_kwargs[_SIGNATURES] == {"call-1": "c2lnbmVk"}
