"""Budget warnings before the cap: shares crossed and projected overruns, once per key,
threshold and day."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from call_helpers import profile

from comptroller import semconv
from comptroller.analytics import connect, record_budget_events
from comptroller.budget_alerts import BudgetRule, WarningPolicy, warning_event_id
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    ControlPlane,
    GuardKey,
    MemoryGuard,
    StaticProfiles,
)
from comptroller.control._budget_watch import BudgetWatch
from comptroller.control.testing import FakeChatModel, FakeClock, FakeUsage, InMemorySink
from comptroller.errors import ConfigError

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


# Per-budget thresholds ([[alerts.budgets]]): acme-eu warns at 90 % only; every other key at
# the global shares (50, 80 and 100 %). No projections anywhere (the global setting, which
# acme-eu's entry leaves as it is).
PER_BUDGET: dict[str, Any] = {
    "budget_warn_projected": False,
    "budgets": [{"tenant": "acme-eu", "warn_at": [0.9]}],
}


def spend_four_calls_each(plane: ControlPlane, *tenants: str) -> None:
    """$0.015, 0.030, 0.045, 0.060 against a $0.05 cap: 30, 60, 90 and 120 % for each."""
    for tenant in tenants:
        model = plane.chat_model("reasoning", domain=tenant, context="support")
        for _ in range(4):
            model.invoke("q")


def expected_id(warning: dict[str, Any]) -> str:
    label = format(Decimal(str(warning[semconv.BUDGET_THRESHOLD])).normalize(), "f")
    return warning_event_id(
        warning[semconv.TENANT],
        warning[semconv.CONTEXT],
        warning[semconv.PURPOSE],
        warning[semconv.BUDGET_DAY],
        label,
    )


def test_a_budget_with_its_own_shares_warns_at_those_and_the_others_at_the_global_ones() -> None:
    clock = FakeClock(start=NOON)
    plane, sink = make(clock, **PER_BUDGET)
    with plane:
        spend_four_calls_each(plane, "acme-eu", "globex")
        assert plane.flush()
    got = warnings(sink)
    assert sorted((w[semconv.TENANT], w[semconv.BUDGET_THRESHOLD]) for w in got) == [
        ("acme-eu", 0.9),
        ("globex", 0.5),
        ("globex", 0.8),
        ("globex", 1.0),
    ]
    assert all(w[semconv.BUDGET_WARNING_KIND] == "threshold" for w in got)
    # The id is still made of key, day and threshold alone (the ledger makes the same).
    assert [w[semconv.EVENT_ID] for w in got] == [expected_id(w) for w in got]


def test_the_ledger_raises_the_same_per_budget_warnings_under_the_same_ids(
    tmp_path: Path,
) -> None:
    """The control plane's warnings land in the ledger; the ledger, asked afresh with the
    same settings, decides exactly the same ones, under the same ids."""
    clock = FakeClock(start=NOON)
    settings = load_settings(telemetry="embedded", data_dir=str(tmp_path), alerts=PER_BUDGET)
    fake = FakeChatModel(responses={"reasoning": "ok"}, usage=CALL)
    with ControlPlane(
        settings,
        resolver=StaticProfiles({"reasoning": profile(budget="0.05")}),
        guard=MemoryGuard(clock=clock),
        clock=clock,
        providers={"openai": fake.factory},
    ) as plane:
        spend_four_calls_each(plane, "acme-eu", "globex")
        assert plane.flush()

    con = connect(tmp_path / "comptroller.duckdb")
    try:
        query = (
            "SELECT event_id, tenant, attributes->>'$.\"comptroller.budget.threshold\"' "
            "FROM budget_events WHERE kind = 'warning' ORDER BY tenant, 3"
        )
        raised = con.execute(query).fetchall()
        assert [(t, float(x)) for _, t, x in raised] == [
            ("acme-eu", 0.9),
            ("globex", 0.5),
            ("globex", 0.8),
            ("globex", 1.0),
        ]
        con.execute("DELETE FROM budget_events")
        ledger = record_budget_events(
            con,
            now=datetime.fromtimestamp(NOON, UTC),
            timezone=settings.timezone,
            policy=WarningPolicy.from_settings(settings.alerts),
        )
        assert sorted(
            (e.event_id, e.tenant, e.threshold) for e in ledger if e.kind == "warning"
        ) == sorted((i, t, float(x)) for i, t, x in raised)
    finally:
        con.close()


def test_attribute_rules_match_one_value_or_a_prefix_and_ties_go_to_the_later_entry() -> None:
    """Budgets by attribution resolve like any key: `user=*` covers every user budget,
    `user=alice` (as specific, written later) wins for alice, and a rule for ordinary budgets
    (`attribute = ""`) leaves attribute budgets alone."""
    clock = FakeClock(start=NOON)
    settings = load_settings(
        telemetry="none",
        alerts={
            "budget_warn_projected": False,
            "budgets": [
                {"attribute": "user=*", "warn_at": [1.0]},
                {"attribute": "user=alice", "warn_at": [0.5]},
                {"tenant": "acme", "attribute": "", "warn_at": [0.8]},
            ],
        },
    )
    sink = InMemorySink()
    guard = MemoryGuard(clock=clock)
    with ControlPlane(
        settings, resolver=StaticProfiles({}), guard=guard, sink=sink, clock=clock
    ) as plane:
        watch = BudgetWatch(
            WarningPolicy.from_settings(settings.alerts),
            clock=clock,
            events=plane.telemetry,
            timezone="UTC",
        )
        budget = BudgetSpec(daily_usd=Decimal("0.10"))
        keys = [
            GuardKey("acme", "support", "chat"),
            GuardKey("acme", "support", "chat", attribute="user=alice"),
            GuardKey("acme", "support", "chat", attribute="user=bob"),
            GuardKey("acme", "support", "chat", attribute="tag.team=search"),
            GuardKey("globex", "support", "chat"),
        ]
        for key in keys:
            ticket = guard.admit(
                key, tokens=0, reserve_usd=Decimal("0.01"), rate_limit=None, budget=budget
            )
            guard.settle(ticket, cost_usd=Decimal("0.10"), tokens=None)  # 100 % of the cap
            watch.observe(ticket)
        assert plane.flush()
    got = warnings(sink)
    by_key: dict[tuple[str, str], list[float]] = {}
    for w in got:
        name = (w[semconv.TENANT], w.get(semconv.BUDGET_ATTRIBUTE, ""))
        by_key.setdefault(name, []).append(w[semconv.BUDGET_THRESHOLD])
    assert by_key == {
        ("acme", ""): [0.8],
        ("acme", "user=alice"): [0.5],
        ("acme", "user=bob"): [1.0],
        ("acme", "tag.team=search"): [0.5, 0.8, 1.0],
        ("globex", ""): [0.5, 0.8, 1.0],
    }
    # A budget by attribution warns under ids of its own; an ordinary one as before.
    alice = next(w for w in got if w.get(semconv.BUDGET_ATTRIBUTE) == "user=alice")
    assert alice[semconv.EVENT_ID] == warning_event_id(
        "acme", "support", "chat", "2026-06-01", "0.5", attribute="user=alice"
    )
    assert alice[semconv.EVENT_ID] != warning_event_id(
        "acme", "support", "chat", "2026-06-01", "0.5"
    )
    plain = next(w for w in got if w[semconv.TENANT] == "globex")
    assert plain[semconv.EVENT_ID] == expected_id(plain)


def test_the_most_specific_entry_wins_whatever_the_order() -> None:
    policy = WarningPolicy(
        thresholds=(0.5,),
        projected=True,
        budgets=(
            BudgetRule(tenant="acme", context="support", thresholds=(0.7,)),
            BudgetRule(tenant="acme", thresholds=(0.9,), projected=False),
            BudgetRule(purpose="chat", projected=False),
        ),
    )
    # tenant + context (2 fields) beats tenant (1) though written first.
    support = policy.for_key("acme", "support", "chat")
    assert (tuple(support.thresholds), support.projected) == ((0.7,), True)
    # tenant and purpose are equally specific: the later entry wins, and what it leaves out
    # (warn_at) is the global value, not the other entry's.
    billing = policy.for_key("acme", "billing", "chat")
    assert (tuple(billing.thresholds), billing.projected) == ((0.5,), False)
    other = policy.for_key("globex", "billing", "scoring")
    assert (tuple(other.thresholds), other.projected) == ((0.5,), True)
    assert other.budgets == ()
    # No rules at all: the policy itself, nothing resolved.
    plain = WarningPolicy()
    assert plain.for_key("acme", "support", "chat") is plain


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"tenant": "acme"}, "changes no warning: give warn_at"),
        ({"tenant": "acme", "warn_at": [80]}, r"warn_at holds shares of the cap such as 0\.8"),
        ({"tenant": "acme", "warn_at": [0]}, r"budgets\.0\.warn_at"),
        ({"tenant": "ac*", "warn_at": [0.8]}, "only attribute takes a prefix"),
        ({"attribute": "alice", "warn_at": [0.8]}, "an attribute is written name=value"),
        ({"attribute": "u*=alice", "warn_at": [0.8]}, r"'\*' may only end the attribute"),
        ({"tenant": "acme", "warn_at": [0.8], "warn_ta": [0.9]}, "unknown setting"),
    ],
)
def test_invalid_per_budget_settings_say_what_to_fix(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(alerts={"budgets": [entry]})


def test_two_entries_for_the_same_budgets_are_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"alerts\.budgets\.0 and alerts\.budgets\.1 .* match the same budgets "
        r"\(tenant='acme'\): merge them",
    ):
        load_settings(
            alerts={
                "budgets": [
                    {"tenant": "acme", "warn_at": [0.8]},
                    {"tenant": "acme", "context": "*", "warn_projected": False},
                ]
            }
        )
    # `*` and a left-out field are the same matcher; a prefix is not the value itself.
    settings = load_settings(
        alerts={
            "budgets": [
                {"attribute": "user=*", "warn_at": [1.0]},
                {"attribute": "user=alice", "warn_at": [0.5]},
            ]
        }
    )
    assert [e.attribute for e in settings.alerts.budgets] == ["user=*", "user=alice"]
