"""Budget warnings before the cap: shares crossed and projected overruns, once per key,
threshold and day."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from call_helpers import profile

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import BudgetExceeded, ControlPlane, MemoryGuard, StaticProfiles
from comptroller.control.testing import FakeChatModel, FakeClock, FakeUsage, InMemorySink

# gpt-4o-mini: $0.15 per million input tokens, so 100,000 input tokens cost $0.015.
CALL = FakeUsage(input_tokens=100_000, output_tokens=0)
NOON = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()


def make(
    clock: FakeClock, *, budget: str = "0.05", **alerts: Any
) -> tuple[ControlPlane, InMemorySink]:
    sink = InMemorySink()
    fake = FakeChatModel(responses={"reasoning": "ok"}, usage=CALL)
    settings = load_settings(telemetry="none", alerts=alerts)
    plane = ControlPlane(
        settings,
        resolver=StaticProfiles({"reasoning": profile(budget=budget)}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        providers={"openai": fake.factory},
    )
    return plane, sink


def warnings(sink: InMemorySink) -> list[dict[str, Any]]:
    return sink.events(semconv.EVENT_BUDGET_WARNING)


def test_each_share_of_the_cap_warns_once_then_the_cap_refuses() -> None:
    clock = FakeClock(start=NOON)
    plane, sink = make(clock, budget_warn_projected=False)
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        for _ in range(4):  # $0.015, 0.030, 0.045, 0.060 against a $0.05 cap
            model.invoke("q")
        with pytest.raises(BudgetExceeded):
            model.invoke("q")
        assert plane.flush()

    got = warnings(sink)
    assert [w[semconv.BUDGET_THRESHOLD] for w in got] == [0.5, 0.8, 1.0]
    assert [Decimal(w[semconv.BUDGET_SPENT_USD]) for w in got] == [
        Decimal("0.03"),
        Decimal("0.045"),
        Decimal("0.06"),
    ]
    first = got[0]
    assert first[semconv.TENANT] == "acme-eu"
    assert first[semconv.CONTEXT] == "support"
    assert first[semconv.PURPOSE] == "reasoning"
    assert Decimal(first[semconv.BUDGET_CAP_USD]) == Decimal("0.05")
    assert first[semconv.BUDGET_DAY] == "2026-06-01"
    assert first[semconv.BUDGET_WARNING_KIND] == "threshold"
    assert len({w[semconv.EVENT_ID] for w in got}) == 3


def test_the_next_day_warns_again_with_new_ids() -> None:
    clock = FakeClock(start=NOON)
    plane, sink = make(clock, budget="0.02", budget_warn_projected=False, budget_warn_at=[0.5])
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu")
        model.invoke("q")  # 75 %
        clock.advance(86_400)
        model.invoke("q")
        assert plane.flush()
    got = warnings(sink)
    assert [w[semconv.BUDGET_DAY] for w in got] == ["2026-06-01", "2026-06-02"]
    assert got[0][semconv.EVENT_ID] != got[1][semconv.EVENT_ID]


def test_a_burn_rate_that_will_cross_the_cap_warns_once_a_day() -> None:
    # Two calls by 03:00 spend $0.03 of $1: at that rate the day ends at $0.24; a $0.2 cap
    # would be crossed.
    clock = FakeClock(start=datetime(2026, 6, 1, 2, tzinfo=UTC).timestamp())
    plane, sink = make(clock, budget="0.2", budget_warn_at=[])
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu")
        model.invoke("q")  # $0.015 at 02:00: under 10 % of the cap, no projection
        clock.advance(3600)
        model.invoke("q")  # $0.03 at 03:00 → $0.24 by midnight
        model.invoke("q")  # the same day: no second warning
        assert plane.flush()
    (got,) = warnings(sink)
    assert got[semconv.BUDGET_WARNING_KIND] == "projected"
    assert Decimal(got[semconv.BUDGET_PROJECTED_USD]) == Decimal("0.24")
    assert semconv.BUDGET_THRESHOLD not in got


def test_no_projection_in_the_first_hour_or_on_a_slow_day() -> None:
    clock = FakeClock(start=datetime(2026, 6, 1, 0, 30, tzinfo=UTC).timestamp())
    plane, sink = make(clock, budget="0.2", budget_warn_at=[])
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu")
        model.invoke("q")
        model.invoke("q")  # $0.03 at 00:30 would project $1.44, but it is too early
        clock.advance(22 * 3600)  # 22:30: $0.045 → $0.048 by midnight, under the cap
        model.invoke("q")
        assert plane.flush()
    assert warnings(sink) == []


def test_no_budget_no_warning_and_settings_validate() -> None:
    clock = FakeClock(start=NOON)
    sink = InMemorySink()
    fake = FakeChatModel(responses={"reasoning": "ok"}, usage=CALL)
    with ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": profile()}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        providers={"openai": fake.factory},
    ) as plane:
        plane.chat_model("reasoning").invoke("q")
        assert plane.flush()
    assert warnings(sink) == []
    from comptroller.errors import ConfigError

    with pytest.raises(ConfigError, match="shares of the cap"):
        load_settings(alerts={"budget_warn_at": [80]})
