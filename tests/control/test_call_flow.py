"""The one call flow: every way of calling is charged alike, runs in the attempt's context,
and behaves as a LangChain chat model does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from call_helpers import Rig, profile, rig
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableBinding
from opentelemetry import trace

from comptroller import semconv
from comptroller.control import CallDefaults, GuardKey
from comptroller.control._call import CallFlow
from comptroller.control._call._steps import Admit, Invoke, Settle
from comptroller.control.testing import FakeChatModel, FakeUsage

TEXT = "one two three four five six seven eight"
CAP = "0.001"


def _capped(fake: FakeChatModel | None = None) -> Rig:
    # max_tokens 100 keeps the reservation small (~$0.00006), so that a $0.001 cap admits a
    # dozen or so calls if each is charged, and every one of 40 if none is.
    return rig(
        fake or FakeChatModel(responses={"reasoning": TEXT}),
        {"reasoning": profile(budget=CAP, defaults=CallDefaults(max_tokens=100))},
    )


def _ledger(r: Rig) -> Any:
    return r.guard.ledger(GuardKey(tenant="acme", context="chat", purpose="reasoning"))


def _assert_capped(r: Rig, admitted: int) -> None:
    ledger = _ledger(r)
    rows = r.flush().usage_rows()
    assert len(rows) == admitted
    assert all(row[semconv.OUTCOME] == "cancelled" for row in rows)
    assert all(row[semconv.ESTIMATED] is True for row in rows)
    assert all(row[semconv.PRICE_SOURCE] == "reservation" for row in rows)
    charged = sum(Decimal(row[semconv.COST_USD]) for row in rows)
    assert ledger.spent_usd == charged > 0
    assert ledger.reserved_usd == 0
    # Charged per call, the cap stops the loop long before 40 calls.
    assert admitted < 40
    assert ledger.spent_usd <= Decimal(CAP)


def _run_capped(r: Rig, once: Any) -> int:
    from comptroller.control import BudgetExceeded

    admitted = 0
    for _ in range(40):
        try:
            once()
        except BudgetExceeded:
            continue
        admitted += 1
    return admitted


def test_a_stream_the_caller_breaks_out_of_is_charged_its_reservation() -> None:
    r = _capped()
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")

    def once() -> None:
        for _chunk in model.stream("go"):
            break

    _assert_capped(r, _run_capped(r, once))


def test_a_stream_closed_by_the_caller_is_charged_its_reservation() -> None:
    r = _capped()
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")

    def once() -> None:
        chunks = model.stream("go")
        next(chunks)
        next(chunks)
        chunks.close()

    _assert_capped(r, _run_capped(r, once))


async def test_an_async_stream_closed_by_the_caller_is_charged_its_reservation() -> None:
    r = _capped()
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")
    admitted = 0
    from comptroller.control import BudgetExceeded

    for _ in range(40):
        chunks = model.astream("go")
        try:
            await anext(chunks)
        except BudgetExceeded:
            continue
        admitted += 1
        await chunks.aclose()
    _assert_capped(r, admitted)


class _SlowStream(FakeChatModel):
    """Streams its words with a pause before each: a caller can be cancelled mid-stream."""

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, **kwargs):
            await asyncio.sleep(0.01)
            yield chunk


async def test_a_cancelled_async_stream_is_charged_its_reservation() -> None:
    r = _capped(_SlowStream(responses={"reasoning": TEXT}))
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")
    first = asyncio.Event()

    async def consume() -> None:
        async for _chunk in model.astream("go"):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "cancelled"
    assert row[semconv.ESTIMATED] is True
    assert _ledger(r).spent_usd == Decimal(row[semconv.COST_USD]) > 0
    assert _ledger(r).reserved_usd == 0


def test_a_stream_stopped_after_its_usage_arrived_is_charged_that_usage() -> None:
    usage = FakeUsage(input_tokens=40, output_tokens=8)
    r = _capped(FakeChatModel(responses={"reasoning": TEXT}, usage=usage))
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")

    for chunk in model.stream("go"):
        if chunk.usage_metadata:
            break  # the final chunk came, the stream's own end did not

    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "cancelled"
    assert row[semconv.ESTIMATED] is False
    assert row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 8
    expected = r.plane.pricer.price("openai", "gpt-4o-mini", _usage(usage), _when(r)).cost_usd
    assert Decimal(row[semconv.COST_USD]) == expected == _ledger(r).spent_usd


def _usage(usage: FakeUsage) -> Any:
    from comptroller.pricing import Usage

    return Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


def _when(r: Rig) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(r.clock.time(), UTC)


# --- the attempt is the current context of the provider call, for every driver ----------------


class _Spy(FakeChatModel):
    """Notes the OpenTelemetry span that is current while the provider code runs (the
    fake's async generate runs its sync one, which notes it)."""

    seen: ClassVar[list[int]] = []

    def _note(self) -> None:
        self.seen.append(trace.get_current_span().get_span_context().span_id)

    def _generate(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> ChatResult:
        self._note()
        return super()._generate(messages, *a, **kw)

    def _stream(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> Iterator[Any]:
        for chunk in super()._stream(messages, *a, **kw):
            self._note()
            yield chunk

    async def _astream(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> Any:
        async for chunk in super()._astream(messages, *a, **kw):
            self._note()
            yield chunk


async def test_every_driver_runs_the_provider_call_inside_the_attempt_span() -> None:
    spy = _Spy(responses={"reasoning": "a b"})
    _Spy.seen = []
    r = rig(spy)
    model = r.plane.chat_model("reasoning")
    outside = trace.get_current_span().get_span_context().span_id
    seen_between: list[int] = []

    model.invoke("go")
    await model.ainvoke("go")
    for _chunk in model.stream("go"):
        seen_between.append(trace.get_current_span().get_span_context().span_id)
    async for _chunk in model.astream("go"):
        seen_between.append(trace.get_current_span().get_span_context().span_id)

    attempts = [span.context.span_id for span in r.flush().attempt_spans()]
    assert len(attempts) == 4
    # invoke and ainvoke once each; a stream of "a b" is three chunks (two words, the end).
    assert spy.seen[0] == attempts[0]
    assert spy.seen[1] == attempts[1]
    assert set(spy.seen[2:5]) == {attempts[2]}
    assert set(spy.seen[5:8]) == {attempts[3]}
    # Between chunks the caller's own context is current, not the attempt's.
    assert set(seen_between) == {outside}
    assert trace.get_current_span().get_span_context().span_id == outside


# --- a LangChain chat model in every respect ----------------------------------------------------


def test_ls_params_name_the_profile_model_and_its_provider() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": "ok"}),
        {"reasoning": profile(model="anthropic:claude-sonnet-4-5")},
    )
    params = r.plane.chat_model("reasoning")._get_ls_params()
    assert params["ls_provider"] == "anthropic"
    assert params["ls_model_name"] == "claude-sonnet-4-5"
    assert params["ls_model_type"] == "chat"


def test_bind_tools_returns_a_binding_whose_calls_are_guarded() -> None:
    def get_weather(city: str) -> str:
        """Weather of a city."""
        return "sunny"

    r = rig(FakeChatModel(responses={"reasoning:structured": {"city": "Paris"}}))
    model = r.plane.chat_model("reasoning")
    bound = model.bind_tools([get_weather], tool_choice="any")

    assert isinstance(bound, RunnableBinding)
    assert bound.bound is model
    answer = bound.invoke("Weather in Paris?")
    streamed = list(bound.stream("Weather in Paris?"))

    assert answer.tool_calls[0]["name"] == "get_weather"
    assert any(chunk.tool_call_chunks for chunk in streamed)
    assert len(r.flush().usage_rows()) == 2


def test_stream_events_v3_goes_through_the_guard() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "a b c"}))
    model = r.plane.chat_model("reasoning")

    stream = model.stream_events("go", version="v3")
    text = "".join(stream.text)

    assert text == "a b c"
    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "ok"


# --- the flow itself, without I/O ---------------------------------------------------------------


def test_the_flow_yields_admit_invoke_settle_in_that_order() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": profile(budget="1")})
    route = r.plane.chat_model("reasoning", domain="acme", context="chat")._route
    from comptroller.control._call import IDENTITY

    flow = CallFlow(route, IDENTITY, "go", None, None).steps()
    kinds = []
    outcome: Any = None
    try:
        while True:
            step = flow.send(outcome)
            kinds.append(next(k for k in (Admit, Invoke, Settle) if isinstance(step, k)))
            outcome = step.run()
    except StopIteration as stop:
        result = stop.value
    assert kinds == [Admit, Invoke, Settle]
    assert result.content == "ok"


class _SchemaMismatch(FakeChatModel):
    """The provider SDK refuses an answer (HTTP 200) that does not fit the schema."""

    def _generate(self, messages: list[BaseMessage], *a: Any, **kw: Any) -> ChatResult:
        import httpx2
        import openai

        request = httpx2.Request("POST", "https://fake.invalid/v1/chat/completions")
        raise openai.APIResponseValidationError(httpx2.Response(200, request=request), None)


def test_an_answer_that_does_not_fit_the_schema_raises_an_output_parser_exception() -> None:
    from langchain_core.exceptions import OutputParserException

    r = rig(_SchemaMismatch(responses={"reasoning": "ok"}))
    model = r.plane.chat_model("reasoning")

    with pytest.raises(OutputParserException) as caught:
        model.invoke("go")

    assert "APIResponseValidationError" in str(caught.value)
    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "validation_error"


def test_a_per_call_model_override_is_recorded_and_priced_as_that_model() -> None:
    from genai_prices import Usage as GPUsage
    from genai_prices import calc_price

    from comptroller.config import load_settings
    from comptroller.control import ControlPlane, MemoryGuard, ModelRef, ResolvedProfile
    from comptroller.control import StaticProfiles as Static
    from comptroller.control.testing import FakeClock, FakeOpenAIServer, InMemorySink

    with FakeOpenAIServer() as server:
        sink = InMemorySink()
        clock = FakeClock()
        prof = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="openai", model="gpt-4o-mini"),
            base_url=server.base_url,
        )
        plane = ControlPlane(
            load_settings(telemetry="none"),
            resolver=Static({"reasoning": prof}),
            guard=MemoryGuard(clock=clock),
            sink=sink,
            clock=clock,
        )
        model = plane.chat_model("reasoning")
        reply = model.invoke("hello", model="gpt-4o")
        assert plane.flush()

    assert server.requests[-1]["model"] == "gpt-4o"
    (row,) = sink.usage_rows()
    (span,) = sink.attempt_spans()
    assert row[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert span.attributes is not None
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert span.name == "chat gpt-4o"
    usage = reply.usage_metadata
    assert usage is not None
    expected = calc_price(
        GPUsage(
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            cache_read_tokens=(usage.get("input_token_details") or {}).get("cache_read") or 0,
        ),
        model_ref="gpt-4o",
        provider_id="openai",
    ).total_price
    assert Decimal(row[semconv.COST_USD]) == Decimal(expected)


def test_a_per_call_service_tier_is_reserved_at_that_tiers_price() -> None:
    from datetime import UTC, datetime

    from comptroller.config import load_settings
    from comptroller.control import BudgetExceeded, ControlPlane, MemoryGuard
    from comptroller.control import StaticProfiles as Static
    from comptroller.control.testing import FakeClock, InMemorySink

    clock = FakeClock(start=datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=Static({"reasoning": profile(model="openai:gpt-5", budget="1")}),
        guard=MemoryGuard(clock=clock),
        sink=InMemorySink(),
        clock=clock,
        providers={"openai": FakeChatModel(responses={"reasoning": "ok"}).factory},
    )
    when = datetime.fromtimestamp(clock.time(), UTC)
    worst = {
        tier: plane.pricer.worst_case(
            "openai", "gpt-5", input_tokens=64, max_output_tokens=4096, at=when, service_tier=tier
        )
        for tier in (None, "priority")
    }
    assert worst[None] is not None
    assert worst["priority"] is not None
    assert worst["priority"] > worst[None]
    # A cap between the two worst cases admits the standard call and refuses the priority one.
    cap = (worst[None] + worst["priority"]) / 2
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=Static({"reasoning": profile(model="openai:gpt-5", budget=str(cap))}),
        guard=MemoryGuard(clock=clock),
        sink=InMemorySink(),
        clock=clock,
        providers={"openai": FakeChatModel(responses={"reasoning": "ok"}).factory},
    )
    model = plane.chat_model("reasoning", domain="acme", context="chat")
    with pytest.raises(BudgetExceeded):
        model.invoke("go", service_tier="priority")
    assert model.invoke("go").content == "ok"
