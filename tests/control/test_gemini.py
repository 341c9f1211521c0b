"""Gemini, built in: ChatGoogleGenerativeAI through the control plane over real HTTP to a
local Gemini API server (the real `google-genai` SDK, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    ExhaustedFallbacks,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control._providers import ModelSpec, google_chat_model
from comptroller.control.testing import (
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
        assert row[semconv.GEN_AI_PROVIDER_NAME] == provider
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
