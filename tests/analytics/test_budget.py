from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb
import pytest
from usage_db import insert_usage, usage_row

from comptroller.analytics import (
    DuckDBReader,
    apply_usage_batch,
    budget_state,
    connect,
    record_budget_events,
)
from comptroller.budget_alerts import BudgetRule, WarningPolicy, warning_event_id
from comptroller.config import load_settings

ZONE = "Europe/Paris"
# 10:00 in Paris: 10 hours of the local day gone, 14 to go.
NOW = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def mem() -> duckdb.DuckDBPyConnection:
    return connect(":memory:")


def land(con: duckdb.DuckDBPyConnection, rows: list[dict[str, object]]) -> None:
    apply_usage_batch(con, insert_usage(con, rows), timezone=ZONE)


def test_budget_state_reports_spend_cap_burn_and_projection_for_capped_keys(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW - dt.timedelta(hours=1), cap="10", cost="2.5"),
            usage_row(NOW - dt.timedelta(hours=2), cap="10", cost="2.5", model="gpt-4o"),
            usage_row(NOW, cap=None, cost="100", tenant="uncapped"),
            # Yesterday in Paris (23:30 local on the 20th): not today's spend.
            usage_row(dt.datetime(2026, 11, 20, 22, 30, tzinfo=dt.UTC), cap="10", cost="9"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.key == ("acme", "ctx", "chat")
    assert state.day == dt.date(2026, 11, 21)
    assert state.spent_usd == Decimal("5")
    assert state.cap_usd == Decimal("10")
    assert state.utilisation == pytest.approx(0.5)
    assert state.burn_usd_per_hour == pytest.approx(0.5)
    assert state.projected_usd == pytest.approx(5 + 0.5 * 14)
    assert state.status == "ok"
    assert state.calls == 2


def test_unpriced_usage_is_counted_with_its_models_never_zero_silently(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW, cap="1", cost="0.1"),
            usage_row(NOW, cap="1", cost=None, model="zeta-1"),
            usage_row(NOW, cap="1", cost=None, model="alpha-2"),
            usage_row(NOW, cap="1", cost=None, model="alpha-2"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.unpriced_calls == 3
    assert state.unpriced_models == ("alpha-2", "zeta-1")
    assert state.spent_usd == Decimal("0.1")


def test_latest_cap_in_force_wins_when_the_cap_changed_during_the_day(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(
        mem,
        [
            usage_row(NOW - dt.timedelta(hours=3), cap="1", cost="0.9", model="a"),
            usage_row(NOW - dt.timedelta(hours=1), cap="3", cost="0.3", model="b"),
        ],
    )
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.cap_usd == Decimal("3")
    assert state.status == "ok"


@pytest.mark.parametrize(
    ("spent", "warn_ratio", "status"),
    [("0.79", 0.8, "ok"), ("0.8", 0.8, "warning"), ("0.5", 0.5, "warning"), ("1", 0.8, "exceeded")],
)
def test_status_follows_warn_ratio_and_cap(
    mem: duckdb.DuckDBPyConnection, spent: str, warn_ratio: float, status: str
) -> None:
    land(mem, [usage_row(NOW, cap="1", cost=spent)])
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE, warn_ratio=warn_ratio)
    assert state.status == status


AT_80 = WarningPolicy(thresholds=(0.8,), projected=False)
"""One warning at 80 % of the cap, no projection: the crossings these tests count."""


def events(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT kind, tenant, day::VARCHAR FROM budget_events ORDER BY kind, tenant"
    ).fetchall()


def test_budget_events_recorded_once_per_day_and_key(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="0.85")])
    first = record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)
    assert [e.kind for e in first] == ["warning"]
    assert record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80) == []
    land(mem, [usage_row(NOW, cap="1", cost="0.2")])
    assert [e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)] == [
        "exceeded"
    ]
    assert record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80) == []
    assert events(mem) == [("exceeded", "acme", "2026-11-21"), ("warning", "acme", "2026-11-21")]
    attrs = json.loads(
        mem.execute("SELECT attributes FROM budget_events WHERE kind = 'warning'").fetchall()[0][0]
    )
    assert attrs["utilisation"] == pytest.approx(0.85)


def test_jump_past_the_cap_records_both_crossings(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="5")])
    assert sorted(
        e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)
    ) == [
        "exceeded",
        "warning",
    ]


def test_a_new_day_records_again(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="1")])
    record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)
    tomorrow = NOW + dt.timedelta(days=1)
    land(mem, [usage_row(tomorrow, cap="1", cost="1")])
    assert len(record_budget_events(mem, now=tomorrow, timezone=ZONE, policy=AT_80)) == 2
    assert len(events(mem)) == 4


def test_crossing_already_recorded_by_the_control_plane_is_not_repeated(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    mem.execute(
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose) "
        "VALUES ('cp-1', ?, '2026-11-21', 'exceeded', 'acme', 'ctx', 'chat')",
        [NOW],
    ).fetchall()
    land(mem, [usage_row(NOW, cap="1", cost="3")])
    assert [e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)] == [
        "warning"
    ]


def test_events_recorded_inside_the_landing_transaction_see_its_rows(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    mem.execute("BEGIN TRANSACTION")
    land(mem, [usage_row(NOW, cap="1", cost="3")])
    assert len(record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80)) == 2
    mem.execute("COMMIT")
    assert len(events(mem)) == 2


def refuse(
    con: duckdb.DuckDBPyConnection,
    event_id: str,
    *,
    at: dt.datetime = NOW,
    tenant: str = "acme",
    cap: str = "1",
    spent: str = "0.7",
    reserved: str = "0.2",
    requested: str | None = "0.25",
) -> None:
    """A `rejected` budget event as the collector lands the control plane's refusal (the
    worst-case reservation it asked for, when sent, is in its attributes)."""
    attributes = {"comptroller.tenant": tenant}
    if requested is not None:
        attributes["comptroller.budget.requested_usd"] = requested
    con.execute(
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, cap_usd, "
        "spent_usd, reserved_usd, attributes) VALUES (?, ?, ?, 'rejected', ?, 'ctx', 'chat', ?, "
        "?, ?, ?)",
        [
            event_id,
            at,
            at.astimezone(dt.timezone(dt.timedelta(hours=1))).date(),  # Paris in November
            tenant,
            Decimal(cap),
            Decimal(spent),
            Decimal(reserved),
            json.dumps(attributes),
        ],
    )


def test_a_key_that_refused_calls_today_is_refused_with_the_numbers_of_its_last_refusal(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(mem, [usage_row(NOW - dt.timedelta(hours=1), cap="1", cost="0.6")])
    refuse(mem, "r1", at=NOW - dt.timedelta(minutes=30), spent="0.6", reserved="0.3")
    refuse(mem, "r2", at=NOW - dt.timedelta(minutes=5), spent="0.7", reserved="0.2")
    # Yesterday's refusal (23:30 in Paris on the 20th) is not today's.
    refuse(mem, "old", at=dt.datetime(2026, 11, 20, 22, 30, tzinfo=dt.UTC))

    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)

    assert state.status == "refused"
    assert state.spend_status == "ok"  # 60% of the cap: its spend alone looks fine
    assert state.refusals is not None
    assert state.refused_calls == 2
    # The last refusal: it needed 0.25 but 1 - 0.7 - 0.2 = 0.1 was left.
    assert state.refusals.needed_usd == Decimal("0.25")
    assert state.refusals.left_usd == Decimal("0.1")
    assert state.refusals.why() == (
        "2 calls refused: the last needed $0.25 (worst case) but only $0.10 of the $1.00 cap "
        "was left (spent $0.70, reserved in flight $0.20)"
    )
    assert state.refusals.brief() == "2 calls refused, needed $0.25 > $0.10 left"


def test_a_refusal_without_its_reservation_says_it_was_not_recorded_and_never_shows_zero(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    # The demo's numbers: a $0.0002 cap, $0.0000342 spent, nothing in flight.
    refuse(mem, "r1", cap="0.0002", spent="0.0000342", reserved="0", requested=None)
    [state] = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)
    assert state.status == "refused"
    assert state.refusals is not None
    assert state.refusals.needed_usd is None
    why = state.refusals.why()
    assert "its worst-case reservation was not recorded" in why
    assert "only $0.0001658 of the $0.0002000 cap was left (spent $0.0000342" in why
    assert state.refusals.brief() == "1 call refused, $0.000166 left of the cap"


def test_a_key_with_only_refused_calls_today_is_listed_with_its_cap_and_no_spend(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(mem, [usage_row(NOW, tenant="other", cap="10", cost="1")])
    refuse(mem, "r1", tenant="starved", cap="2", spent="1.9")

    states = budget_state(DuckDBReader(mem), now=NOW, timezone=ZONE)

    assert [(s.tenant, s.status) for s in states] == [("starved", "refused"), ("other", "ok")]
    starved = states[0]
    assert starved.cap_usd == Decimal("2")
    assert starved.spent_usd == 0  # nothing landed: the refusal's own view is in `refusals`
    assert starved.calls == 0
    assert starved.refusals is not None
    assert starved.refusals.spent_usd == Decimal("1.9")


def test_refused_keys_pass_the_near_cap_filter_of_the_overview(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    from comptroller.analytics._panels import builtin_panels, run_panel

    land(
        mem,
        [
            usage_row(NOW, tenant="calm", cap="10", cost="1"),
            usage_row(NOW, tenant="refusing", cap="10", cost="1"),
        ],
    )
    refuse(mem, "r1", tenant="refusing", cap="10", spent="1", reserved="8.9", requested="0.5")
    rows = run_panel(
        DuckDBReader(mem),
        builtin_panels()["budget_state"],
        now=NOW,
        timezone=ZONE,
        min_utilisation=0.8,
    ).to_pylist()
    assert [(r["tenant"], r["status"], r["refused_calls"]) for r in rows] == [
        ("refusing", "refused", 1)
    ]


def test_a_refusal_records_no_crossing_of_its_own(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, cap="1", cost="0.5")])
    refuse(mem, "r1")
    assert record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80) == []
    land(mem, [usage_row(NOW, cap="1", cost="0.6")])  # now 1.1 of 1: exceeded, and refused
    kinds = sorted(e.kind for e in record_budget_events(mem, now=NOW, timezone=ZONE, policy=AT_80))
    assert kinds == ["exceeded", "warning"]


def test_every_share_of_the_cap_warns_once_under_the_control_planes_id(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    policy = WarningPolicy(thresholds=(0.5, 0.8, 1.0), projected=False)
    land(mem, [usage_row(NOW, cap="1", cost="0.6")])
    day = NOW.astimezone(ZoneInfo(ZONE)).date().isoformat()
    # The control plane raised the 50 % warning first; it landed under the shared id.
    mem.execute(
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose) "
        "VALUES (?, ?, ?, 'warning', 'acme', 'ctx', 'chat')",
        [warning_event_id("acme", "ctx", "chat", day, "0.5"), NOW, day],
    ).fetchall()
    assert record_budget_events(mem, now=NOW, timezone=ZONE, policy=policy) == []
    land(mem, [usage_row(NOW, cap="1", cost="0.5")])  # 1.1 of 1
    got = record_budget_events(mem, now=NOW, timezone=ZONE, policy=policy)
    assert sorted((e.kind, e.threshold) for e in got) == [
        ("exceeded", None),
        ("warning", 0.8),
        ("warning", 1.0),
    ]
    assert record_budget_events(mem, now=NOW, timezone=ZONE, policy=policy) == []
    rows = mem.execute(
        "SELECT attributes->>'$.\"comptroller.budget.threshold\"' FROM budget_events "
        "WHERE kind = 'warning' AND service_name = 'comptroller.analytics' ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == ["0.8", "1.0"]


def test_a_burn_rate_that_will_cross_the_cap_is_recorded_as_projected(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    policy = WarningPolicy(thresholds=(), projected=True)
    start = dt.datetime.combine(
        NOW.astimezone(ZoneInfo(ZONE)).date(), dt.time(), tzinfo=ZoneInfo(ZONE)
    )
    six = start + dt.timedelta(hours=6)
    land(mem, [usage_row(six - dt.timedelta(minutes=5), cap="1", cost="0.3")])
    (got,) = record_budget_events(mem, now=six, timezone=ZONE, policy=policy)
    assert got.kind == "warning"
    assert got.threshold is None
    assert got.projected_usd == Decimal("1.2")  # $0.3 in a quarter of the day
    assert record_budget_events(mem, now=six, timezone=ZONE, policy=policy) == []


def test_a_budget_with_its_own_shares_warns_at_those_and_the_others_at_the_global_ones(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    """`[[alerts.budgets]]` as the ledger applies it: the key the entry matches warns at its
    shares only, every other key at `budget_warn_at`, under the ids the control plane uses."""
    settings = load_settings(
        alerts={
            "budget_warn_at": [0.5, 0.8],
            "budget_warn_projected": False,
            "budgets": [{"tenant": "acme", "purpose": "chat", "warn_at": [0.9, 0.95]}],
        }
    )
    policy = WarningPolicy.from_settings(settings.alerts)
    land(
        mem,
        [
            usage_row(NOW, cap="1", cost="0.92", tenant="acme"),
            usage_row(NOW, cap="1", cost="0.92", tenant="globex"),
        ],
    )
    got = record_budget_events(mem, now=NOW, timezone=ZONE, policy=policy)
    day = NOW.astimezone(ZoneInfo(ZONE)).date().isoformat()
    assert sorted((e.tenant, e.threshold, e.event_id) for e in got) == [
        ("acme", 0.9, warning_event_id("acme", "ctx", "chat", day, "0.9")),
        ("globex", 0.5, warning_event_id("globex", "ctx", "chat", day, "0.5")),
        ("globex", 0.8, warning_event_id("globex", "ctx", "chat", day, "0.8")),
    ]
    land(mem, [usage_row(NOW, cap="1", cost="0.05", tenant="acme")])  # 0.97 of the cap
    later = record_budget_events(mem, now=NOW, timezone=ZONE, policy=policy)
    assert [(e.tenant, e.threshold) for e in later] == [("acme", 0.95)]


def test_a_rule_can_turn_warnings_off_for_one_budget_and_projections_on_for_another(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    policy = WarningPolicy(
        thresholds=(0.5,),
        projected=False,
        budgets=(
            BudgetRule(tenant="quiet", thresholds=()),
            BudgetRule(tenant="watched", thresholds=(), projected=True),
        ),
    )
    start = dt.datetime.combine(
        NOW.astimezone(ZoneInfo(ZONE)).date(), dt.time(), tzinfo=ZoneInfo(ZONE)
    )
    six = start + dt.timedelta(hours=6)
    # $0.3 of $1 in a quarter of the day: $1.2 by midnight at that rate.
    at = six - dt.timedelta(minutes=5)
    land(
        mem,
        [
            usage_row(at, cap="1", cost="0.6", tenant="quiet"),
            usage_row(at, cap="1", cost="0.3", tenant="watched"),
            usage_row(at, cap="1", cost="0.6", tenant="plain"),
        ],
    )
    got = record_budget_events(mem, now=six, timezone=ZONE, policy=policy)
    assert sorted((e.tenant, e.threshold, e.projected_usd) for e in got) == [
        ("plain", 0.5, None),
        ("watched", None, Decimal("1.2")),
    ]
