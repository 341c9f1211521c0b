"""LangChain's standard chat-model suites, run against bare ChatOpenAI and the guarded model.

Both models talk over real HTTP to one `FakeOpenAIServer` per module. Bare `ChatOpenAI` is
the baseline: the tests it passes here are what the suites expect of a chat model over this
server, and the guarded model (`ControlPlane.chat_model`, its profile pointing at the same
server) must pass the same ones. Both claim the same capabilities (`_Claims`).

The suites build models by calling `chat_model_class(**params)`; a guarded model is built by
a control plane from a profile instead, so for the guarded suites `_GuardedFromParams` turns
ChatOpenAI's constructor parameters into a profile and returns the plane's model for it.

Tests the baseline cannot pass here are skipped for both (`_NOT_HERE`); the guarded model's
own failures are strict xfails (`_GUARDED_GAPS`): remove an entry once the guarded model
passes that test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    GuardedChatModel,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    RetryPolicy,
)
from comptroller.control.testing import FakeClock, FakeOpenAIServer, InMemorySink, ModelBehaviour

pytestmark = [
    # Library warnings the suites trigger in ChatOpenAI whatever the server: it model_dumps
    # the openai SDK's parsed stream chunks (whose `parsed` is typed None), and warns that
    # the pydantic-v1 test schema makes it fall back to function calling.
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
    pytest.mark.filterwarnings("ignore:Received a Pydantic BaseModel V1 schema:UserWarning"),
]

MODEL = "gpt-4o-mini"
OVERRIDE_MODEL = "gpt-4o"
"""`model_override_value`: a per-call `model=` the server answers as."""
CACHED_MODEL = "gpt-4.1-mini"
"""Answers with cached prompt tokens (`invoke_with_cache_read_input`)."""
REASONING_MODEL = "o4-mini"
"""Answers with reasoning tokens (`invoke_with_reasoning_output`)."""
INVALID_JSON_MODEL = "gpt-4.1-nano"
"""Answers JSON that does not match the requested schema."""
UNIT_BASE_URL = "http://127.0.0.1:9/v1"
"""The unit suites never call the model; a fixed URL keeps ChatOpenAI's serialised form
(the `test_serdes` snapshot) the same on every run."""


# -- the scripted model behind the server ----------------------------------------------------
# What a model decides from the prompt, for the suites' prompts: which tool to call with
# which arguments, which keys a JSON answer has. The server does the rest (tool_choice,
# response_format schemas, stop sequences, streaming, usage).


def _last_user_text(request: Mapping[str, Any]) -> str:
    for message in reversed(request.get("messages") or ()):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(part.get("text", "")) for part in content)
            return str(content or "")
    return ""


def _answer(request: Mapping[str, Any]) -> str:
    """Text, or for JSON mode an object with the keys the prompt names ('setup', …)."""
    if (request.get("response_format") or {}).get("type") == "json_object":
        keys = re.findall(r"'(\w+)'", _last_user_text(request))
        return json.dumps({key: f"the {key}" for key in keys})
    return "Hello! How can I help you today?"


def _tool_calls(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Use the tool the prompt names (`magic_function(3)` → `{"input": 3}`), else the first;
    a quoted name in the prompt fills the tool's first string parameter."""
    functions = [tool["function"] for tool in request.get("tools") or ()]
    if not functions:
        return []
    text = _last_user_text(request)
    named = [f for f in functions if f["name"] in text]
    function = max(named, key=lambda f: len(f["name"])) if named else functions[0]
    call: dict[str, Any] = {"name": function["name"]}
    parameters = function.get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    positional = re.search(re.escape(function["name"]) + r"\(([^)]*)\)", text)
    if positional is not None:
        values = json.loads(f"[{positional.group(1)}]")
        call["arguments"] = dict(zip(properties, values, strict=False))
        return [call]
    quoted = re.search(r"'([^']+)'", text)
    strings = [name for name, spec in properties.items() if spec.get("type") == "string"]
    if quoted is not None and strings:
        call["arguments"] = {name: "example" for name in parameters.get("required", strings)}
        call["arguments"][strings[0]] = quoted.group(1)
    return [call]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    scripted = ModelBehaviour(content=_answer, tool_calls=_tool_calls)
    with FakeOpenAIServer(default=scripted) as running:
        running.behave(CACHED_MODEL, replace(scripted, prompt_tokens=40, cached_tokens=32))
        running.behave(REASONING_MODEL, replace(scripted, reasoning_tokens=24))
        yield running


# -- the guarded model, built as the suites build models ------------------------------------


class _ParamsProfiles:
    """A profile resolver with one profile per set of constructor parameters."""

    def __init__(self) -> None:
        self._purposes: dict[str, str] = {}
        self._profiles: dict[str, ResolvedProfile] = {}

    def purpose_for(self, params: Mapping[str, Any]) -> str:
        key = repr(sorted(params.items()))
        purpose = self._purposes.get(key)
        if purpose is None:
            purpose = self._purposes[key] = f"standard-{len(self._purposes)}"
            self._profiles[purpose] = ResolvedProfile(
                purpose=purpose,
                model=ModelRef(provider="openai", model=str(params.get("model", MODEL))),
                base_url=params.get("base_url"),
                defaults=CallDefaults(
                    temperature=params.get("temperature"),
                    max_tokens=params.get("max_tokens"),
                    timeout_s=params.get("timeout"),
                ),
            )
        return purpose

    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        return self._profiles[purpose]


_PROFILE_PARAMS = frozenset({"model", "base_url", "temperature", "max_tokens", "timeout"})
# Constructor parameters a guarded model takes elsewhere: the key from the credential store
# (a local server needs none), retries from the plane's RetryPolicy, usage is always
# streamed, `streaming` only picks a code path; a profile has no stop sequences, so `stop`
# is per call (`invoke(…, stop=[…])`).
_ELSEWHERE = frozenset({"api_key", "max_retries", "stream_usage", "streaming", "stop"})


class _GuardedFromParams(GuardedChatModel):
    """`GuardedChatModel`, built the way the suites build models: called with ChatOpenAI's
    constructor parameters, it returns the control plane's model for a profile holding them
    (a `GuardedChatModel`, not an instance of this class)."""

    plane: ClassVar[ControlPlane | None] = None
    profiles: ClassVar[_ParamsProfiles] = _ParamsProfiles()

    def __new__(cls, **params: Any) -> GuardedChatModel:  # type: ignore[misc]
        unknown = set(params) - _PROFILE_PARAMS - _ELSEWHERE - {"output_version"}
        if unknown:
            raise TypeError(f"no profile field for {sorted(unknown)}")
        assert cls.plane is not None, "the guarded_plane fixture sets the plane"
        profile_params = {k: v for k, v in params.items() if k in _PROFILE_PARAMS}
        model = cls.plane.chat_model(cls.profiles.purpose_for(profile_params))
        if "output_version" in params:
            # The plane shares one model per scope: change a copy.
            model = model.model_copy(update={"output_version": params["output_version"]})
        return model


@pytest.fixture(scope="module")
def guarded_plane() -> Iterator[ControlPlane]:
    clock = FakeClock()
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=_GuardedFromParams.profiles,
        guard=MemoryGuard(clock=clock),
        sink=InMemorySink(),
        clock=clock,
        retry_policy=RetryPolicy(max_retries=2, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=1000),
    )
    _GuardedFromParams.plane = plane
    with plane:
        yield plane
    _GuardedFromParams.plane = None


# -- what both claim ------------------------------------------------------------------------

_NOT_HERE = {
    "test_image_inputs": "downloads an image from the internet (no network here)",
    "test_image_tool_message": "downloads an image from the internet (no network here)",
    "test_pdf_inputs": "downloads a PDF from the internet (no network here)",
    "test_pdf_tool_message": "downloads a PDF from the internet (no network here)",
    "test_audio_inputs": "downloads a WAV file from the internet (no network here)",
    "test_anthropic_inputs": "downloads an image from the internet (no network here)",
}
"""Tests neither model can pass against a local server, with why."""

_GUARDED_GAPS: dict[str, str] = {}
"""The guarded model's failures of tests the baseline passes, with their cause."""


class _Claims:
    """The capabilities ChatOpenAI claims in its own standard tests; both suites claim them."""

    has_tool_calling = True
    has_tool_choice = True
    has_structured_output = True
    supports_json_mode = True
    supports_image_inputs = True
    supports_image_urls = True
    supports_pdf_inputs = True
    supports_audio_inputs = True
    supports_image_tool_message = True
    supports_pdf_tool_message = True
    supports_anthropic_inputs = True
    returns_usage_metadata = True
    supports_model_override = True
    model_override_value = OVERRIDE_MODEL
    supported_usage_metadata_details: ClassVar[dict[Literal["invoke", "stream"], list[Any]]] = {
        "invoke": ["reasoning_output", "cache_read_input"],
        "stream": ["reasoning_output", "cache_read_input"],
    }
    guarded: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def _known_outcomes(self, request: pytest.FixtureRequest) -> None:
        name = request.node.originalname
        if name in _NOT_HERE:
            pytest.skip(_NOT_HERE[name])
        if self.guarded and name in _GUARDED_GAPS:
            request.applymarker(pytest.mark.xfail(reason=_GUARDED_GAPS[name], strict=True))


class _Calls(_Claims):
    """Integration: the models call the module's server."""

    chat_model_class: type[BaseChatModel]
    url: str = ""

    @pytest.fixture(autouse=True)
    def _server_url(self, server: FakeOpenAIServer) -> None:
        self.url = server.base_url

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "base_url": self.url, "api_key": "fake", "stream_usage": True}

    def _usage_of(self, model_name: str, *, stream: bool) -> AIMessage:
        model = self.chat_model_class(**{**self.chat_model_params, "model": model_name})
        if not stream:
            return model.invoke("Hello")
        full: AIMessageChunk | None = None
        for chunk in model.stream("Hello"):
            assert isinstance(chunk, AIMessageChunk)
            full = chunk if full is None else full + chunk
        assert full is not None
        return full

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        return self._usage_of(CACHED_MODEL, stream=stream)

    def invoke_with_reasoning_output(self, *, stream: bool = False) -> AIMessage:
        return self._usage_of(REASONING_MODEL, stream=stream)


class _UnitParams(_Claims):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": MODEL, "base_url": UNIT_BASE_URL, "api_key": "fake", "stream_usage": True}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # The key from the environment (ChatOpenAI refuses to build without one; test_serdes
        # reloads the serialised model with it).
        return {"OPENAI_API_KEY": "fake"}, {"model": MODEL, "base_url": UNIT_BASE_URL}, {}


# -- the suites -----------------------------------------------------------------------------


class TestChatOpenAIUnit(_UnitParams, ChatModelUnitTests):
    chat_model_class = ChatOpenAI


class TestChatOpenAIIntegration(_Calls, ChatModelIntegrationTests):
    chat_model_class = ChatOpenAI


class TestGuardedUnit(_UnitParams, ChatModelUnitTests):
    chat_model_class = _GuardedFromParams
    guarded = True

    @pytest.fixture(autouse=True)
    def _plane(self, guarded_plane: ControlPlane) -> None:
        """The plane that builds this suite's models."""


class TestGuardedIntegration(_Calls, ChatModelIntegrationTests):
    chat_model_class = _GuardedFromParams
    guarded = True

    @pytest.fixture(autouse=True)
    def _plane(self, guarded_plane: ControlPlane) -> None:
        """The plane that builds this suite's models."""


# -- beyond the suites ----------------------------------------------------------------------


def test_guarded_model_override_is_recorded_under_the_model_called(
    server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    sink = InMemorySink()
    profiles = _ParamsProfiles()
    purpose = profiles.purpose_for({"model": MODEL, "base_url": server.base_url})
    with ControlPlane(
        load_settings(telemetry="none"),
        resolver=profiles,
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
    ) as plane:
        answer = plane.chat_model(purpose).invoke("Hello", model=OVERRIDE_MODEL)
        assert plane.flush()

    assert answer.response_metadata["model_name"] == OVERRIDE_MODEL
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_REQUEST_MODEL] == OVERRIDE_MODEL


class _Joke(BaseModel):
    setup: str
    punchline: str


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_guarded_invalid_structured_output_raises_what_chat_openai_raises(
    server: FakeOpenAIServer,
    guarded_plane: ControlPlane,
    method: Literal["json_schema", "json_mode"],
) -> None:
    server.behave(INVALID_JSON_MODEL, ModelBehaviour(content='{"setup": 1}'))
    params = {"model": INVALID_JSON_MODEL, "base_url": server.base_url, "api_key": "fake"}

    with pytest.raises(ValueError, match="validation error") as baseline:
        ChatOpenAI(**params).with_structured_output(_Joke, method=method).invoke("A joke")
    guarded = _GuardedFromParams(**params).with_structured_output(_Joke, method=method)
    with pytest.raises(type(baseline.value), match="validation error"):
        guarded.invoke("A joke")
