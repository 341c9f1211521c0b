"""The profile service over a real store: SQLite file and PostgreSQL (own schema per test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_profiles_kit import (
    ACME,
    ACME_EU,
    GLOBAL,
    PLATFORM,
    STORE_PARAMS,
    Rig,
    make_service,
    spec,
    store_urls,
    with_openai,
)

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import BudgetSpec, ProfileNotFound, UnknownPurpose, VersionNotFound
from comptroller.control._profile_store import ProfileStore
from comptroller.control._store_schema import HEAD_REVISION, VERSION_TABLE
from comptroller.control.profiles import ProfileService, Scope
from comptroller.errors import UsageError


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def rig(store_url: str, data_dir: Path) -> Iterator[Rig]:
    rig = make_service(store_url, data_dir)
    with_openai(rig)
    yield rig
    rig.service.close()


def test_store_is_migrated_to_head_and_reopening_is_a_no_op(store_url: str) -> None:
    first = ProfileStore(store_url)
    second = ProfileStore(store_url)
    with second.engine.connect() as con:
        assert (
            con.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            == HEAD_REVISION
        )
        tables = set(sa.inspect(con).get_table_names())
    assert {
        "comptroller_profile_versions",
        "comptroller_audit_log",
        "comptroller_credentials",
        "comptroller_change_counter",
    } <= tables
    assert second.change_count() == 0
    first.close()
    second.close()


def test_every_level_of_the_chain_resolves_through_the_store(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, store_url: str, data_dir: Path
) -> None:
    monkeypatch.setenv("COMPTROLLER_MODEL_REASONING", "openai:gpt-4o-mini")
    service = ProfileService.from_settings(load_settings(), url=store_url, environ=rig.environ)
    try:
        assert (
            str(service.resolve("reasoning", domain="acme-eu", org="acme").model)
            == "openai:gpt-4o-mini"
        )
        service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
        assert (
            str(service.resolve("reasoning", domain="acme-eu", org="acme").model) == "openai:gpt-4o"
        )
        service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
        assert (
            str(service.resolve("reasoning", domain="acme-eu", org="acme").model)
            == "openai:gpt-4.1"
        )
        assert str(service.resolve("reasoning", domain=None, org="globex").model) == "openai:gpt-4o"
        service.set_profile(ACME_EU, "reasoning", spec(model="openai:gpt-4.1-mini"), actor=PLATFORM)
        profile = service.resolve("reasoning", domain="acme-eu", org="acme")
        assert str(profile.model) == "openai:gpt-4.1-mini"
        assert (profile.profile_id, profile.version) == ("domain:acme-eu/reasoning", 1)
        assert (
            str(service.resolve("reasoning", domain="acme-us", org="acme").model)
            == "openai:gpt-4.1"
        )
    finally:
        service.close()


def test_reflection_override_inherits_the_rest_of_the_org_profile(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        ACME,
        "reasoning",
        spec(model="openai:gpt-4o", budget=BudgetSpec(daily_usd=Decimal("5")), temperature=0.1),
        actor=PLATFORM,
    )
    service.set_profile(ACME_EU, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
    profile = service.resolve("reasoning", domain="acme-eu", org="acme")
    assert str(profile.model) == "openai:gpt-4.1"
    assert profile.budget == BudgetSpec(daily_usd=Decimal("5"))
    assert profile.defaults.temperature == 0.1


def test_set_updates_the_active_version_and_unset_makes_a_field_inherit_again(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        GLOBAL, "reasoning", spec(model="openai:gpt-4o", temperature=0.5), actor=PLATFORM
    )
    service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4.1", temperature=0.9), actor=PLATFORM
    )
    v2 = service.set_profile(ACME, "reasoning", spec(max_tokens=100), actor=PLATFORM)
    assert v2.version == 2
    assert v2.spec == spec(model="openai:gpt-4.1", temperature=0.9, max_tokens=100)
    v3 = service.set_profile(ACME, "reasoning", spec(), actor=PLATFORM, unset=("temperature",))
    assert v3.spec == spec(model="openai:gpt-4.1", max_tokens=100)
    assert service.resolve("reasoning", domain=None, org="acme").defaults.temperature == 0.5
    v4 = service.set_profile(ACME, "reasoning", spec(variant="b"), actor=PLATFORM, replace=True)
    assert v4.spec == spec(variant="b")
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"


def test_activation_is_append_only_with_numbered_versions(rig: Rig) -> None:
    service = rig.service
    for model in ("openai:gpt-4o", "openai:gpt-4o-mini", "openai:gpt-4.1"):
        service.set_profile(
            ACME, "reasoning", spec(model=model), actor=PLATFORM, reason=f"try {model}"
        )
    history = service.history(ACME, "reasoning")
    assert [v.version for v in history] == [1, 2, 3]
    assert [v.active for v in history] == [False, False, True]
    assert history[0].deactivated_at == history[1].activated_at
    assert history[1].deactivated_at == history[2].activated_at
    assert {v.created_by for v in history} == {"root"}
    assert history[2].reason == "try openai:gpt-4.1"
    assert [v.purpose for v in service.active(ACME)] == ["reasoning"]


def test_rollback_reactivates_a_prior_version_as_a_new_version(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4o", temperature=0.2), actor=PLATFORM
    )
    service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM, replace=True
    )
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4.1"
    v3 = service.rollback(ACME, "reasoning", actor=PLATFORM, reason="4.1 regressed")
    assert (v3.version, v3.rollback_of) == (3, 1)
    assert v3.spec == spec(model="openai:gpt-4o", temperature=0.2)
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"
    assert [v.version for v in service.history(ACME, "reasoning")] == [1, 2, 3]
    last = service.audit(scope=ACME, purpose="reasoning")[-1]
    assert (last.action, last.version, last.reason) == ("rollback", 3, "4.1 regressed")
    assert last.before == {"version": 2, "spec": {"model": "openai:gpt-4.1"}}
    assert last.after == {
        "version": 3,
        "rollback_of": 1,
        "spec": {"model": "openai:gpt-4o", "temperature": 0.2},
    }
    event = rig.events.named(semconv.EVENT_PROFILE_ROLLED_BACK)[-1]
    assert event.attributes[semconv.PROFILE_VERSION] == 3
    assert event.attributes[semconv.PROFILE_PREVIOUS_VERSION] == 2
    assert json.loads(str(event.attributes[semconv.PROFILE_DETAIL]))["rollback_of"] == 1


def test_rollback_to_a_version_whose_credential_ref_is_still_resolvable(rig: Rig) -> None:
    service, creds = rig.service, rig.service.credentials
    old = creds.set(ACME, "openai", "sk-old-acme-key", actor=PLATFORM, name="2025")
    new = creds.set(ACME, "openai", "sk-new-acme-key", actor=PLATFORM, name="2026")
    service.set_profile(
        ACME,
        "reasoning",
        spec(model="openai:gpt-4o", credential_source="byo", credential_ref=old.ref),
        actor=PLATFORM,
    )
    service.set_profile(ACME, "reasoning", spec(credential_ref=new.ref), actor=PLATFORM)
    profile = service.resolve("reasoning", domain=None, org="acme")
    assert creds.resolve_secret(profile, domain=None, org="acme") == "sk-new-acme-key"
    service.rollback(ACME, "reasoning", to_version=1, actor=PLATFORM)
    profile = service.resolve("reasoning", domain=None, org="acme")
    assert profile.credential_ref == old.ref
    assert creds.resolve_secret(profile, domain=None, org="acme") == "sk-old-acme-key"


def test_rollback_errors_name_the_versions(rig: Rig) -> None:
    service = rig.service
    with pytest.raises(VersionNotFound, match="org:acme/reasoning has no earlier version"):
        service.rollback(ACME, "reasoning", actor=PLATFORM)
    service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
    with pytest.raises(VersionNotFound, match=r"has no version 7 \(versions 1–2\)"):
        service.rollback(ACME, "reasoning", to_version=7, actor=PLATFORM)
    with pytest.raises(UsageError, match="version 2 of org:acme/reasoning is already active"):
        service.rollback(ACME, "reasoning", to_version=2, actor=PLATFORM)


def test_diff_between_versions(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4o", temperature=0.2), actor=PLATFORM
    )
    service.set_profile(
        ACME,
        "reasoning",
        spec(model="openai:gpt-4.1", max_tokens=64),
        actor=PLATFORM,
        unset=("temperature",),
    )
    changes = {c.field: (c.before, c.after) for c in service.diff(ACME, "reasoning")}
    assert changes == {
        "model": ("openai:gpt-4o", "openai:gpt-4.1"),
        "temperature": (0.2, None),
        "max_tokens": (None, 64),
    }
    first = {c.field: (c.before, c.after) for c in service.diff(ACME, "reasoning", a=0, b=1)}
    assert first == {"model": (None, "openai:gpt-4o"), "temperature": (None, 0.2)}
    with pytest.raises(VersionNotFound, match="no version 9"):
        service.diff(ACME, "reasoning", a=1, b=9)


def test_every_change_writes_an_audit_entry(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM, reason="initial"
    )
    service.set_profile(ACME, "reasoning", spec(temperature=0.3), actor=PLATFORM, reason="calmer")
    entries = service.audit(purpose="reasoning")
    assert [(e.action, e.version, e.reason, e.actor, e.role) for e in entries] == [
        ("activate", 1, "initial", "root", "platform"),
        ("activate", 2, "calmer", "root", "platform"),
    ]
    assert entries[1].before == {"version": 1, "spec": {"model": "openai:gpt-4o"}}
    assert entries[1].after == {
        "version": 2,
        "spec": {"model": "openai:gpt-4o", "temperature": 0.3},
    }
    assert entries[1].scope == ACME
    assert entries[0].at <= entries[1].at
    # Credential changes are audited as well (set in the fixture).
    # (the fixture's admin grants are audited too, at the scope each grant administers)
    assert [e.action for e in service.audit(scope=GLOBAL) if not e.action.startswith("admin_")] == [
        "credential_set"
    ]


def test_write_invalidates_this_process_cache_at_once(rig: Rig) -> None:
    service = rig.service
    service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"
    # The cache clock never moves: only the local invalidation can make the change visible.
    service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4.1"
    service.rollback(ACME, "reasoning", actor=PLATFORM)
    assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"


def test_write_by_another_service_is_seen_after_the_ttl(
    rig: Rig, store_url: str, data_dir: Path
) -> None:
    other = make_service(store_url, data_dir, environ=rig.environ)
    try:
        rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
        assert (
            str(other.service.resolve("reasoning", domain=None, org="acme").model)
            == "openai:gpt-4o"
        )
        rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
        assert (
            str(other.service.resolve("reasoning", domain=None, org="acme").model)
            == "openai:gpt-4o"
        )
        other.clock.advance(rig.settings.control.resolution_cache_ttl_s)
        assert (
            str(other.service.resolve("reasoning", domain=None, org="acme").model)
            == "openai:gpt-4.1"
        )
    finally:
        other.service.close()


def test_activation_emits_a_profile_event(rig: Rig) -> None:
    rig.service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM, reason="go"
    )
    rig.service.set_profile(ACME, "reasoning", spec(temperature=0.5), actor=PLATFORM, reason="tune")
    events = rig.events.named(semconv.EVENT_PROFILE_ACTIVATED)
    assert len(events) == 2
    attrs = events[1].attributes
    assert attrs[semconv.PURPOSE] == "reasoning"
    assert (attrs[semconv.SCOPE_KIND], attrs[semconv.SCOPE_ID]) == ("org", "acme")
    assert attrs[semconv.PROFILE_ID] == "org:acme/reasoning"
    assert (attrs[semconv.PROFILE_VERSION], attrs[semconv.PROFILE_PREVIOUS_VERSION]) == (2, 1)
    assert attrs[semconv.PROFILE_MODEL] == "openai:gpt-4o"
    assert (attrs[semconv.ACTOR], attrs[semconv.REASON]) == ("root", "tune")
    assert json.loads(str(attrs[semconv.PROFILE_DETAIL])) == {
        "changes": {"temperature": {"before": None, "after": 0.5}}
    }
    assert semconv.PROFILE_PREVIOUS_VERSION not in events[0].attributes
    assert not rig.events.named(semconv.EVENT_PROFILE_WARNING)


def test_embedding_model_change_records_a_reembedding_warning(rig: Rig) -> None:
    service = rig.service
    service.set_profile(
        GLOBAL, "embedding", spec(model="openai:text-embedding-3-small"), actor=PLATFORM
    )
    assert not rig.events.named(semconv.EVENT_PROFILE_WARNING)  # nothing to re-embed yet
    service.set_profile(ACME, "embedding", spec(temperature=0.0), actor=PLATFORM)
    assert not rig.events.named(semconv.EVENT_PROFILE_WARNING)  # model unchanged
    service.set_profile(
        ACME, "embedding", spec(model="openai:text-embedding-3-large"), actor=PLATFORM
    )
    (warning,) = rig.events.named(semconv.EVENT_PROFILE_WARNING)
    detail = json.loads(str(warning.attributes[semconv.PROFILE_DETAIL]))
    assert detail["warning"] == "embedding_model_changed"
    assert (detail["before"], detail["after"]) == (
        "openai:text-embedding-3-small",
        "openai:text-embedding-3-large",
    )
    assert "re-embed" in detail["message"]
    assert warning.attributes[semconv.SCOPE_ID] == "acme"


def test_failing_event_emitter_does_not_undo_the_change(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def emit(self, event_name: str, attributes: object) -> None:
            raise RuntimeError("sink down")

    rig.service.events = Broken()
    version = rig.service.set_profile(
        ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM
    )
    assert version.version == 1
    assert str(rig.service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"
    assert "was not emitted (RuntimeError)" in caplog.text


def test_resolution_without_any_model_says_how_to_set_one(rig: Rig) -> None:
    with pytest.raises(
        ProfileNotFound,
        match=r"no model for purpose 'scoring' at domain:acme-eu.*COMPTROLLER_MODEL_SCORING",
    ):
        rig.service.resolve("scoring", domain="acme-eu", org="acme")


def test_unknown_purpose_is_refused_on_resolve_and_set(rig: Rig) -> None:
    with pytest.raises(UnknownPurpose, match="unknown purpose 'reflexion'"):
        rig.service.resolve("reflexion", domain=None, org=None)
    with pytest.raises(UnknownPurpose, match="unknown purpose 'reflexion'"):
        rig.service.set_profile(GLOBAL, "reflexion", spec(model="openai:gpt-4o"), actor=PLATFORM)


def test_server_default_declares_its_purpose(
    monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    monkeypatch.setenv("COMPTROLLER_MODEL_EXTRACTION", "openai:gpt-4o-mini")
    service = ProfileService.from_settings(load_settings(), url=store_url, environ={})
    try:
        assert str(service.resolve("extraction", domain="d", org="o").model) == "openai:gpt-4o-mini"
        assert service.purposes["extraction"].override == "operator_allowed"
    finally:
        service.close()


def test_scope_text_parses_every_kind() -> None:
    assert Scope.parse("global") == GLOBAL
    assert Scope.parse("org:acme") == ACME
    assert Scope.parse("domain:acme-eu", org="acme") == ACME_EU
    assert Scope.parse("workspace:acme-eu", org="acme") == ACME_EU
    with pytest.raises(ValueError, match="expected 'global'"):
        Scope.parse("team:x")


def test_migrations_create_exactly_the_tables_the_code_uses(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from comptroller.control._store_schema import metadata

    store = ProfileStore(store_url)
    with store.engine.connect() as con:
        context = MigrationContext.configure(con, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    store.close()
    assert differences == []


def test_degradation_must_upgrade_to_another_declared_purpose(rig: Rig) -> None:
    from comptroller.control import DegradationPolicy

    with pytest.raises(UnknownPurpose, match="unknown purpose 'smarter'"):
        rig.service.set_profile(
            ACME,
            "reasoning",
            spec(degradation=DegradationPolicy(failures=3, window_s=60, upgrade_to="smarter")),
            actor=PLATFORM,
        )
    with pytest.raises(UsageError, match="upgrades to itself"):
        rig.service.set_profile(
            ACME,
            "reasoning",
            spec(degradation=DegradationPolicy(failures=3, window_s=60, upgrade_to="reasoning")),
            actor=PLATFORM,
        )
    rig.service.set_profile(
        ACME,
        "reasoning",
        spec(
            model="openai:gpt-4o",
            degradation=DegradationPolicy(failures=3, window_s=60, upgrade_to="code_generation"),
        ),
        actor=PLATFORM,
    )
