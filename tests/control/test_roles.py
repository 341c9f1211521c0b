"""Roles are proven, not claimed: bindings, admin tokens, refusal audit, the migration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_profiles_kit import (
    ACME,
    GLOBAL,
    PLATFORM,
    STORE_PARAMS,
    Rig,
    make_service,
    spec,
    store_urls,
    with_openai,
)

from comptroller.control import PermissionDenied
from comptroller.control._os_identity import os_identity, owns_data_dir
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_store import ProfileStore
from comptroller.control._store_engine import make_engine, migrate
from comptroller.control._store_schema import HEAD_REVISION, VERSION_TABLE, profile_versions
from comptroller.control.profiles import Actor

ANYONE = Actor.platform("anyone")
OLGA = Actor(name="olga", role="org_admin", org="acme")


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def rig(store_url: str, data_dir: Path) -> Iterator[Rig]:
    rig = make_service(store_url, data_dir)
    with_openai(rig)
    yield rig
    rig.service.close()


class WallClock:
    """A UTC clock that moves only when told."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_claimed_platform_role_without_a_grant_is_refused_and_audited(rig: Rig) -> None:
    with pytest.raises(
        PermissionDenied,
        match=r"anyone \(platform\) is not an admin of this profile store: roles are granted, "
        r"not claimed; a platform admin runs `comptroller admin grant anyone --role platform`",
    ):
        rig.service.set_profile(
            GLOBAL, "code_generation", spec(model="openai:gpt-4o"), actor=ANYONE, reason="x"
        )
    assert rig.service.history(GLOBAL, "code_generation") == []
    refused = rig.service.audit(purpose="code_generation")[-1]
    assert (refused.action, refused.actor, refused.role) == ("refused", "anyone", "platform")
    assert refused.after == {
        "attempted": "activate",
        "spec": {"model": "openai:gpt-4o"},
        "unset": [],
        "replace": False,
    }
    assert "not an admin of this profile store" in refused.reason
    assert rig.events.events == []


def test_a_bound_platform_admin_changes_a_locked_purpose_under_its_name(rig: Rig) -> None:
    rig.service.set_profile(GLOBAL, "code_generation", spec(model="openai:gpt-4o"), actor=PLATFORM)
    entry = rig.service.audit(purpose="code_generation")[-1]
    assert (entry.action, entry.actor, entry.role) == ("activate", "root", "platform")


def test_a_grant_of_another_scope_does_not_count(rig: Rig) -> None:
    rig.service.admins.grant(OLGA, by=PLATFORM)
    globex = Actor(name="olga", role="org_admin", org="globex")
    with pytest.raises(PermissionDenied, match=r"olga \(org_admin of org:globex\) is not an admin"):
        rig.service.credentials.set(ACME.of_org("globex"), "openai", "sk-x", actor=globex)
    assert rig.service.audit()[-1].action == "refused"
    assert rig.service.audit()[-1].after == {
        "attempted": "credential_set",
        "provider": "openai",
        "name": "default",
        "kind": "api_key",
    }


def test_a_revoked_grant_stops_working_at_once(rig: Rig) -> None:
    rig.service.admins.grant(OLGA, by=PLATFORM)
    rig.service.set_profile(ACME, "reasoning", spec(temperature=0.1), actor=OLGA)
    rig.service.admins.revoke(OLGA, by=PLATFORM, reason="left the team")
    with pytest.raises(PermissionDenied, match="not an admin"):
        rig.service.set_profile(ACME, "reasoning", spec(temperature=0.2), actor=OLGA)
    with pytest.raises(PermissionDenied, match="not an admin"):
        rig.service.rollback(ACME, "reasoning", actor=OLGA)
    actions = [e.action for e in rig.service.audit(scope=ACME)]
    assert actions[-4:] == ["activate", "admin_revoke", "refused", "refused"]


def test_only_a_bound_platform_admin_grants(rig: Rig) -> None:
    alice = Actor(name="alice", role="org_admin", org="acme")  # bound by the kit
    with pytest.raises(PermissionDenied, match=r"may not grant .* needs the platform role"):
        rig.service.admins.grant(Actor.platform("alice"), by=alice)
    with pytest.raises(PermissionDenied, match=r"anyone .* is not an admin"):
        rig.service.admins.grant(Actor.platform("anyone"), by=ANYONE)
    assert [b.identity for b in rig.service.admins.bindings() if b.role == "platform"] == [
        "other-process",
        "root",
    ]
    assert [e.action for e in rig.service.audit()[-2:]] == ["refused", "refused"]


def test_init_binds_the_first_platform_admin_only_once(rig: Rig) -> None:
    with pytest.raises(PermissionDenied, match="has a platform admin already"):
        rig.service.admins.init("mallory")
    assert rig.service.admins.bindings_of("mallory")[0].role == "org_admin"


def test_the_last_platform_admin_is_not_revoked(store_url: str, data_dir: Path) -> None:
    store = ProfileStore(store_url)
    try:
        admins = AdminRegistry(store)
        admins.init("root")
        with pytest.raises(PermissionDenied, match="last platform admin"):
            admins.revoke(PLATFORM, by=PLATFORM)
    finally:
        store.close()


def test_unbound_store_names_the_bootstrap(store_url: str) -> None:
    store = ProfileStore(store_url)
    try:
        with (
            store.reading() as connection,
            pytest.raises(
                PermissionDenied, match=r"no platform admin is bound yet.*`comptroller admin init`"
            ),
        ):
            AdminRegistry(store).require_bound(connection, PLATFORM)
    finally:
        store.close()


# --- tokens --------------------------------------------------------------------------------


def test_a_minted_token_proves_its_identity_until_it_expires(store_url: str) -> None:
    clock = WallClock()
    store = ProfileStore(store_url, clock=clock)
    try:
        admins = AdminRegistry(store)
        admins.init("root")
        admins.grant(OLGA, by=PLATFORM)
        token = admins.mint_token(OLGA, by=PLATFORM, ttl=timedelta(hours=1))
        assert token.startswith("cta_")
        assert admins.verify_token(token) == OLGA
        clock.now += timedelta(minutes=59)
        assert admins.verify_token(token) == OLGA
        clock.now += timedelta(minutes=1)
        with pytest.raises(PermissionDenied, match=r"expired at 2026-12-01T10:00:00\+00:00"):
            admins.verify_token(token)
    finally:
        store.close()


def test_forged_and_tampered_tokens_are_refused_and_never_echoed(rig: Rig) -> None:
    admins = rig.service.admins
    token = admins.mint_token(bound_olga(rig), by=PLATFORM, ttl=timedelta(hours=1))
    _, token_id, secret = token.split("_", 2)
    flipped = secret[:-1] + ("0" if secret[-1] != "0" else "1")
    forged = [
        f"cta_{token_id}_{flipped}",  # tampered secret
        f"cta_{'0' * 16}_{secret}",  # another id
        "cta_" + "ab" * 8 + "_" + "cd" * 32,  # made up
        "not a token",
        token.replace("cta_", "ctb_"),
    ]
    for text in forged:
        with pytest.raises(PermissionDenied, match="the admin token is not valid") as info:
            admins.verify_token(text, presented_by="mallory")
        assert secret not in str(info.value)
        assert flipped not in str(info.value)
    refused = [e for e in rig.service.audit() if e.action == "refused"]
    assert len(refused) == len(forged)
    assert {(e.actor, e.role, (e.after or {}).get("attempted")) for e in refused} == {
        ("mallory", "token", "present_token")
    }
    # Only a hash of the secret is stored: reading the table mints nothing.
    with rig.service.store.reading() as connection:
        rows = connection.execute(sa.text("SELECT * FROM comptroller_admin_tokens")).all()
    assert secret not in repr(rows)


def bound_olga(rig: Rig) -> Actor:
    rig.service.admins.grant(OLGA, by=PLATFORM)
    return OLGA


def test_revoked_tokens_and_tokens_of_revoked_grants_are_refused(rig: Rig) -> None:
    admins = rig.service.admins
    token = admins.mint_token(bound_olga(rig), by=PLATFORM, ttl=timedelta(hours=1))
    other = admins.mint_token(OLGA, by=PLATFORM, ttl=timedelta(hours=1))
    admins.revoke_token(token.split("_")[1], by=PLATFORM)
    with pytest.raises(PermissionDenied, match="was revoked; ask a platform admin"):
        admins.verify_token(token)
    assert admins.verify_token(other) == OLGA
    admins.revoke(OLGA, by=PLATFORM)
    with pytest.raises(PermissionDenied, match="whose grant was revoked"):
        admins.verify_token(other)


def test_a_non_platform_admin_cannot_mint_a_token(rig: Rig) -> None:
    admins = rig.service.admins
    alice = Actor(name="alice", role="org_admin", org="acme")  # bound by the kit
    with pytest.raises(PermissionDenied, match=r"may not mint a token .* needs the platform role"):
        admins.mint_token(alice, by=alice, ttl=timedelta(hours=1))
    with pytest.raises(PermissionDenied, match=r"anyone .* is not an admin"):
        admins.mint_token(Actor.platform("anyone"), by=ANYONE, ttl=timedelta(hours=1))
    # A platform admin cannot mint for an identity nobody granted either.
    with pytest.raises(PermissionDenied, match=r"zed .* is not an admin"):
        admins.mint_token(Actor.platform("zed"), by=PLATFORM, ttl=timedelta(hours=1))
    with rig.service.store.reading() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM comptroller_admin_tokens"))
        assert count.scalar_one() == 0
    assert [e.action for e in rig.service.audit()[-3:]] == ["refused"] * 3


def test_token_lifetime_is_bounded(rig: Rig) -> None:
    with pytest.raises(ValueError, match="at most 90 days"):
        rig.service.admins.mint_token(PLATFORM, by=PLATFORM, ttl=timedelta(days=91))


# --- bootstrap and migration ---------------------------------------------------------------


def test_the_data_directory_owner_is_the_os_user_here(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    assert owns_data_dir(data_dir)
    assert not owns_data_dir(data_dir, uid=data_dir.stat().st_uid + 1)
    assert os_identity()
    assert os_identity(uid=2**31 - 7) == f"uid-{2**31 - 7}"


def test_the_migration_applies_on_an_existing_store(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        migrate(engine, revision="0001")  # a store as the previous release left it
        now = datetime(2026, 11, 1, tzinfo=UTC)
        with engine.begin() as connection:
            assert not sa.inspect(connection).has_table("comptroller_admins")
            connection.execute(
                profile_versions.insert().values(
                    profile_id="global/reasoning",
                    scope_kind="global",
                    scope_id="",
                    scope_org=None,
                    purpose="reasoning",
                    version=1,
                    spec='{"model":"openai:gpt-4o"}',
                    created_by="ops",
                    created_at=now,
                    activated_at=now,
                    deactivated_at=None,
                    reason="before roles",
                )
            )
    finally:
        engine.dispose()
    store = ProfileStore(store_url)  # opening it upgrades it
    try:
        with store.reading() as connection:
            revision = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert revision.scalar_one() == HEAD_REVISION == "0002"
        (kept,) = store.history(GLOBAL, "reasoning")
        assert (kept.created_by, str(kept.spec.model)) == ("ops", "openai:gpt-4o")
        admins = AdminRegistry(store)
        admins.init("root")
        assert [b.identity for b in admins.bindings()] == ["root"]
    finally:
        store.close()


def test_act_as_picks_a_granted_role_or_passes_the_claim_on_to_be_refused(rig: Rig) -> None:
    admins = rig.service.admins
    alice = Actor(name="alice", role="org_admin", org="acme")
    assert admins.act_as("alice") == alice
    assert admins.act_as("alice", org="acme") == alice
    assert admins.act_as("alice", role="platform") == Actor.platform("alice")
    with pytest.raises(ValueError, match="needs the org it administers"):
        admins.act_as("nobody", role="org_admin")
    assert admins.os_principal() == admins.act_as(os_identity())
    with pytest.raises(PermissionDenied, match="is not an admin"):
        rig.service.set_profile(
            ACME, "reasoning", spec(temperature=0.1), actor=admins.act_as("alice", role="platform")
        )
