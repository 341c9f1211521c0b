"""Anthropic, built in: ChatAnthropic through the control plane over real HTTP to a local
Messages API server (the real `anthropic` SDK, no network)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    ExhaustedFallbacks,
    GuardedChatModel,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control._providers import ModelSpec, anthropic_chat_model
from comptroller.control.testing import (
    AnthropicBehaviour,
    AnthropicReply,
    FakeAnthropicServer,
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)
from comptroller.errors import UsageError

CLAUDE = "claude-sonnet-4-5"
BUDGET = BudgetSpec(daily_usd=Decimal(10))
CACHED = AnthropicBehaviour(
    content="one two three",
    input_tokens=120,
    output_tokens=30,
    cache_read_tokens=2000,
    cache_write_5m_tokens=700,
    cache_write_1h_tokens=400,
)


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    # One per test: the SDK's async client pools connections, and a pooled connection must
    # not outlive the event loop of the test that opened it.
    with FakeAnthropicServer() as running:
        yield running


def make_plane(
    server: FakeAnthropicServer,
    *,
    model: str = CLAUDE,
    fallbacks: tuple[str, ...] = (),
    max_retries: int = 2,
    **kw: Any,
) -> tuple[ControlPlane, InMemorySink, FakeClock]:
    clock = FakeClock()
    sink = InMemorySink()
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="anthropic", model=model),
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
    return plane, sink, clock


def genai_cost(behaviour: AnthropicBehaviour, model: str = CLAUDE) -> Decimal:
    """What genai-prices charges for the usage the server reports (input inclusive of the
    cache, as genai-prices counts it)."""
    assert behaviour.input_tokens is not None
    assert behaviour.output_tokens is not None
    writes = behaviour.cache_write_5m_tokens + behaviour.cache_write_1h_tokens
    price = calc_price(
        GPUsage(
            input_tokens=behaviour.input_tokens + behaviour.cache_read_tokens + writes,
            output_tokens=behaviour.output_tokens,
            cache_read_tokens=behaviour.cache_read_tokens,
            cache_write_tokens=writes,
            cache_write_5m_tokens=behaviour.cache_write_5m_tokens,
            cache_write_1h_tokens=behaviour.cache_write_1h_tokens,
        ),
        model_ref=model,
        provider_id="anthropic",
    )
    return Decimal(price.total_price)


def test_the_1h_cache_writes_make_a_difference_the_test_can_see() -> None:
    # Guards the tests below: were 1-hour writes priced as 5-minute ones, they would fail.
    as_5m = AnthropicBehaviour(
        input_tokens=120, output_tokens=30, cache_read_tokens=2000, cache_write_5m_tokens=1100
    )
    assert genai_cost(CACHED) > genai_cost(as_5m)


async def test_invoke_ainvoke_stream_astream_land_one_row_each_priced_as_genai_prices(
    server: FakeAnthropicServer,
) -> None:
    server.behave(CLAUDE, CACHED)
    plane, sink, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        buffered = model.invoke("q")
        abuffered = await model.ainvoke("q")
        streamed = "".join(str(c.content) for c in model.stream("q"))
        astreamed = "".join([str(c.content) async for c in model.astream("q")])
        plane.flush()

    assert buffered.content == abuffered.content == streamed == astreamed == "one two three"
    rows = sink.usage_rows()
    assert len(rows) == 4
    expected = genai_cost(CACHED)
    assert [Decimal(row[semconv.COST_USD]) for row in rows] == [expected] * 4
    for row in rows:
        assert row[semconv.OUTCOME] == "ok"
        assert row[semconv.GEN_AI_PROVIDER_NAME] == "anthropic"
        assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 120 + 2000 + 1100
        assert row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 30
        assert row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2000
        assert row[semconv.PRICE_SOURCE].startswith("genai-prices@")
    assert server.request_count(CLAUDE) == 4
    # Anthropic requires max_tokens: without a profile value, the plane's default output cap
    # (what the call's reservation was sized for) is sent.
    default_cap = load_settings(telemetry="none").control.default_max_output_tokens
    assert {body["max_tokens"] for body in server.requests} == {default_cap}


def test_the_attempt_span_names_the_anthropic_provider(server: FakeAnthropicServer) -> None:
    server.behave(CLAUDE, CACHED)
    plane, sink, _ = make_plane(server, defaults=CallDefaults(max_tokens=256))
    with plane:
        plane.chat_model("reasoning").invoke("q")
        plane.flush()

    (span,) = sink.attempt_spans()
    assert span.name == f"chat {CLAUDE}"
    attrs = span.attributes
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == CLAUDE
    assert attrs[semconv.GEN_AI_RESPONSE_MODEL] == CLAUDE
    assert str(attrs[semconv.GEN_AI_RESPONSE_ID]).startswith("msg_fake")
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2000
    assert server.requests[-1]["max_tokens"] == 256


def test_a_429_is_retried_after_its_retry_after_without_sleeping(
    server: FakeAnthropicServer,
) -> None:
    server.behave(CLAUDE, CACHED)
    server.script(CLAUDE, AnthropicReply.rate_limited(retry_after_s=4))
    plane, sink, clock = make_plane(server)
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "one two three"
        plane.flush()

    assert clock.sleeps[0] == 4.0
    assert [r.get(semconv.ERROR_TYPE) for r in sink.usage_rows()] == ["429", None]
    # The SDK's own retries are off: comptroller's retry is the only one.
    assert server.request_count(CLAUDE) == 2


@pytest.mark.parametrize("failure", [AnthropicReply.overloaded(), AnthropicReply.server_error()])
def test_overloaded_and_5xx_are_retried_then_fall_back(
    server: FakeAnthropicServer, failure: AnthropicReply
) -> None:
    server.behave("claude-haiku-4-5", AnthropicBehaviour(content="from haiku"))
    server.script(CLAUDE, failure, failure, failure)
    plane, sink, _ = make_plane(server, fallbacks=("anthropic:claude-haiku-4-5",))
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "from haiku"
        plane.flush()

    rows = sink.usage_rows()
    status = str(failure.status)
    assert [(r[semconv.GEN_AI_REQUEST_MODEL], r.get(semconv.ERROR_TYPE)) for r in rows] == [
        (CLAUDE, status),
        (CLAUDE, status),
        (CLAUDE, status),
        ("claude-haiku-4-5", None),
    ]
    # The provider answered with an error status: those attempts cost nothing.
    assert [Decimal(r[semconv.COST_USD]) for r in rows[:3]] == [Decimal(0)] * 3


def test_a_chain_may_cross_from_claude_to_openai_when_the_profile_allows_it(
    server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.script(CLAUDE, *[AnthropicReply.overloaded()] * 3)
    with FakeOpenAIServer() as openai_server:
        openai_server.behave("gpt-4o-mini", ModelBehaviour(content="from openai"))
        # The profile's base_url is the Anthropic server's; the OpenAI fallback finds its
        # endpoint as the OpenAI SDK does, in the environment.
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        plane, sink, _ = make_plane(
            server, fallbacks=("openai:gpt-4o-mini",), allow_cross_provider=True
        )
        with plane:
            assert plane.chat_model("reasoning").invoke("q").content == "from openai"
            plane.flush()

    rows = sink.usage_rows()
    assert [r[semconv.GEN_AI_PROVIDER_NAME] for r in rows] == ["anthropic"] * 3 + ["openai"]
    assert rows[-1][semconv.OUTCOME] == "ok"
    assert openai_server.request_count("gpt-4o-mini") == 1


def test_without_allow_cross_provider_the_chain_stays_with_anthropic(
    server: FakeAnthropicServer,
) -> None:
    server.script(CLAUDE, *[AnthropicReply.overloaded()] * 3)
    plane, sink, _ = make_plane(server, fallbacks=("openai:gpt-4o-mini",))
    with plane:
        with pytest.raises(ExhaustedFallbacks):
            plane.chat_model("reasoning").invoke("q")
        plane.flush()

    assert {r[semconv.GEN_AI_PROVIDER_NAME] for r in sink.usage_rows()} == {"anthropic"}


def test_a_stream_the_server_cuts_short_is_an_error_row(server: FakeAnthropicServer) -> None:
    server.behave(CLAUDE, CACHED)
    server.script(CLAUDE, AnthropicReply.truncated_stream())
    plane, sink, _ = make_plane(server, max_retries=0, budget=BUDGET)
    with plane:
        with pytest.raises(ProviderError, match="stream ended without"):
            list(plane.chat_model("reasoning").stream("q"))
        plane.flush()

    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "error"
    assert row[semconv.ERROR_TYPE] == "truncated_stream"
    # The answer had begun and its usage never came: it is charged what was reserved for
    # it, not 0.
    assert row[semconv.PRICE_SOURCE] == "reservation"
    assert Decimal(row[semconv.COST_USD]) > 0


def test_a_stream_the_caller_breaks_after_the_first_chunk_is_charged(
    server: FakeAnthropicServer,
) -> None:
    server.behave(CLAUDE, CACHED)
    plane, sink, _ = make_plane(server, budget=BUDGET)
    with plane:
        for _chunk in plane.chat_model("reasoning").stream("q"):
            break
        plane.flush()

    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "cancelled"
    assert row[semconv.PRICE_SOURCE] == "reservation"
    assert Decimal(row[semconv.COST_USD]) > 0


def test_no_credential_for_the_public_endpoint_names_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UsageError, match="set ANTHROPIC_API_KEY"):
        anthropic_chat_model(ModelSpec(provider="anthropic", model=CLAUDE))


def _anthropic_error(kind: type[Exception], status: int, headers: dict[str, str]) -> Exception:
    import anthropic
    import httpx2

    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    response = httpx2.Response(status, headers=headers, request=request)
    assert issubclass(kind, anthropic.APIStatusError)
    return kind("x", response=response, body={"type": "error", "error": {"type": "x"}})


def test_the_anthropic_sdk_errors_are_classified() -> None:
    import anthropic
    import httpx2

    from comptroller.control._classify import classify

    request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    cases = [
        (_anthropic_error(anthropic.RateLimitError, 429, {"retry-after": "7"}), "transport"),
        (_anthropic_error(anthropic.InternalServerError, 500, {}), "transport"),
        (_anthropic_error(anthropic.InternalServerError, 529, {}), "transport"),
        (_anthropic_error(anthropic.AuthenticationError, 401, {}), "other"),
        (_anthropic_error(anthropic.BadRequestError, 400, {}), "other"),
        (anthropic.APIConnectionError(request=request), "transport"),
        (anthropic.APITimeoutError(request=request), "transport"),
    ]
    assert [classify(exc).kind for exc, _ in cases] == [kind for _, kind in cases]
    assert classify(cases[0][0]).retry_after_s == 7.0
    assert classify(cases[-1][0]).error_type == "timeout"


def test_importing_the_control_plane_loads_no_anthropic_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, comptroller.control, comptroller.control.testing\n"
        "print(','.join(m for m in ('anthropic', 'langchain_anthropic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- tools and structured output through the guarded model ----------------------------------


class Verdict(BaseModel):
    score: int
    reason: str


@tool
def get_weather(city: str) -> str:
    """The weather of a city."""
    return "sunny"


def _joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    return whole


async def test_tool_calls_come_back_buffered_and_streamed_and_each_is_priced(
    server: FakeAnthropicServer,
) -> None:
    server.behave(
        CLAUDE,
        AnthropicBehaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    )
    plane, sink, _ = make_plane(server)
    expected = [("get_weather", {"city": "Paris"})]
    with plane:
        model = plane.chat_model("reasoning").bind_tools([get_weather])
        buffered = model.invoke("Weather in Paris?")
        streamed = _joined(list(model.stream("Weather in Paris?")))
        astreamed = _joined([chunk async for chunk in model.astream("Weather in Paris?")])
        # Given the tool's result, the model answers in text.
        answer = model.invoke(
            [
                HumanMessage("Weather in Paris?"),
                buffered,
                ToolMessage("sunny", tool_call_id=buffered.tool_calls[0]["id"]),
            ]
        )
        plane.flush()

    for message in (buffered, streamed, astreamed):
        assert [(c["name"], c["args"]) for c in message.tool_calls] == expected
    assert answer.tool_calls == []
    assert answer.content == "Hello from the fake Anthropic server."
    assert server.requests[0]["tools"][0]["name"] == "get_weather"
    rows = sink.usage_rows()
    assert [r[semconv.OUTCOME] for r in rows] == ["ok"] * 4
    assert all(Decimal(r[semconv.COST_USD]) > 0 for r in rows)


def test_a_forced_tool_choice_is_obeyed_without_a_scripted_call(
    server: FakeAnthropicServer,
) -> None:
    plane, _, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning")
        free = model.bind_tools([get_weather]).invoke("hello")
        forced = model.bind_tools([get_weather], tool_choice="get_weather").invoke("hello")

    assert free.tool_calls == []
    (call,) = forced.tool_calls
    assert call["name"] == "get_weather"
    # A minimal valid instance of the tool's parameters: a non-empty string.
    assert call["args"]["city"] == "example"
    assert server.requests[-1]["tool_choice"] == {"type": "tool", "name": "get_weather"}


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_parses_through_the_guarded_model(
    server: FakeAnthropicServer, method: str
) -> None:
    plane, sink, _ = make_plane(server)
    with plane:
        structured = plane.chat_model("reasoning").with_structured_output(Verdict, method=method)
        verdict = structured.invoke("Rate it")
        streamed = list(structured.stream("Rate it"))[-1]
        plane.flush()

    assert isinstance(verdict, Verdict)
    assert isinstance(streamed, Verdict)
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok", "ok"]


def test_a_scripted_json_answer_is_returned_as_is_under_a_schema(
    server: FakeAnthropicServer,
) -> None:
    server.behave(CLAUDE, AnthropicBehaviour(content='{"score": 4, "reason": "clear"}'))
    plane, _, _ = make_plane(server)
    with plane:
        structured = plane.chat_model("reasoning").with_structured_output(
            Verdict, method="json_schema"
        )
        assert structured.invoke("Rate it") == Verdict(score=4, reason="clear")


def test_a_stop_sequence_cuts_the_answer_as_the_api_does(server: FakeAnthropicServer) -> None:
    server.behave(CLAUDE, AnthropicBehaviour(content="alpha beta END gamma"))
    plane, _, _ = make_plane(server)
    with plane:
        reply = plane.chat_model("reasoning").invoke("q", stop=["END"])

    assert reply.content == "alpha beta "
    assert reply.response_metadata["stop_reason"] == "stop_sequence"


# -- the fake server refuses misuse where the test makes it ---------------------------------


def test_the_fake_server_refuses_misuse_with_what_to_do_instead() -> None:
    idle = FakeAnthropicServer()
    with pytest.raises(RuntimeError, match="not started: use it as a context manager"):
        _ = idle.base_url
    with pytest.raises(TypeError, match="takes an AnthropicBehaviour, not ModelBehaviour"):
        idle.behave(CLAUDE, ModelBehaviour())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes AnthropicReply values .* not ServerReply"):
        idle.script(CLAUDE, ServerReply.server_error())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes an AnthropicBehaviour"):
        FakeAnthropicServer(ModelBehaviour())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_read_tokens must be >= 0"):
        AnthropicBehaviour(cache_read_tokens=-1)


def test_the_fake_server_counts_tokens_as_the_api_does_without_recording_a_call(
    server: FakeAnthropicServer,
) -> None:
    from langchain_anthropic import ChatAnthropic

    bare = ChatAnthropic(model=CLAUDE, base_url=server.base_url, api_key="x", max_retries=0)  # type: ignore[call-arg]
    counted = bare.get_num_tokens_from_messages([HumanMessage("one two three four")])

    assert counted == len(json.dumps("one two three four")) // 4 + 8
    server.behave(CLAUDE, AnthropicBehaviour(input_tokens=321))
    assert bare.get_num_tokens_from_messages([HumanMessage("q")]) == 321
    assert server.request_count() == 0


@tool
def current_time() -> str:
    """The time now."""
    return "noon"


def test_a_forced_call_of_a_tool_without_parameters_has_empty_arguments(
    server: FakeAnthropicServer,
) -> None:
    plane, _, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning").bind_tools([current_time], tool_choice="any")
        (call,) = model.invoke("What time is it?").tool_calls

    assert (call["name"], call["args"]) == ("current_time", {})


# -- LangChain's standard integration suite: the guarded ChatAnthropic ----------------------
# The suite builds models as `chat_model_class(**params)`; `_GuardedClaude` turns those
# parameters into a profile and returns the plane's model for it. The server plays a model
# that uses the tool the prompt names (`magic_function(3)` → `{"input": 3}`), as the
# suite's prompts expect of a real one.


def _last_user_text(request: Mapping[str, Any]) -> str:
    for message in reversed(request.get("messages") or ()):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(block.get("text", "")) for block in content)
            return str(content or "")
    return ""


def _brain(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = [(str(t["name"]), t.get("input_schema") or {}) for t in request.get("tools") or ()]
    if not tools:
        return []
    text = _last_user_text(request)
    named = [tool for tool in tools if tool[0] in text]
    name, schema = max(named, key=lambda tool: len(tool[0])) if named else tools[0]
    properties: dict[str, Any] = schema.get("properties") or {}
    positional = re.search(re.escape(name) + r"\(([^)]*)\)", text)
    if positional is not None:
        values = json.loads(f"[{positional.group(1)}]")
        return [{"name": name, "arguments": dict(zip(properties, values, strict=False))}]
    quoted = re.search(r"'([^']+)'", text)
    strings = [key for key, spec in properties.items() if spec.get("type") == "string"]
    if quoted is not None and strings:
        arguments = {key: "example" for key in schema.get("required", strings)}
        arguments[strings[0]] = quoted.group(1)
        return [{"name": name, "arguments": arguments}]
    return [{"name": name}]


@pytest.fixture(scope="module")
def standard_server() -> Iterator[FakeAnthropicServer]:
    brain = AnthropicBehaviour(content="Hello! How can I help you today?", tool_calls=_brain)
    with FakeAnthropicServer(brain) as running:
        yield running


class _ParamsProfiles:
    """One profile per set of constructor parameters."""

    def __init__(self) -> None:
        self.base_url = ""
        self._profiles: dict[str, ResolvedProfile] = {}

    def purpose_for(self, params: Mapping[str, Any]) -> str:
        # Keyed by the server too: a module fixture may be started again in the same worker.
        purpose = f"standard-{abs(hash(repr((self.base_url, sorted(params.items())))))}"
        self._profiles.setdefault(
            purpose,
            ResolvedProfile(
                purpose=purpose,
                model=ModelRef(provider="anthropic", model=str(params.get("model", CLAUDE))),
                base_url=self.base_url,
                defaults=CallDefaults(
                    temperature=params.get("temperature"),
                    max_tokens=params.get("max_tokens"),
                    timeout_s=params.get("timeout"),
                ),
            ),
        )
        return purpose

    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        return self._profiles[purpose]


class _GuardedClaude(GuardedChatModel):
    """Called with ChatAnthropic's constructor parameters, returns the plane's model for a
    profile holding them (a `GuardedChatModel`, not an instance of this class)."""

    plane: ClassVar[ControlPlane | None] = None
    profiles: ClassVar[_ParamsProfiles] = _ParamsProfiles()

    def __new__(cls, **params: Any) -> GuardedChatModel:  # type: ignore[misc]
        assert cls.plane is not None, "the _plane fixture sets the plane"
        # Retries are the plane's, stop sequences are per call: not profile fields.
        kept = {k: v for k, v in params.items() if k in ("model", "temperature", "max_tokens")}
        model = cls.plane.chat_model(cls.profiles.purpose_for(kept))
        if "output_version" in params:
            model = model.model_copy(update={"output_version": params["output_version"]})
        return model


class TestGuardedChatAnthropicStandard(ChatModelIntegrationTests):
    chat_model_class = _GuardedClaude
    has_tool_choice = True
    supports_image_inputs = False
    supports_json_mode = False

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": CLAUDE}

    @pytest.fixture(autouse=True)
    def _plane(self, standard_server: FakeAnthropicServer) -> Iterator[None]:
        _GuardedClaude.profiles.base_url = standard_server.base_url
        with ControlPlane(
            load_settings(telemetry="none"),
            resolver=_GuardedClaude.profiles,
            guard=MemoryGuard(),
            sink=InMemorySink(),
            retry_policy=RetryPolicy(max_retries=0),
            circuit_policy=CircuitPolicy(consecutive_failures=1000),
        ) as plane:
            _GuardedClaude.plane = plane
            yield
        _GuardedClaude.plane = None


def test_the_guarded_model_counts_tokens_as_its_profiles_model_does(
    server: FakeAnthropicServer,
) -> None:
    server.behave(CLAUDE, AnthropicBehaviour(input_tokens=321))
    plane, sink, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning", org="acme")
        assert model.get_num_tokens_from_messages([HumanMessage("q")]) == 321
        assert plane.flush()
    assert server.request_count() == 0  # counting is not a model call
    assert sink.usage_rows() == []
