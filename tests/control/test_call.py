"""The guarded call over the fake chat model: the Runnable surface, retries, fallbacks, upgrade."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from call_helpers import profile, rig
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage
from pydantic import BaseModel

from comptroller import semconv
from comptroller.control import (
    CircuitPolicy,
    DegradationPolicy,
    ExhaustedFallbacks,
    ModelRefused,
    ProviderError,
    RetryPolicy,
)
from comptroller.control.testing import Fail, FakeChatModel, FakeUsage


def _expected_cost(model: str, usage: FakeUsage) -> Decimal:
    price = calc_price(
        GPUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
        ),
        model_ref=model,
        provider_id="openai",
    )
    return Decimal(price.total_price)


def test_invoke_returns_reply_and_emits_one_priced_usage_row() -> None:
    usage = FakeUsage(input_tokens=1200, output_tokens=300, cache_read_tokens=1000)
    r = rig(FakeChatModel(responses={"reasoning": "forty-two"}, usage=usage))
    model = r.plane.chat_model("reasoning", domain="acme-eu", org="acme", context="support")

    answer = model.invoke("What is the answer?")

    assert isinstance(answer, AIMessage)
    assert answer.content == "forty-two"
    (row,) = r.flush().usage_rows()
    assert Decimal(row[semconv.COST_USD]) == _expected_cost("gpt-4o-mini", usage)
    assert row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 1000
    assert row[semconv.TENANT] == "acme-eu"
    assert row[semconv.CONTEXT] == "support"
    assert row[semconv.OUTCOME] == "ok"
    assert row[semconv.ESTIMATED] is False


async def test_ainvoke_batch_and_abatch_each_call_is_guarded() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "yes"}))
    model = r.plane.chat_model("reasoning", domain="t1")

    first = await model.ainvoke("a")
    sync_batch = model.batch(["b", "c"])
    async_batch = await model.abatch(["d", "e", "f"])

    assert [m.content for m in [first, *sync_batch, *async_batch]] == ["yes"] * 6
    sink = r.flush()
    assert len(sink.usage_rows()) == 6
    assert len(sink.call_spans()) == 6


async def test_stream_and_astream_yield_chunks_and_price_the_final_usage() -> None:
    usage = FakeUsage(input_tokens=50, output_tokens=4, cache_read_tokens=32)
    r = rig(FakeChatModel(responses={"reasoning": "one two three four"}, usage=usage))
    model = r.plane.chat_model("reasoning")

    sync_text = "".join(str(c.content) for c in model.stream("go"))
    async_text = "".join([str(c.content) async for c in model.astream("go")])
    buffered = model.invoke("go")

    assert sync_text == async_text == buffered.content == "one two three four"
    rows = r.flush().usage_rows()
    costs = {Decimal(row[semconv.COST_USD]) for row in rows}
    assert costs == {_expected_cost("gpt-4o-mini", usage)}
    assert all(row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 32 for row in rows)


def test_bind_tools_answers_with_tool_calls_through_the_guard() -> None:
    def get_weather(city: str) -> str:
        """Weather of a city."""
        return "sunny"

    r = rig(FakeChatModel(responses={"reasoning:structured": {"city": "Paris"}}))
    model = r.plane.chat_model("reasoning").bind_tools([get_weather])

    answer = model.invoke("Weather in Paris?")

    assert answer.tool_calls[0]["name"] == "get_weather"
    assert answer.tool_calls[0]["args"] == {"city": "Paris"}
    assert len(r.flush().usage_rows()) == 1


class Verdict(BaseModel):
    score: int
    reason: str


def test_with_structured_output_returns_the_schema() -> None:
    r = rig(FakeChatModel(responses={"reasoning": {"score": 4, "reason": "clear"}}))
    structured = r.plane.chat_model("reasoning").with_structured_output(Verdict)

    verdict = structured.invoke("Rate it")

    assert verdict == Verdict(score=4, reason="clear")
    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "ok"


def test_retry_waits_for_retry_after_on_the_fake_clock() -> None:
    fake = FakeChatModel(
        responses={"reasoning": [Fail.rate_limited(retry_after_s=7), Fail.server_error(), "ok"]}
    )
    r = rig(fake)

    assert r.plane.chat_model("reasoning").invoke("hi").content == "ok"

    # First wait honours Retry-After (7 s); the second is jittered backoff ≤ base·2.
    assert r.clock.sleeps[0] == 7.0
    assert 0.5 <= r.clock.sleeps[1] <= 1.0
    rows = r.flush().usage_rows()
    assert [row[semconv.ATTEMPT] for row in rows] == [1, 2, 3]
    assert [row.get(semconv.ERROR_TYPE) for row in rows] == ["429", "500", None]
    assert rows[0][semconv.COST_USD] == "0"  # a rejected request costs nothing


def test_retries_stop_at_max_then_the_chain_falls_back() -> None:
    def reply(messages: object, info: object) -> object:
        return Fail.server_error(503) if info.model == "gpt-4o-mini" else "from fallback"  # type: ignore[attr-defined]

    r = rig(
        FakeChatModel(responses={"reasoning": reply}),
        {"reasoning": profile(fallbacks=("openai:gpt-4o",))},
        retry=RetryPolicy(max_retries=2, base_s=0.1),
    )

    assert r.plane.chat_model("reasoning").invoke("hi").content == "from fallback"

    rows = r.flush().usage_rows()
    assert [(row[semconv.GEN_AI_REQUEST_MODEL], row[semconv.FALLBACK_DEPTH]) for row in rows] == [
        ("gpt-4o-mini", 0),
        ("gpt-4o-mini", 0),
        ("gpt-4o-mini", 0),
        ("gpt-4o", 1),
    ]
    assert len(r.clock.sleeps) == 2


def test_cross_provider_fallback_is_skipped_unless_the_profile_allows_it() -> None:
    fake = FakeChatModel(
        responses={
            "reasoning": lambda m, info: (
                "claude" if info.provider == "anthropic" else Fail.server_error()
            )
        }
    )
    same_family = profile(fallbacks=("anthropic:claude-3-5-haiku-latest",))
    r = rig(fake, {"reasoning": same_family}, retry=RetryPolicy(max_retries=0))
    with pytest.raises(ExhaustedFallbacks):
        r.plane.chat_model("reasoning").invoke("hi")

    allowed = profile(fallbacks=("anthropic:claude-3-5-haiku-latest",), allow_cross_provider=True)
    r2 = rig(fake, {"reasoning": allowed}, retry=RetryPolicy(max_retries=0))
    assert r2.plane.chat_model("reasoning").invoke("hi").content == "claude"


def test_exhausted_chain_raises_a_group_of_provider_errors_and_marks_the_call() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": Fail.timeout()}),
        {"reasoning": profile(fallbacks=("openai:gpt-4o",))},
        retry=RetryPolicy(max_retries=1, base_s=0.01),
    )

    with pytest.raises(ExhaustedFallbacks) as caught:
        r.plane.chat_model("reasoning").invoke("hi")

    assert len(caught.value.exceptions) == 4
    assert all(isinstance(e, ProviderError) for e in caught.value.exceptions)
    sink = r.flush()
    (call,) = sink.call_spans()
    assert call.attributes[semconv.OUTCOME] == "exhausted_fallbacks"
    assert len(sink.attempt_spans()) == 4
    # Token usage never on the parent span: no reader can count it twice.
    assert semconv.GEN_AI_USAGE_INPUT_TOKENS not in call.attributes


def test_purpose_upgrades_after_consecutive_validation_failures_until_window_clears() -> None:
    fake = FakeChatModel(
        responses={
            "reasoning": Fail.invalid_json(),
            "reasoning_strong": {"score": 5, "reason": "strong"},
        }
    )
    policy = DegradationPolicy(failures=2, window_s=300, upgrade_to="reasoning_strong")
    r = rig(
        fake,
        {
            "reasoning": profile(degradation=policy),
            "reasoning_strong": profile("reasoning_strong", "openai:gpt-4o"),
        },
    )
    structured = r.plane.chat_model("reasoning", domain="acme").with_structured_output(Verdict)

    for _ in range(2):
        with pytest.raises(OutputParserException):
            structured.invoke("rate")
    upgraded = structured.invoke("rate")

    assert upgraded == Verdict(score=5, reason="strong")
    sink = r.flush()
    rows = sink.usage_rows()
    assert [row[semconv.OUTCOME] for row in rows] == ["validation_error", "validation_error", "ok"]
    assert rows[-1][semconv.GEN_AI_REQUEST_MODEL] == "gpt-4o"
    assert rows[-1][semconv.PURPOSE] == "reasoning"
    assert rows[-1][semconv.PURPOSE_UPGRADED_TO] == "reasoning_strong"
    (event,) = sink.events(semconv.EVENT_PURPOSE_UPGRADED)
    assert event[semconv.PURPOSE_UPGRADED_TO] == "reasoning_strong"
    # Invalid answers still cost tokens: they are priced and charged.
    assert all(Decimal(row[semconv.COST_USD]) > 0 for row in rows)

    r.clock.advance(301)
    with pytest.raises(OutputParserException):
        structured.invoke("rate")


def test_refusal_is_a_validation_failure() -> None:
    r = rig(FakeChatModel(responses={"reasoning": Fail.refusal("no")}))
    structured = r.plane.chat_model("reasoning").with_structured_output(Verdict)

    with pytest.raises(ModelRefused):
        structured.invoke("rate")

    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "refused"


def test_truncated_stream_is_an_error_charged_as_estimated() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": Fail.truncated_stream("The answer is")}),
        {"reasoning": profile(budget="10")},
        retry=RetryPolicy(max_retries=0),
    )
    model = r.plane.chat_model("reasoning", domain="acme", context="chat")

    chunks: list[str] = []

    def consume() -> None:
        chunks.extend(str(chunk.content) for chunk in model.stream("go"))

    with pytest.raises(ProviderError, match="stream ended without"):
        consume()

    assert "".join(chunks) == "The answer is"
    (row,) = r.flush().usage_rows()
    assert row[semconv.OUTCOME] == "error"
    assert row[semconv.ERROR_TYPE] == "truncated_stream"
    assert row[semconv.ESTIMATED] is True
    assert row[semconv.PRICE_SOURCE] == "reservation"
    ledger = r.guard.ledger(r.plane._core.guard_key(model._route.scope))
    assert ledger.spent_usd == Decimal(row[semconv.COST_USD]) > 0
    assert ledger.reserved_usd == 0


def test_per_tenant_retry_budget_stops_a_retry_storm() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": Fail.server_error()}),
        retry=RetryPolicy(max_retries=3, base_s=0.01, tenant_min=2, tenant_ratio=0.0),
        circuit=CircuitPolicy(consecutive_failures=100, min_calls=100),
    )
    model = r.plane.chat_model("reasoning", domain="stormy")

    for _ in range(3):
        with pytest.raises(ExhaustedFallbacks):
            model.invoke("hi")

    # Two retries in the window for the whole tenant, not three per call.
    assert len(r.flush().usage_rows()) == 3 + 2
    other = r.plane.chat_model("reasoning", domain="calm")
    with pytest.raises(ExhaustedFallbacks):
        other.invoke("hi")
    assert len(r.flush().usage_rows()) == 5 + 3


async def test_cancelled_async_call_releases_its_reservation() -> None:
    started = asyncio.Event()

    class Slow(FakeChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def,override]
            started.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

    r = rig(Slow(), {"reasoning": profile(budget="1")})
    model = r.plane.chat_model("reasoning", domain="acme", context="c")
    task = asyncio.create_task(model.ainvoke("hi"))
    await started.wait()
    key = r.plane._core.guard_key(model._route.scope)
    assert r.guard.ledger(key).reserved_usd > 0

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert r.guard.ledger(key).reserved_usd == 0
    assert r.guard.ledger(key).spent_usd == 0
    (call,) = r.flush().call_spans()
    assert call.attributes[semconv.OUTCOME] == "cancelled"


async def test_stream_failing_before_its_first_chunk_is_retried() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": [Fail.rate_limited(retry_after_s=2), "streamed"]})
    )
    model = r.plane.chat_model("reasoning")

    text = "".join([str(c.content) async for c in model.astream("go")])

    assert text == "streamed"
    assert r.clock.sleeps == [2.0]
    assert [row[semconv.OUTCOME] for row in r.flush().usage_rows()] == ["error", "ok"]


async def test_structured_output_works_async_and_in_batches() -> None:
    r = rig(FakeChatModel(responses={"reasoning": {"score": 2, "reason": "ok"}}))
    structured = r.plane.chat_model("reasoning").with_structured_output(Verdict)

    one = await structured.ainvoke("a")
    many = await structured.abatch(["b", "c"])

    assert [one, *many] == [Verdict(score=2, reason="ok")] * 3
    assert len(r.flush().usage_rows()) == 3


def test_include_raw_returns_the_parse_error_and_still_counts_it() -> None:
    r = rig(FakeChatModel(responses={"reasoning": Fail.invalid_json()}))
    structured = r.plane.chat_model("reasoning").with_structured_output(Verdict, include_raw=True)

    result = structured.invoke("a")

    assert result["parsed"] is None
    assert isinstance(result["raw"], AIMessage)
    assert isinstance(result["parsing_error"], Exception)
    sink = r.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.OUTCOME] == "validation_error"
    (call,) = sink.call_spans()
    assert call.attributes[semconv.OUTCOME] == "validation_error"


def test_a_profile_change_is_seen_by_the_next_call() -> None:
    class Switchable:
        def __init__(self) -> None:
            self.current = profile()

        def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> object:
            return self.current

    resolver = Switchable()
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), resolver=resolver)
    model = r.plane.chat_model("reasoning")

    model.invoke("1")
    resolver.current = profile(model="openai:gpt-4o")
    model.invoke("2")

    models = [row[semconv.GEN_AI_REQUEST_MODEL] for row in r.flush().usage_rows()]
    assert models == ["gpt-4o-mini", "gpt-4o"]
