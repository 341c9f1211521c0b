"""End to end: ChatOpenAI through the control plane over real HTTP to a local OpenAI server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    CircuitPolicy,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import (
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture
def own_server() -> Iterator[FakeOpenAIServer]:
    """A server per test: langchain-openai caches its async HTTP client per base URL, and a
    pooled connection cannot outlive the event loop of the test that opened it."""
    with FakeOpenAIServer() as running:
        yield running


def make_plane(
    server: FakeOpenAIServer, *, fallbacks: tuple[str, ...] = (), **kw: Any
) -> tuple[ControlPlane, InMemorySink, FakeClock]:
    clock = FakeClock()
    sink = InMemorySink()
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model=kw.pop("model", MODEL)),
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
        retry_policy=RetryPolicy(max_retries=2, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=50),
    )
    return plane, sink, clock


def genai_cost(model: str, inp: int, out: int, cached: int) -> Decimal:
    price = calc_price(
        GPUsage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached),
        model_ref=model,
        provider_id="openai",
    )
    return Decimal(price.total_price)


def test_chat_openai_call_emits_a_client_span_and_a_priced_usage_row(
    server: FakeOpenAIServer,
) -> None:
    server.behave(
        MODEL,
        ModelBehaviour(
            content="Paris.", prompt_tokens=1500, completion_tokens=40, cached_tokens=1024
        ),
    )
    plane, sink, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        answer = model.invoke("Capital of France?")
        plane.flush()

    assert answer.content == "Paris."
    (span,) = sink.attempt_spans()
    assert span.name == f"chat {MODEL}"
    assert span.kind == SpanKind.CLIENT
    attrs = span.attributes
    assert attrs[semconv.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == MODEL
    assert attrs[semconv.GEN_AI_RESPONSE_MODEL] == MODEL
    assert str(attrs[semconv.GEN_AI_RESPONSE_ID]).startswith("chatcmpl-fake")
    assert attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1500
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 40
    assert attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1024
    assert attrs[semconv.SERVER_ADDRESS] == "127.0.0.1"
    assert attrs[semconv.PURPOSE] == "reasoning"
    (call,) = sink.call_spans()
    assert span.parent is not None
    assert span.parent.span_id == call.context.span_id
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 1500
    assert row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1024
    assert Decimal(row[semconv.COST_USD]) == genai_cost(MODEL, 1500, 40, 1024)
    assert row[semconv.PRICE_SOURCE].startswith("genai-prices@")
    (record,) = [r for r in sink.log_records() if r.log_record.event_name == semconv.EVENT_USAGE]
    assert record.log_record.span_id == span.context.span_id
    assert server.request_count(MODEL) >= 1


async def test_streamed_cached_tokens_are_priced_exactly_as_buffered(
    own_server: FakeOpenAIServer,
) -> None:
    server = own_server
    server.behave(
        "gpt-4o",
        ModelBehaviour(
            content="one two three", prompt_tokens=2048, completion_tokens=3, cached_tokens=1536
        ),
    )
    plane, sink, _ = make_plane(server, model="gpt-4o")
    with plane:
        model = plane.chat_model("reasoning")
        buffered = await model.ainvoke("q")
        streamed = "".join([str(c.content) async for c in model.astream("q")])
        sync_streamed = "".join(str(c.content) for c in model.stream("q"))
        plane.flush()

    assert buffered.content == streamed == sync_streamed == "one two three"
    rows = sink.usage_rows()
    assert len(rows) == 3
    expected = genai_cost("gpt-4o", 2048, 3, 1536)
    assert [Decimal(row[semconv.COST_USD]) for row in rows] == [expected] * 3
    assert [row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] for row in rows] == [1536] * 3
    assert all(
        req.get("stream_options") == {"include_usage": True}
        for req in server.requests
        if req.get("stream") and req["model"] == "gpt-4o"
    )


def test_truncated_http_stream_is_an_error_not_a_success(server: FakeOpenAIServer) -> None:
    server.behave("gpt-4.1-mini", ModelBehaviour(content="cut short here"))
    server.script("gpt-4.1-mini", ServerReply.truncated_stream())
    plane, sink, _ = make_plane(server, model="gpt-4.1-mini")
    with plane:
        model = plane.chat_model("reasoning")
        with pytest.raises(ProviderError, match="stream ended without"):
            list(model.stream("q"))
        plane.flush()

    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "error"
    assert row[semconv.ERROR_TYPE] == "truncated_stream"
    (call,) = sink.call_spans()
    assert call.attributes[semconv.OUTCOME] == "error"


def test_server_429_retry_after_is_honoured_without_sleeping(server: FakeOpenAIServer) -> None:
    server.behave("gpt-4.1", ModelBehaviour(content="fine"))
    server.script(
        "gpt-4.1", ServerReply.rate_limited(retry_after_s=4), ServerReply.server_error(502)
    )
    plane, sink, clock = make_plane(server, model="gpt-4.1")
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "fine"
        plane.flush()

    assert clock.sleeps[0] == 4.0
    assert [r.get(semconv.ERROR_TYPE) for r in sink.usage_rows()] == ["429", "502", None]


def test_quota_exhausted_is_not_retried_and_opens_the_circuit(server: FakeOpenAIServer) -> None:
    server.behave("gpt-4.1-nano", ModelBehaviour(content="nano"))
    server.behave("o4-mini", ModelBehaviour(content="fallback"))
    server.script("gpt-4.1-nano", ServerReply.quota_exhausted())
    plane, _, clock = make_plane(server, model="gpt-4.1-nano", fallbacks=("openai:o4-mini",))
    with plane:
        assert plane.chat_model("reasoning").invoke("q").content == "fallback"
        state = plane.circuit_state("openai", "gpt-4.1-nano")
        plane.flush()

    assert clock.sleeps == []
    assert state.state == "open"
    assert state.cooldown_s == plane.circuits.policy.quota_cooldown_s
    assert "quota" in (state.reason or "")


def test_spans_join_the_callers_current_trace(server: FakeOpenAIServer) -> None:
    server.behave(MODEL, ModelBehaviour(content="ok"))
    caller = TracerProvider().get_tracer("app")
    plane, sink, _ = make_plane(server)
    with plane, caller.start_as_current_span("handle request") as outer:
        plane.chat_model("reasoning").invoke("q")
        plane.flush()

    (call,) = sink.call_spans()
    assert call.context.trace_id == outer.get_span_context().trace_id
    assert call.parent is not None
    assert call.parent.span_id == outer.get_span_context().span_id


class City(BaseModel):
    name: str
    country: str


def test_bind_tools_and_structured_output_over_http(server: FakeOpenAIServer) -> None:
    server.behave(
        "gpt-4o-2024-08-06",
        ModelBehaviour(
            content='{"name": "Paris", "country": "France"}',
            tool_calls=({"name": "lookup", "arguments": {"city": "Paris"}},),
        ),
    )

    def lookup(city: str) -> str:
        """Look a city up."""
        return city

    plane, sink, _ = make_plane(server, model="gpt-4o-2024-08-06")
    with plane:
        model = plane.chat_model("reasoning")
        tool_answer = model.bind_tools([lookup]).invoke("Where?")
        city = model.with_structured_output(City).invoke("Which city?")
        plane.flush()

    assert tool_answer.tool_calls[0]["name"] == "lookup"
    assert tool_answer.tool_calls[0]["args"] == {"city": "Paris"}
    assert city == City(name="Paris", country="France")
    assert len(sink.usage_rows()) == 2


@pytest.mark.slow
async def test_a_thousand_concurrent_async_calls_lose_no_usage_row(
    own_server: FakeOpenAIServer,
) -> None:
    server = own_server
    server.behave(
        "gpt-4o-mini-2024-07-18",
        ModelBehaviour(content="ok", prompt_tokens=10, completion_tokens=2),
    )
    plane, sink, _ = make_plane(server, model="gpt-4o-mini-2024-07-18")
    before = server.request_count("gpt-4o-mini-2024-07-18")
    with plane:
        models = [plane.chat_model("reasoning", domain=f"t{i % 10}") for i in range(10)]
        answers = await asyncio.gather(*(models[i % 10].ainvoke(f"q{i}") for i in range(1000)))
        assert plane.flush()

    assert len(answers) == 1000
    rows = sink.usage_rows()
    assert len(rows) == 1000
    assert len({row[semconv.USAGE_ID] for row in rows}) == 1000
    assert server.request_count("gpt-4o-mini-2024-07-18") - before == 1000
    assert sum(Decimal(r[semconv.COST_USD]) for r in rows) == 1000 * genai_cost(
        "gpt-4o-mini-2024-07-18", 10, 2, 0
    )


def test_chat_openai_call_lands_its_span_and_usage_row_in_the_duckdb_file(
    server: FakeOpenAIServer, data_dir: Path
) -> None:
    from comptroller.analytics import connect

    server.behave(
        "gpt-4o-mini-2024-07-18",
        ModelBehaviour(
            content="landed", prompt_tokens=900, completion_tokens=50, cached_tokens=512
        ),
    )
    settings = load_settings()
    assert settings.telemetry == "embedded"
    prof = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o-mini-2024-07-18"),
        base_url=server.base_url,
    )
    with ControlPlane(settings, resolver=StaticProfiles({"reasoning": prof})) as plane:
        plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support").invoke("q")

    con = connect(settings.db_file, read_only=True)
    try:
        span = con.execute(
            "select kind, provider, request_model, response_model, input_tokens, "
            "cache_read_tokens, tenant, purpose from spans where name = ?",
            ["chat gpt-4o-mini-2024-07-18"],
        ).fetchone()
        usage = con.execute(
            "select input_tokens, output_tokens, cache_read_tokens, cost_usd, price_source, "
            "tenant, org, context, purpose, outcome from llm_usage"
        ).fetchall()
    finally:
        con.close()
    assert span is not None
    assert "CLIENT" in str(span[0]).upper()
    assert span[1:] == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
        900,
        512,
        "acme-eu",
        "reasoning",
    )
    ((inp, out, cached, cost, source, tenant, org, context, purpose, outcome),) = usage
    assert (inp, out, cached) == (900, 50, 512)
    assert cost == genai_cost("gpt-4o-mini-2024-07-18", 900, 50, 512)
    assert source.startswith("genai-prices@")
    assert (tenant, org, context, purpose, outcome) == (
        "acme-eu",
        "acme",
        "support",
        "reasoning",
        "ok",
    )


def test_a_span_never_names_langchains_run_id_as_the_providers_response_id(
    server: FakeOpenAIServer,
) -> None:
    # langchain-openai's streams carry LangChain's own run id (`lc_run-…`), not the
    # provider's: the span then leaves gen_ai.response.id out rather than mislabel it.
    plane, sink, _ = make_plane(server)
    with plane:
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        model.invoke("q")
        assert "".join(str(c.content) for c in model.stream("q"))
        plane.flush()
    ids = [(s.attributes or {}).get(semconv.GEN_AI_RESPONSE_ID) for s in sink.attempt_spans()]
    assert len(ids) == 2
    assert str(ids[0]).startswith("chatcmpl-fake")  # the buffered answer's, from the API
    assert ids[1] is None
