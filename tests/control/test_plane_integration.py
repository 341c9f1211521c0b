"""The control plane wired to the other parts: profiles and credentials, the ledger seeded
from what landed, and the fake endpoint's token accounting."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    CallDefaults,
    ControlPlane,
    GuardKey,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    StaticProfiles,
)
from comptroller.control.profiles import Actor, ProfileService, ProfileSpec, Scope
from comptroller.control.testing import FakeOpenAIServer, ModelBehaviour

PLATFORM = Actor(name="ops", role="platform")


def test_rotated_key_is_used_by_the_next_call(data_dir: Path) -> None:
    settings = load_settings(None, data_dir=data_dir, telemetry="none")
    with FakeOpenAIServer() as server:
        service = ProfileService.from_settings(settings)
        service.admins.init(PLATFORM.name)
        try:
            service.credentials.set(Scope.global_(), "openai", "sk-first-key", actor=PLATFORM)
            service.set_profile(
                Scope.global_(),
                "scoring",
                ProfileSpec(
                    model=ModelRef(provider="openai", model="gpt-4o-mini"), base_url=server.base_url
                ),
                actor=PLATFORM,
            )
            with ControlPlane(settings, resolver=service) as plane:
                model = plane.chat_model("scoring", org="acme", domain="acme-eu", context="ci")
                model.invoke("first")
                service.credentials.set(Scope.global_(), "openai", "sk-second-key", actor=PLATFORM)
                model.invoke("second")
        finally:
            service.close()
    auth = [headers.get("authorization") for headers in server.headers]
    assert auth == ["Bearer sk-first-key", "Bearer sk-second-key"]


def test_restarted_plane_seeds_budget_from_what_landed(data_dir: Path) -> None:
    db_file = data_dir / "usage.duckdb"
    settings = load_settings(None, data_dir=data_dir, db=db_file, telemetry="embedded")
    with FakeOpenAIServer() as server:
        server.behave("gpt-4o", ModelBehaviour(prompt_tokens=2000, completion_tokens=10))
        # One call of gpt-4o at 2000 input tokens costs $0.0051: the first call alone passes the cap.
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="openai", model="gpt-4o"),
            base_url=server.base_url,
            budget=BudgetSpec(daily_usd=Decimal("0.004")),
            defaults=CallDefaults(max_tokens=10),
        )
        profiles = StaticProfiles({"reasoning": profile})
        with ControlPlane(settings, resolver=profiles) as plane:
            plane.chat_model("reasoning", org="acme", domain="acme-eu", context="ci").invoke(
                "x" * 40
            )
        # A new process (a new plane, an empty in-memory ledger) on the same database.
        with ControlPlane(settings, resolver=profiles) as plane:
            guard = plane.guard
            assert isinstance(guard, MemoryGuard)
            assert guard.ledger(GuardKey("acme-eu", "ci", "reasoning")).spent_usd >= Decimal(
                "0.005"
            )
            with pytest.raises(BudgetExceeded):
                plane.chat_model("reasoning", org="acme", domain="acme-eu", context="ci").invoke(
                    "x" * 40
                )


def test_fake_server_reports_reasoning_inside_completion_tokens() -> None:
    import httpx

    with FakeOpenAIServer() as server:
        server.behave("o4-mini", ModelBehaviour(content="one two three", reasoning_tokens=20))
        body = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "o4-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer x"},
        ).json()
    usage = body["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 20
    assert usage["completion_tokens"] == 23


def test_refused_call_lands_its_outcome_and_keys_in_spans(data_dir: Path) -> None:
    import duckdb

    db_file = data_dir / "refused.duckdb"
    settings = load_settings(None, data_dir=data_dir, db=db_file, telemetry="embedded")
    profile = ResolvedProfile(
        purpose="scoring",
        model=ModelRef(provider="openai", model="gpt-4o"),
        base_url="http://127.0.0.1:9",  # never reached: the budget refuses first
        budget=BudgetSpec(daily_usd=Decimal("0.000001")),
        defaults=CallDefaults(max_tokens=100),
    )
    with ControlPlane(settings, resolver=StaticProfiles({"scoring": profile})) as plane:
        model = plane.chat_model("scoring", org="acme", domain="acme-eu", context="ci")
        with pytest.raises(BudgetExceeded):
            model.invoke("score this")
    con = duckdb.connect(str(db_file), read_only=True)
    try:
        rows = con.execute(
            "select outcome, purpose, tenant, org, context from spans where outcome is not null"
        ).fetchall()
        usage = con.execute("select count(*) from llm_usage").fetchall()
    finally:
        con.close()
    assert rows == [("budget_exceeded", "scoring", "acme-eu", "acme", "ci")]
    assert usage == [(0,)]  # nothing reserved, nothing charged
