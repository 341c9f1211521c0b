"""Rate limits and budgets as the guarded call sees them: typed errors, outcomes, settlement."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from call_helpers import profile, rig

from comptroller import semconv
from comptroller.control import (
    BudgetExceeded,
    BudgetUnverifiable,
    GuardKey,
    ModelRef,
    RateLimited,
    ResolvedProfile,
    RetryPolicy,
)
from comptroller.control.testing import Fail, FakeChatModel, FakeUsage


def test_budget_exceeded_is_typed_and_the_call_span_says_so() -> None:
    usage = FakeUsage(input_tokens=100_000, output_tokens=0)
    r = rig(
        FakeChatModel(responses={"reasoning": "ok"}, usage=usage),
        {"reasoning": profile(budget="0.02", defaults=_max_tokens(100))},
    )
    model = r.plane.chat_model("reasoning", domain="acme", context="support")
    key = GuardKey("acme", "support", "reasoning")

    model.invoke("x" * 100_000)  # at most 100k tokens (1 a byte): $0.015 of gpt-4o-mini input
    with pytest.raises(BudgetExceeded) as caught:
        model.invoke("x" * 100_000)

    err = caught.value
    assert err.key == key
    assert err.cap == Decimal("0.02")
    assert err.spent == Decimal("0.015")
    sink = r.flush()
    outcomes = [s.attributes[semconv.OUTCOME] for s in sink.call_spans()]
    assert outcomes == ["ok", "budget_exceeded"]
    assert len(sink.usage_rows()) == 1  # the refused call never reached the provider
    (rejected,) = sink.events(semconv.EVENT_BUDGET_REJECTED)
    assert rejected[semconv.BUDGET_CAP_USD] == "0.02"


def test_one_contexts_exhausted_budget_leaves_another_context_served() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": "ok"}, usage=FakeUsage(input_tokens=100_000)),
        {"reasoning": profile(budget="0.02", defaults=_max_tokens(100))},
    )
    support = r.plane.chat_model("reasoning", domain="acme", context="support")
    billing = r.plane.chat_model("reasoning", domain="acme", context="billing")

    support.invoke("x" * 100_000)
    with pytest.raises(BudgetExceeded):
        support.invoke("x" * 100_000)

    assert billing.invoke("x" * 100_000).content == "ok"


def test_rate_limited_is_typed_immediately_when_not_waiting() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": profile(rate=2)})
    model = r.plane.chat_model("reasoning", domain="acme", context="c")

    model.invoke("1")
    model.invoke("2")
    with pytest.raises(RateLimited) as caught:
        model.invoke("3")

    assert caught.value.retry_after_s == pytest.approx(30.0)
    outcomes = [s.attributes[semconv.OUTCOME] for s in r.flush().call_spans()]
    assert outcomes == ["ok", "ok", "rate_limited"]


def test_waiting_for_the_rate_limit_is_bounded_and_shown_on_the_span() -> None:
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": profile(rate=1)})
    model = r.plane.chat_model("reasoning", domain="acme", rate_limit_wait_s=90)

    model.invoke("1")
    model.invoke("2")  # waits 60 s on the fake clock for the bucket

    assert r.clock.sleeps == [pytest.approx(60.0)]
    waited = r.flush().attempt_spans()[-1].attributes[semconv.RATE_LIMIT_WAIT_MS]
    assert waited == pytest.approx(60_000.0)


def test_http_error_releases_the_reservation_and_success_settles_actual_cost() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": [Fail.server_error(), "ok"]}),
        {"reasoning": profile(budget="1")},
    )
    model = r.plane.chat_model("reasoning", domain="acme", context="c")

    model.invoke("hi")

    ledger = r.guard.ledger(GuardKey("acme", "c", "reasoning"))
    rows = r.flush().usage_rows()
    assert ledger.reserved_usd == 0
    assert ledger.spent_usd == sum(Decimal(row[semconv.COST_USD]) for row in rows)
    assert [row[semconv.BUDGET_CAP_USD] for row in rows] == ["1", "1"]


def test_timeout_charges_the_reservation_flagged_estimated() -> None:
    r = rig(
        FakeChatModel(responses={"reasoning": [Fail.timeout(), "ok"]}),
        {"reasoning": profile(budget="1", defaults=_max_tokens(1000))},
        retry=RetryPolicy(max_retries=1, base_s=0.01),
    )

    r.plane.chat_model("reasoning", domain="acme", context="c").invoke("hi")

    first, second = r.flush().usage_rows()
    assert first[semconv.ESTIMATED] is True
    assert first[semconv.PRICE_SOURCE] == "reservation"
    assert Decimal(first[semconv.COST_USD]) > 0
    assert second[semconv.ESTIMATED] is False


def test_budgeted_call_to_an_unpriced_model_is_refused_as_unverifiable() -> None:
    unpriced = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="no-such-model-xyz"),
        budget=profile(budget="1").budget,
    )
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": unpriced})

    with pytest.raises(BudgetUnverifiable):
        r.plane.chat_model("reasoning", domain="acme").invoke("hi")

    (call,) = r.flush().call_spans()
    assert call.attributes[semconv.OUTCOME] == "budget_unverifiable"


def test_unpriced_call_without_budget_records_no_cost_never_zero() -> None:
    unpriced = ResolvedProfile(
        purpose="reasoning", model=ModelRef(provider="openai", model="no-such-model-xyz")
    )
    r = rig(FakeChatModel(responses={"reasoning": "ok"}), {"reasoning": unpriced})

    r.plane.chat_model("reasoning").invoke("hi")

    (row,) = r.flush().usage_rows()
    assert semconv.COST_USD not in row
    assert row[semconv.PRICE_SOURCE] == "unpriced"


def _max_tokens(n: int):  # type: ignore[no-untyped-def]
    from comptroller.control import CallDefaults

    return CallDefaults(max_tokens=n)


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_a_per_call_output_cap_is_what_the_reservation_covers(name: str) -> None:
    # gpt-4o-mini output costs $0.60 a million tokens: 100 tokens reserve $0.00006, 100k
    # reserve $0.06, more than the $0.01 cap.
    r = rig(
        FakeChatModel(responses={"reasoning": "ok"}),
        {
            "reasoning": profile(budget="0.01", defaults=_max_tokens(100)),
            "scoring": profile("scoring", budget="0.01", defaults=_max_tokens(100_000)),
        },
    )
    model = r.plane.chat_model("reasoning", domain="acme", context="c")
    assert model.invoke("q").content == "ok"
    with pytest.raises(BudgetExceeded) as caught:
        model.invoke("q", **{name: 100_000})
    assert caught.value.requested > Decimal("0.05")
    with pytest.raises(BudgetExceeded):
        model.bind(**{name: 100_000}).invoke("q")
    # Below the profile's cap, a call's own cap reserves less and is admitted.
    scoring = r.plane.chat_model("scoring", domain="acme", context="c")
    with pytest.raises(BudgetExceeded):
        scoring.invoke("q")
    assert scoring.invoke("q", **{name: 100}).content == "ok"


def test_a_pydantic_ai_max_tokens_setting_is_what_the_reservation_covers() -> None:
    from pydantic_ai import Agent

    r = rig(
        FakeChatModel(responses={"reasoning": "ok"}),
        {"reasoning": profile(budget="0.01", defaults=_max_tokens(100))},
    )
    agent = Agent(r.plane.pydantic_ai_model("reasoning", domain="acme", context="c"))
    # `asyncio.run`, not `run_sync`: pydantic-ai leaves the loop of `run_sync` open.
    assert asyncio.run(agent.run("q")).output == "ok"
    with pytest.raises(BudgetExceeded):
        asyncio.run(agent.run("q", model_settings={"max_tokens": 100_000}))
