"""Gemini, built in: ChatGoogleGenerativeAI through the control plane over real HTTP to a
local Gemini API server (the real `google-genai` SDK, no network)."""

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
from comptroller.control._providers import ModelSpec, google_chat_model
from comptroller.control.testing import (
    AnthropicBehaviour,
    FakeClock,
    FakeGeminiServer,
    GeminiBehaviour,
    GeminiReply,
    InMemorySink,
)
from comptroller.errors import UsageError

FLASH = "gemini-2.5-flash"
LITE = "gemini-2.5-flash-lite"
BUDGET = BudgetSpec(daily_usd=Decimal(10))
THINKING = GeminiBehaviour(
    content="one two three",
    prompt_tokens=3000,
    candidates_tokens=40,
    cached_tokens=2048,
    thoughts_tokens=900,
)


@pytest.fixture
def server() -> Iterator[FakeGeminiServer]:
    # One per test: the SDK's async client pools connections, and a pooled connection must
    # not outlive the event loop of the test that opened it.
    with FakeGeminiServer() as running:
        yield running


def make_plane(
    server: FakeGeminiServer,
    *,
    provider: str = "gcp.gemini",
    model: str = FLASH,
    fallbacks: tuple[str, ...] = (),
    max_retries: int = 2,
    **kw: Any,
) -> tuple[ControlPlane, InMemorySink, FakeClock]:
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
    return plane, sink, clock


def genai_cost(behaviour: GeminiBehaviour, model: str = FLASH) -> Decimal:
    """What genai-prices charges for the usage the server reports: the prompt includes the
    cached tokens, and the thinking tokens are output tokens."""
    assert behaviour.prompt_tokens is not None
    assert behaviour.candidates_tokens is not None
    price = calc_price(
        GPUsage(
            input_tokens=behaviour.prompt_tokens,
            cache_read_tokens=behaviour.cached_tokens,
            output_tokens=behaviour.candidates_tokens + behaviour.thoughts_tokens,
        ),
        model_ref=model,
        provider_id="google",
    )
    return Decimal(price.total_price)


def test_thinking_and_cached_tokens_make_a_difference_the_test_can_see() -> None:
    # Guards the tests below: were thoughts dropped or cache reads priced as fresh input,
    # they would fail.
    no_thoughts = GeminiBehaviour(prompt_tokens=3000, candidates_tokens=40, cached_tokens=2048)
    no_cache = GeminiBehaviour(prompt_tokens=3000, candidates_tokens=40, thoughts_tokens=900)
    assert genai_cost(THINKING) > genai_cost(no_thoughts)
    assert genai_cost(THINKING) < genai_cost(no_cache)


@pytest.mark.parametrize("provider", ["gcp.gemini", "google"])
async def test_invoke_ainvoke_stream_astream_land_one_row_each_priced_as_genai_prices(
    server: FakeGeminiServer, provider: str
) -> None:
    server.behave(FLASH, THINKING)
    plane, sink, _ = make_plane(server, provider=provider)
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
    expected = genai_cost(THINKING)
    assert [Decimal(row[semconv.COST_USD]) for row in rows] == [expected] * 4
    for row in rows:
        assert row[semconv.OUTCOME] == "ok"
        # `google` is an alias: the row names the provider as OpenTelemetry does.
        assert row[semconv.GEN_AI_PROVIDER_NAME] == "gcp.gemini"
        assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 3000
        # Gemini's candidates exclude the thoughts; the row's output includes them.
        assert row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 40 + 900
        assert row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2048
        assert row[semconv.PRICE_SOURCE].startswith("genai-prices@")
    assert server.request_count(FLASH) == 4
    # Without a profile value, the plane's default output cap (what the call's reservation
    # was sized for) is sent.
    default_cap = load_settings(telemetry="none").control.default_max_output_tokens
    assert {body["generationConfig"]["maxOutputTokens"] for body in server.requests} == {
        default_cap
    }


def test_the_attempt_span_names_the_gemini_provider(server: FakeGeminiServer) -> None:
    server.behave(FLASH, THINKING)
    plane, sink, _ = make_plane(server, defaults=CallDefaults(max_tokens=256))
    with plane:
        plane.chat_model("reasoning").invoke("q")
        plane.flush()

    (span,) = sink.attempt_spans()
    assert span.name == f"chat {FLASH}"
    attrs = span.attributes
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "gcp.gemini"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == FLASH
    assert attrs[semconv.GEN_AI_RESPONSE_MODEL] == FLASH
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 2048
    assert server.requests[-1]["generationConfig"]["maxOutputTokens"] == 256


def test_a_429_is_retried_after_its_retry_after_without_sleeping(
    server: FakeGeminiServer,
) -> None:
    server.behave(FLASH, THINKING)
    server.script(FLASH, GeminiReply.rate_limited(retry_after_s=4))
    plane, sink, clock = make_plane(server)
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "one two three"
        plane.flush()

    assert clock.sleeps[0] == 4.0
    assert [r.get(semconv.ERROR_TYPE) for r in sink.usage_rows()] == ["429", None]
    # The SDK's own retries are off: comptroller's retry is the only one.
    assert server.request_count(FLASH) == 2


@pytest.mark.parametrize(
    "failure",
    [GeminiReply.server_error(), GeminiReply.server_error(503), GeminiReply.overloaded()],
)
def test_5xx_and_overloaded_are_retried_then_fall_back(
    server: FakeGeminiServer, failure: GeminiReply
) -> None:
    server.behave(LITE, GeminiBehaviour(content="from lite"))
    server.script(FLASH, failure, failure, failure)
    plane, sink, _ = make_plane(server, fallbacks=(f"gcp.gemini:{LITE}",))
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "from lite"
        plane.flush()

    rows = sink.usage_rows()
    status = str(failure.status)
    assert [(r[semconv.GEN_AI_REQUEST_MODEL], r.get(semconv.ERROR_TYPE)) for r in rows] == [
        (FLASH, status),
        (FLASH, status),
        (FLASH, status),
        (LITE, None),
    ]
    # The provider answered with an error status: those attempts cost nothing.
    assert [Decimal(r[semconv.COST_USD]) for r in rows[:3]] == [Decimal(0)] * 3
    assert server.request_count(FLASH) == 3


def test_when_every_model_fails_the_call_raises_exhausted_fallbacks(
    server: FakeGeminiServer,
) -> None:
    server.script(FLASH, *[GeminiReply.server_error(503)] * 2)
    server.script(LITE, *[GeminiReply.server_error(503)] * 2)
    plane, sink, _ = make_plane(server, fallbacks=(f"gcp.gemini:{LITE}",), max_retries=1)
    with plane:
        with pytest.raises(ExhaustedFallbacks):
            plane.chat_model("reasoning").invoke("q")
        plane.flush()

    assert [r.get(semconv.ERROR_TYPE) for r in sink.usage_rows()] == ["503"] * 4


def test_a_stream_the_server_cuts_short_is_an_error_row(server: FakeGeminiServer) -> None:
    server.behave(FLASH, THINKING)
    server.script(FLASH, GeminiReply.truncated_stream())
    plane, sink, _ = make_plane(server, max_retries=0, budget=BUDGET)
    with plane:
        with pytest.raises(ProviderError, match="stream ended without"):
            list(plane.chat_model("reasoning").stream("q"))
        plane.flush()

    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "error"
    assert row[semconv.ERROR_TYPE] == "truncated_stream"
    assert Decimal(row[semconv.COST_USD]) > 0


def test_no_credential_for_the_public_endpoint_names_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(UsageError, match="set GOOGLE_API_KEY"):
        google_chat_model(ModelSpec(provider="gcp.gemini", model=FLASH))


def test_the_key_comes_from_gemini_api_key_when_the_profile_has_none(
    server: FakeGeminiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-from-env")
    model = google_chat_model(
        ModelSpec(provider="gcp.gemini", model=FLASH, base_url=server.base_url)
    )
    model.invoke("q")

    assert server.headers[-1]["x-goog-api-key"] == "gemini-key-from-env"


def _google_error(status: int, headers: dict[str, str]) -> Exception:
    import httpx
    from google.genai import errors

    request = httpx.Request("POST", "https://generativelanguage.googleapis.com/v1beta/x")
    response = httpx.Response(status, headers=headers, request=request)
    body = {"error": {"code": status, "message": "x", "status": "X"}}
    kind = errors.ClientError if status < 500 else errors.ServerError
    return kind(status, body, response)


def _wrapped(exc: Exception, kind: type[Exception]) -> Exception:
    """As langchain-google-genai re-raises it: a LangChain `ModelError`, the SDK's error
    only as its cause."""
    wrapped = kind("Error calling model")
    wrapped.__cause__ = exc
    return wrapped


def test_the_google_genai_errors_are_classified() -> None:
    import httpx
    from langchain_google_genai.chat_models import (
        GoogleAuthenticationError,
        GoogleRateLimitError,
    )

    from comptroller.control._classify import classify

    rate_limited = _wrapped(_google_error(429, {"retry-after": "7"}), GoogleRateLimitError)
    cases = [
        (rate_limited, "transport"),
        (_google_error(429, {}), "transport"),
        (_google_error(500, {}), "transport"),
        (_google_error(503, {}), "transport"),
        (_google_error(529, {}), "transport"),
        (_wrapped(_google_error(401, {}), GoogleAuthenticationError), "other"),
        (_google_error(400, {}), "other"),
        (httpx.ConnectError("refused"), "transport"),
    ]
    assert [classify(exc).kind for exc, _ in cases] == [kind for _, kind in cases]
    assert classify(rate_limited).retry_after_s == 7.0
    assert classify(rate_limited).error_type == "429"
    assert classify(cases[5][0]).error_type == "401"


def test_a_429_says_when_to_retry_in_its_body_as_gemini_does(server: FakeGeminiServer) -> None:
    import httpx

    server.script(FLASH, GeminiReply.rate_limited(retry_after_s=37))
    response = httpx.post(
        f"{server.base_url}/v1beta/models/{FLASH}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "q"}]}]},
    )

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    ]


def test_a_gemini_429_without_a_retry_after_header_waits_its_retry_delay() -> None:
    import httpx
    from google.genai import errors

    from comptroller.control._classify import classify

    request = httpx.Request("POST", "https://generativelanguage.googleapis.com/v1beta/x")
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    exc = errors.ClientError(429, body, httpx.Response(429, request=request))

    assert classify(exc).retry_after_s == 37.0


def test_importing_the_control_plane_loads_no_google_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, comptroller.control, comptroller.control.testing\n"
        "print(','.join(m for m in ('google.genai', 'langchain_google_genai') "
        "if m in sys.modules))"
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


async def test_function_calls_come_back_buffered_and_streamed_and_each_is_priced(
    server: FakeGeminiServer,
) -> None:
    server.behave(
        FLASH,
        GeminiBehaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
    )
    plane, sink, _ = make_plane(server)
    expected = [("get_weather", {"city": "Paris"})]
    with plane:
        model = plane.chat_model("reasoning").bind_tools([get_weather])
        buffered = model.invoke("Weather in Paris?")
        streamed = _joined(list(model.stream("Weather in Paris?")))
        astreamed = _joined([chunk async for chunk in model.astream("Weather in Paris?")])
        # Given the function's response, the model answers in text.
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
    assert answer.content == "Hello from the fake Gemini server."
    declared = server.requests[0]["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather"
    rows = sink.usage_rows()
    assert [r[semconv.OUTCOME] for r in rows] == ["ok"] * 4
    assert all(Decimal(r[semconv.COST_USD]) > 0 for r in rows)


def test_a_forced_function_is_called_without_a_scripted_call(server: FakeGeminiServer) -> None:
    plane, _, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning")
        free = model.bind_tools([get_weather]).invoke("hello")
        forced = model.bind_tools([get_weather], tool_choice="get_weather").invoke("hello")

    assert free.tool_calls == []
    (call,) = forced.tool_calls
    assert call["name"] == "get_weather"
    # A minimal valid instance of the declared (OpenAPI, upper-case typed) parameters.
    assert call["args"] == {"city": "example"}
    config = server.requests[-1]["toolConfig"]["functionCallingConfig"]
    assert config == {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_structured_output_parses_through_the_guarded_model(
    server: FakeGeminiServer, method: str
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
    server: FakeGeminiServer,
) -> None:
    server.behave(FLASH, GeminiBehaviour(content='{"score": 4, "reason": "clear"}'))
    plane, _, _ = make_plane(server)
    with plane:
        structured = plane.chat_model("reasoning").with_structured_output(Verdict)
        assert structured.invoke("Rate it") == Verdict(score=4, reason="clear")


def test_a_stop_sequence_cuts_the_answer_as_the_api_does(server: FakeGeminiServer) -> None:
    server.behave(FLASH, GeminiBehaviour(content="alpha beta END gamma"))
    plane, _, _ = make_plane(server)
    with plane:
        reply = plane.chat_model("reasoning").invoke("q", stop=["END"])

    assert reply.content == "alpha beta "


# -- the fake server refuses misuse where the test makes it ---------------------------------


def test_the_fake_server_refuses_misuse_with_what_to_do_instead() -> None:
    idle = FakeGeminiServer()
    with pytest.raises(RuntimeError, match="not started: use it as a context manager"):
        _ = idle.base_url
    with pytest.raises(TypeError, match="takes a GeminiBehaviour, not AnthropicBehaviour"):
        idle.behave(FLASH, AnthropicBehaviour())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes GeminiReply values .* not str"):
        idle.script(FLASH, "429")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a GeminiBehaviour"):
        FakeGeminiServer(AnthropicBehaviour())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thoughts_tokens must be >= 0"):
        GeminiBehaviour(thoughts_tokens=-5)


def test_the_fake_server_counts_tokens_as_the_api_does_without_recording_a_call(
    server: FakeGeminiServer,
) -> None:
    from langchain_google_genai import ChatGoogleGenerativeAI

    bare = ChatGoogleGenerativeAI(model=FLASH, base_url=server.base_url, api_key="x")  # type: ignore[call-arg]
    server.behave(FLASH, GeminiBehaviour(prompt_tokens=1234))

    assert bare.get_num_tokens("one two three four") == 1234
    assert server.request_count() == 0


def test_json_mode_without_a_schema_answers_a_json_object(server: FakeGeminiServer) -> None:
    import httpx

    response = httpx.post(
        f"{server.base_url}/v1beta/models/{FLASH}:generateContent",
        json={
            "contents": [{"role": "user", "parts": [{"text": "q"}]}],
            "generationConfig": {"responseMimeType": "application/json"},
        },
    )

    text = response.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert json.loads(text) == {"content": "Hello from the fake Gemini server."}


@tool
def current_time() -> str:
    """The time now."""
    return "noon"


def test_a_forced_call_of_a_function_without_parameters_has_empty_arguments(
    server: FakeGeminiServer,
) -> None:
    plane, _, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning").bind_tools([current_time], tool_choice="any")
        (call,) = model.invoke("What time is it?").tool_calls

    assert (call["name"], call["args"]) == ("current_time", {})


# -- LangChain's standard integration suite: the guarded ChatGoogleGenerativeAI -------------
# The suite builds models as `chat_model_class(**params)`; `_GuardedGemini` turns those
# parameters into a profile and returns the plane's model for it. The server plays a model
# that calls the function the prompt names (`magic_function(3)` → `{"input": 3}`), as the
# suite's prompts expect of a real one.


def _last_user_text(request: Mapping[str, Any]) -> str:
    for content in reversed(request.get("contents") or ()):
        if content.get("role") == "user":
            return " ".join(str(part.get("text", "")) for part in content.get("parts") or ())
    return ""


def _brain(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = [
        (str(d["name"]), d.get("parametersJsonSchema") or d.get("parameters") or {})
        for tool_ in request.get("tools") or ()
        for d in tool_.get("functionDeclarations") or ()
    ]
    if not tools:
        return []
    text = _last_user_text(request)
    named = [tool_ for tool_ in tools if tool_[0] in text]
    name, schema = max(named, key=lambda tool_: len(tool_[0])) if named else tools[0]
    properties: dict[str, Any] = schema.get("properties") or {}
    positional = re.search(re.escape(name) + r"\(([^)]*)\)", text)
    if positional is not None:
        values = json.loads(f"[{positional.group(1)}]")
        return [{"name": name, "arguments": dict(zip(properties, values, strict=False))}]
    quoted = re.search(r"'([^']+)'", text)
    strings = [k for k, spec in properties.items() if str(spec.get("type")).lower() == "string"]
    if quoted is not None and strings:
        arguments = {key: "example" for key in schema.get("required", strings)}
        arguments[strings[0]] = quoted.group(1)
        return [{"name": name, "arguments": arguments}]
    return [{"name": name}]


@pytest.fixture(scope="module")
def standard_server() -> Iterator[FakeGeminiServer]:
    brain = GeminiBehaviour(content="Hello! How can I help you today?", tool_calls=_brain)
    with FakeGeminiServer(brain) as running:
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
                model=ModelRef(provider="gcp.gemini", model=str(params.get("model", FLASH))),
                base_url=self.base_url,
                defaults=CallDefaults(
                    temperature=params.get("temperature"),
                    max_tokens=params.get("max_tokens"),
                ),
            ),
        )
        return purpose

    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        return self._profiles[purpose]


class _GuardedGemini(GuardedChatModel):
    """Called with ChatGoogleGenerativeAI's constructor parameters, returns the plane's model
    for a profile holding them (a `GuardedChatModel`, not an instance of this class)."""

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


class TestGuardedChatGeminiStandard(ChatModelIntegrationTests):
    chat_model_class = _GuardedGemini
    has_tool_choice = True
    supports_image_inputs = False
    supports_json_mode = True

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": FLASH}

    @pytest.fixture(autouse=True)
    def _plane(self, standard_server: FakeGeminiServer) -> Iterator[None]:
        _GuardedGemini.profiles.base_url = standard_server.base_url
        with ControlPlane(
            load_settings(telemetry="none"),
            resolver=_GuardedGemini.profiles,
            guard=MemoryGuard(),
            sink=InMemorySink(),
            retry_policy=RetryPolicy(max_retries=0),
            circuit_policy=CircuitPolicy(consecutive_failures=1000),
        ) as plane:
            _GuardedGemini.plane = plane
            yield
        _GuardedGemini.plane = None


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
async def test_a_calls_output_cap_reaches_each_provider_of_the_chain_under_its_own_name(
    server: FakeGeminiServer, name: str
) -> None:
    # The caller names the cap once; Gemini reads max_output_tokens (its request config
    # refuses max_tokens) and Anthropic max_tokens, also after a fallback across them.
    from comptroller.control.testing import FakeAnthropicServer

    with FakeAnthropicServer() as claude:
        plane, sink, _ = make_plane(
            server,
            fallbacks=(f"anthropic:claude-haiku-4-5@{claude.base_url}",),
            max_retries=0,
            allow_cross_provider=True,
        )
        with plane:
            model = plane.chat_model("reasoning", org="acme")
            assert model.invoke("q", **{name: 77}).content
            assert [c async for c in model.astream("q", **{name: 78})]
            server.script(FLASH, GeminiReply.server_error(503))
            assert model.invoke("q", **{name: 79}).content
            assert plane.flush()
        caps = [body["generationConfig"]["maxOutputTokens"] for body in server.requests]
        assert caps == [77, 78, 79]
        assert [body["max_tokens"] for body in claude.requests] == [79]
    depths = [row[semconv.FALLBACK_DEPTH] for row in sink.usage_rows()]
    assert depths == [0, 0, 0, 1]
    # The spans say what was sent, not the profile's default.
    sent = [
        (s.attributes or {}).get(semconv.GEN_AI_REQUEST_MAX_TOKENS) for s in sink.attempt_spans()
    ]
    assert sorted(sent) == [77, 78, 79, 79]


def test_the_guarded_model_counts_tokens_as_its_profiles_model_does(
    server: FakeGeminiServer,
) -> None:
    server.behave(FLASH, GeminiBehaviour(prompt_tokens=1234))
    plane, sink, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning", org="acme")
        assert model.get_num_tokens("one two three four") == 1234
        assert plane.flush()
    assert server.request_count() == 0  # counting is not a model call
    assert sink.usage_rows() == []
