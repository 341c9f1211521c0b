"""Spend by attribution: end user, session, feature and tags from a context manager or the
call's config metadata, recorded on spans and usage rows (landed in DuckDB, queryable in SQL),
and budgets by attribution enforced with the same fail-closed reservation as profile budgets.

The model boundary is the fake OpenAI-compatible server (real langchain-openai over HTTP);
the ledger is a real DuckDB file written by the embedded collector.
"""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    Attribution,
    BudgetExceeded,
    BudgetUnverifiable,
    ControlPlane,
    InvalidAttribution,
    MemoryGuard,
    ModelRef,
    RedisGuard,
    ResolvedProfile,
    StaticProfiles,
    attribution,
    current_attribution,
)
from comptroller.control.testing import (
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
)
from comptroller.errors import ConfigError

MODEL = "gpt-4o-mini"
ANSWER = ModelBehaviour(content="ok", prompt_tokens=1000, completion_tokens=100)


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer() as running:
        running.behave(MODEL, ANSWER)
        yield running


def resolver(server: FakeOpenAIServer, model: str = MODEL, **kw: Any) -> StaticProfiles:
    profile = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model=model),
        base_url=server.base_url,
        **kw,
    )
    return StaticProfiles({"reasoning": profile})


def plane_with(
    server: FakeOpenAIServer, *, budgets: list[dict[str, Any]] | None = None, **kw: Any
) -> tuple[ControlPlane, InMemorySink, MemoryGuard]:
    clock = FakeClock()
    sink = InMemorySink()
    guard = kw.pop("guard", None) or MemoryGuard(clock=clock)
    settings = load_settings(telemetry="none", control={"attribution_budgets": budgets or []})
    plane = ControlPlane(
        settings, resolver=resolver(server, **kw), guard=guard, sink=sink, clock=clock
    )
    return plane, sink, guard


def one_call_cost(server: FakeOpenAIServer) -> Decimal:
    plane, sink, _ = plane_with(server)
    with plane:
        plane.chat_model("reasoning", domain="t").invoke("q")
        plane.flush()
    return Decimal(sink.usage_rows()[0][semconv.COST_USD])


# --- where attribution comes from ----------------------------------------------------------


def test_the_context_manager_nests_and_the_call_metadata_is_more_specific() -> None:
    assert current_attribution() is None
    with attribution(user="u-1", feature="search", team="growth") as outer:
        assert outer == Attribution(user="u-1", feature="search", tags=(("team", "growth"),))
        with attribution(session="s-9", tags={"team": "core", "tier": "gold"}):
            inner = current_attribution()
            assert inner == Attribution(
                user="u-1",
                session="s-9",
                feature="search",
                tags=(("team", "core"), ("tier", "gold")),
            )
        assert current_attribution() == outer
    assert current_attribution() is None


def test_threads_and_tasks_started_inside_the_block_inherit_it() -> None:
    seen: list[Attribution | None] = []

    async def task() -> None:
        seen.append(current_attribution())

    with attribution(user="u-7"):
        import contextvars

        ctx = contextvars.copy_context()
        thread = threading.Thread(
            target=ctx.run, args=(lambda: seen.append(current_attribution()),)
        )
        thread.start()
        thread.join()
        asyncio.run(task())
    assert [a.user if a else None for a in seen] == ["u-7", "u-7"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "x" * 129}, "limit is 128"),
        ({"tags": {"Team": "a"}}, "tag name 'Team' is not allowed"),
        ({"tags": {f"t{i}": "v" for i in range(9)}}, "at most 8 tags"),
        ({"user": 1.5}, "must be a string"),
    ],
)
def test_values_that_would_blow_up_cardinality_or_types_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidAttribution, match=message), attribution(**kwargs):
        pass


# --- recorded on spans and rows, landed in DuckDB ---------------------------------------------


def test_attribution_lands_on_spans_and_usage_rows_and_sql_groups_spend_by_it(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.duckdb"
    settings = load_settings(telemetry="embedded", data_dir=str(tmp_path), db=str(db))
    with ControlPlane(settings, resolver=resolver(server)) as plane:
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        with attribution(user="alice", feature="search", team="growth"):
            model.invoke("q", config={"metadata": {"session_id": "s-1"}})
            model.invoke("q", config={"metadata": {"tags": {"team": "core"}}})
        model.invoke("q", config={"metadata": {"user_id": "bob", "tags": ["tier=gold"]}})
        model.invoke("q")  # no attribution at all
        assert plane.flush()

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT user_id, session_id, feature, tags['team'], tags['tier'], cost_usd "
            "FROM llm_usage ORDER BY user_id NULLS LAST, session_id NULLS LAST"
        ).fetchall()
        by_user = dict(
            con.execute(
                "SELECT coalesce(user_id, '(none)'), sum(cost_usd) FROM llm_usage GROUP BY 1"
            ).fetchall()
        )
        span_users = sorted(
            con.execute(
                "SELECT attributes->>'$.\"user.id\"' FROM spans "
                "WHERE is_genai AND attributes->>'$.\"user.id\"' IS NOT NULL"
            ).fetchall()
        )
    finally:
        con.close()
    cost = rows[0][5]
    assert [r[:5] for r in rows] == [
        ("alice", "s-1", "search", "growth", None),
        ("alice", None, "search", "core", None),
        ("bob", None, None, None, "gold"),
        (None, None, None, None, None),
    ]
    assert by_user == {"alice": 2 * cost, "bob": cost, "(none)": cost}
    # The attempt's CLIENT span and the call's INTERNAL span both carry it.
    assert span_users == [("alice",)] * 4 + [("bob",)] * 2


def test_the_span_and_row_attributes_name_each_part(server: FakeOpenAIServer) -> None:
    plane, sink, _ = plane_with(server)
    with plane, attribution(user="u-1", session="s-1", feature="chat", tags={"b": "2", "a": "1"}):
        plane.chat_model("reasoning", domain="t").invoke("q")
        plane.flush()
    row = sink.usage_rows()[0]
    assert row[semconv.USER_ID] == "u-1"
    assert row[semconv.SESSION_ID] == "s-1"
    assert row[semconv.FEATURE] == "chat"
    assert json.loads(row[semconv.TAGS]) == {"a": "1", "b": "2"}
    assert row[semconv.TAGS] == '{"a":"1","b":"2"}'  # sorted, compact: one text per tag set
    # Spans also name the session as the GenAI conventions' conversation; rows need not.
    for span in (*sink.attempt_spans(), *sink.call_spans()):
        attrs = span.attributes or {}
        assert attrs[semconv.SESSION_ID] == "s-1"
        assert attrs[semconv.GEN_AI_CONVERSATION_ID] == "s-1"
    assert semconv.GEN_AI_CONVERSATION_ID not in row


def test_bad_metadata_is_refused_before_anything_is_sent(server: FakeOpenAIServer) -> None:
    plane, _, _ = plane_with(server)
    with plane:
        model = plane.chat_model("reasoning", domain="t")
        with pytest.raises(InvalidAttribution, match="not 'name=value'"):
            model.invoke("q", config={"metadata": {"tags": ["oops"]}})
    assert server.request_count(MODEL) == 0


# --- budgets by attribution ------------------------------------------------------------------


def test_a_daily_cap_per_end_user_refuses_that_user_only(server: FakeOpenAIServer) -> None:
    cost = one_call_cost(server)
    # Room for some forty calls; each reserves its worst case (100 tokens out) first.
    plane, sink, guard = plane_with(
        server,
        budgets=[{"by": "user", "daily_usd": str(cost * 40), "tenant": "acme-eu"}],
        defaults=_max_tokens(100),
    )
    with plane:
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        with attribution(user="alice"):
            spent, refused = spend_until_refused(lambda: model.invoke("q"))
        assert 30 <= spent <= 40
        assert refused.key.attribute == "user=alice"
        assert refused.key.tenant == "acme-eu"
        with attribution(user="bob"):
            model.invoke("q")  # bob has his own cap
        model.invoke("q")  # no user: not counted by the per-user budget
        other = plane.chat_model("reasoning", domain="globex")
        with attribution(user="alice"):
            other.invoke("q")  # the rule is for acme-eu only
        plane.flush()
    today = guard.today()
    alice = guard.ledger(_key("acme-eu", "user=alice"), day=today)
    assert alice.spent_usd == cost * spent
    assert alice.reserved_usd == 0  # the refused call holds nothing
    assert guard.ledger(_key("acme-eu", "user=bob"), day=today).spent_usd == cost
    rejected = sink.events(semconv.EVENT_BUDGET_REJECTED)
    assert [e[semconv.BUDGET_ATTRIBUTE] for e in rejected] == ["user=alice"]


def test_a_refusal_by_the_tag_budget_releases_the_profile_budget_reservation(
    server: FakeOpenAIServer,
) -> None:
    cost = one_call_cost(server)
    plane, _, guard = plane_with(
        server,
        budgets=[{"by": "tag.team", "value": "search", "daily_usd": "0"}],
        budget=_budget("10"),
    )
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        with attribution(team="search"), pytest.raises(BudgetExceeded) as refused:
            model.invoke("q")
        with attribution(team="growth"):
            model.invoke("q")  # another team: the rule names team=search only
    assert refused.value.key.attribute == "tag.team=search"
    profile_key = _key("acme-eu", "", context="support", purpose="reasoning")
    state = guard.ledger(profile_key)
    assert state.reserved_usd == 0
    assert state.spent_usd == cost  # the growth call only


def test_a_budget_by_attribution_fails_closed_without_a_price(server: FakeOpenAIServer) -> None:
    server.behave("unknown-model-x", ANSWER)
    plane, _, _ = plane_with(
        server, budgets=[{"by": "user", "daily_usd": "5"}], model="unknown-model-x"
    )
    with plane, attribution(user="alice"), pytest.raises(BudgetUnverifiable):
        plane.chat_model("reasoning", domain="t").invoke("q")
    assert server.request_count("unknown-model-x") == 0


async def test_async_calls_and_a_shared_redis_ledger_enforce_the_same_cap(
    server: FakeOpenAIServer, redis_url: str
) -> None:
    cost = one_call_cost(server)
    clock = FakeClock()
    prefix = f"attr-{id(clock)}"
    guard = RedisGuard(redis_url, clock=clock, prefix=prefix, background_flush=False)
    plane, _, _ = plane_with(
        server,
        budgets=[{"by": "feature", "daily_usd": str(cost * 30), "purpose": "reasoning"}],
        defaults=_max_tokens(100),
        guard=guard,
    )
    try:
        with plane:
            model = plane.chat_model("reasoning", domain="acme-eu")
            done = 0
            with attribution(feature="digest"):
                while True:
                    try:
                        await model.ainvoke("q")
                    except BudgetExceeded as exc:
                        refused = exc
                        break
                    done += 1
            assert refused.key == _key("acme-eu", "feature=digest", purpose="reasoning")
            assert 20 <= done <= 30
            await guard.aflush()
            state = guard.ledger(refused.key)
            assert state.spent_usd == cost * done
    finally:
        await guard.aclose()


def test_invalid_budget_rules_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="by must be 'user', 'session', 'feature' or 'tag"):
        load_settings(control={"attribution_budgets": [{"by": "team", "daily_usd": 1}]})
    with pytest.raises(ConfigError, match="daily_usd"):
        load_settings(control={"attribution_budgets": [{"by": "user", "daily_usd": -1}]})


# --- helpers -------------------------------------------------------------------------------


def spend_until_refused(call: Any) -> tuple[int, BudgetExceeded]:
    """Calls made before the budget refused one, and the refusal."""
    for done in range(1000):
        try:
            call()
        except BudgetExceeded as exc:
            return done, exc
    raise AssertionError("the budget never refused a call")


def _key(tenant: str, attribute: str, *, context: str = "*", purpose: str = "*") -> Any:
    from comptroller.control import GuardKey

    return GuardKey(tenant, context, purpose, attribute)


def _max_tokens(n: int) -> Any:
    from comptroller.control import CallDefaults

    return CallDefaults(max_tokens=n)


def _budget(usd: str) -> Any:
    from comptroller.control import BudgetSpec

    return BudgetSpec(daily_usd=Decimal(usd))


# --- the ledger side: budget state, the gate, reseeding ------------------------------------


def test_the_ledger_shows_each_users_budget_and_a_restart_remembers_their_spend(
    server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comptroller import analytics
    from comptroller.cli import main

    cost = one_call_cost(server)
    db = tmp_path / "ledger.duckdb"
    rules = [{"by": "user", "daily_usd": str(cost * 5), "tenant": "acme-eu"}]
    settings = load_settings(
        telemetry="embedded",
        data_dir=str(tmp_path),
        db=str(db),
        control={"attribution_budgets": rules},
        alerts={"budget_warn_projected": False, "budget_warn_at": [0.5]},
    )
    caps = dict(defaults=_max_tokens(100))
    with ControlPlane(settings, resolver=resolver(server, **caps)) as plane:
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        with attribution(user="alice"):
            for _ in range(3):
                model.invoke("q")
        with attribution(user="bob"):
            model.invoke("q")
        assert plane.flush()

    # A new process (the same ledger) starts from the spend already landed today.
    with ControlPlane(settings, resolver=resolver(server, **caps)) as plane:
        guard = plane.guard
        assert guard is not None
        assert guard.ledger(_key("acme-eu", "user=alice")).spent_usd == cost * 3
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        with attribution(user="alice"):
            done, _ = spend_until_refused(lambda: model.invoke("q"))
        assert done == 2  # two calls' worth was left (each reserves less than it costs)
        assert plane.flush()

    reader = analytics.DuckDBReader(duckdb.connect(str(db), read_only=True), owned=True)
    try:
        states = {
            s.attribute: s
            for s in analytics.budget_state(
                reader, attribution_budgets=settings.control.attribution_budgets
            )
        }
    finally:
        reader.close()
    alice, bob = states["user=alice"], states["user=bob"]
    assert (alice.tenant, alice.context, alice.purpose) == ("acme-eu", "*", "*")
    assert alice.spent_usd == cost * (3 + done)
    assert alice.cap_usd == cost * 5
    assert alice.refused_calls == 1
    assert alice.status == "refused"
    assert bob.spent_usd == cost
    assert bob.status == "ok"

    con = duckdb.connect(str(db), read_only=True)
    try:
        events = con.execute(
            "SELECT kind, attribute FROM budget_events WHERE attribute IS NOT NULL "
            "ORDER BY kind, attribute"
        ).fetchall()
    finally:
        con.close()
    assert ("rejected", "user=alice") in events
    assert ("warning", "user=alice") in events  # half of alice's cap was crossed

    monkeypatch.setenv("COMPTROLLER_CONTROL_ATTRIBUTION_BUDGETS", json.dumps(rules))
    with pytest.raises(SystemExit) as gate:
        main(["--data-dir", str(tmp_path), "budget", "check", "--db", str(db)])
    assert gate.value.code == 3  # the control plane refused a budget's calls today
