"""Write-only credentials: encryption at rest, the master key, rotation, resolution."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
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
    ref,
    spec,
    store_urls,
)

from comptroller.control import (
    CredentialDecryptError,
    CredentialNotFound,
    MasterKeyError,
    PermissionDenied,
    ResolvedProfile,
)
from comptroller.control._store_schema import credentials as credentials_table
from comptroller.control.profiles import (
    ENV_MASTER_KEY,
    Actor,
    MasterKeySource,
    generate_master_key,
)


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def rig(store_url: str, data_dir: Path) -> Iterator[Rig]:
    rig = make_service(store_url, data_dir)
    yield rig
    rig.service.close()


def profile(model: str = "openai:gpt-4o", **fields: object) -> ResolvedProfile:
    return ResolvedProfile(purpose="reasoning", model=ref(model), **fields)  # type: ignore[arg-type]


def raw_rows(rig: Rig) -> list[dict[str, object]]:
    with rig.service.store.engine.connect() as con:
        return [dict(row) for row in con.execute(sa.select(credentials_table)).mappings()]


def test_reading_returns_which_providers_are_configured_not_the_keys(rig: Rig) -> None:
    creds = rig.service.credentials
    creds.set(ACME, "openai", "sk-acme-openai", actor=PLATFORM)
    creds.set(ACME, "anthropic", "sk-ant-acme", actor=PLATFORM)
    assert creds.configured_providers(ACME) == {"anthropic": True, "openai": True}
    assert creds.configured_providers(GLOBAL) == {}
    listed = creds.list(ACME)
    assert [(i.provider, i.name, i.kind) for i in listed] == [
        ("anthropic", "default", "api_key"),
        ("openai", "default", "api_key"),
    ]
    text = json.dumps([i.to_json() for i in listed]) + repr(listed)
    assert "sk-acme-openai" not in text
    assert "sk-ant-acme" not in text


def test_secret_is_encrypted_at_rest_under_the_recorded_key_id(rig: Rig) -> None:
    info = rig.service.credentials.set(ACME, "openai", "sk-acme-openai", actor=PLATFORM)
    (row,) = raw_rows(rig)
    assert b"sk-acme-openai" not in bytes(row["ciphertext"])  # type: ignore[arg-type]
    assert (
        row["key_id"] == info.key_id == MasterKeySource(rig.settings.master_key_file).load().key_id
    )


def test_overwrite_rotates_the_secret_in_place_keeping_the_ref(rig: Rig) -> None:
    creds = rig.service.credentials
    first = creds.set(ACME, "openai", "sk-one", actor=PLATFORM)
    second = creds.set(ACME, "openai", "sk-two", actor=PLATFORM)
    assert first.ref == second.ref
    assert second.updated_at >= first.updated_at
    assert (
        creds.resolve_secret(profile(credential_source="byo"), domain=None, org="acme") == "sk-two"
    )
    actions = [
        (e.action, e.reason)
        for e in rig.service.audit(scope=ACME)
        if not e.action.startswith("admin_")  # the fixture's grants
    ]
    assert actions == [("credential_set", "created"), ("credential_set", "rotated")]


def test_delete_removes_it_and_deleting_again_names_what_is_missing(rig: Rig) -> None:
    creds = rig.service.credentials
    creds.set(ACME, "openai", "sk-one", actor=PLATFORM)
    creds.delete(ACME, "openai", actor=PLATFORM)
    assert creds.configured_providers(ACME) == {}
    assert creds.resolve_secret(profile(credential_source="byo"), domain=None, org="acme") is None
    with pytest.raises(
        CredentialNotFound, match=r"no credential 'default' for provider 'openai' at org:acme"
    ):
        creds.delete(ACME, "openai", actor=PLATFORM)
    assert rig.service.audit(scope=ACME)[-1].action == "credential_delete"


def test_resolution_follows_source_and_ref(rig: Rig) -> None:
    creds = rig.service.credentials
    creds.set(GLOBAL, "openai", "sk-managed", actor=PLATFORM)
    creds.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    creds.set(ACME_EU, "openai", "sk-acme-eu", actor=PLATFORM)
    special = creds.set(ACME, "openai", "sk-acme-special", actor=PLATFORM, name="special")
    creds.set(ACME, "anthropic", "sk-ant-acme", actor=PLATFORM)
    resolve = creds.resolve_secret
    assert resolve(profile(), domain="acme-eu", org="acme") == "sk-managed"
    assert resolve(profile(credential_source="byo"), domain="acme-eu", org="acme") == "sk-acme-eu"
    assert resolve(profile(credential_source="byo"), domain="acme-us", org="acme") == "sk-acme"
    assert resolve(profile(credential_source="byo"), domain=None, org="globex") is None
    pinned = profile(credential_source="byo", credential_ref=special.ref)
    assert resolve(pinned, domain="acme-eu", org="acme") == "sk-acme-special"
    # A fallback of another provider does not use the pinned OpenAI credential.
    assert resolve(pinned, domain="acme-eu", org="acme", provider="anthropic") == "sk-ant-acme"


def test_oauth_credential_resolves_to_its_access_token(store_url: str, data_dir: Path) -> None:
    # Renewal, locking and the setting: tests/control/test_oauth.py.
    rig = make_service(store_url, data_dir, allow_oauth_credentials=True)
    bundle = {
        "access_token": "at-1",
        "refresh_token": "rt-1",
        "expires_at": 4_102_444_800,  # 2100: not due
        "token_url": "https://idp.example/token",
        "client_id": "comptroller",
    }
    try:
        info = rig.service.credentials.set(
            ACME, "x_ai", json.dumps(bundle), actor=PLATFORM, kind="oauth"
        )
        assert info.kind == "oauth"
        got = rig.service.credentials.resolve_secret(
            profile("x_ai:grok-4", credential_source="byo"), domain=None, org="acme"
        )
        assert got == "at-1"
    finally:
        rig.service.close()


def test_key_file_is_created_with_mode_0600_on_first_use(rig: Rig) -> None:
    key_file = rig.settings.master_key_file
    assert not key_file.exists()
    rig.service.credentials.set(ACME, "openai", "sk-one", actor=PLATFORM)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_key_file_readable_by_others_is_refused(rig: Rig) -> None:
    key_file = rig.settings.master_key_file
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(generate_master_key())
    key_file.chmod(0o644)
    with pytest.raises(
        MasterKeyError,
        match=rf"key file {key_file} has mode 644: others may read it; run `chmod 600",
    ):
        rig.service.credentials.set(ACME, "openai", "sk-one", actor=PLATFORM)


def test_master_key_from_the_environment_is_used_and_no_file_created(
    store_url: str, data_dir: Path
) -> None:
    env = {ENV_MASTER_KEY: generate_master_key()}
    rig = make_service(store_url, data_dir, environ=env)
    info = rig.service.credentials.set(ACME, "openai", "sk-one", actor=PLATFORM)
    assert not rig.settings.master_key_file.exists()
    assert info.key_id == MasterKeySource(rig.settings.master_key_file, environ=env).load().key_id
    rig.service.close()


def test_malformed_master_key_is_refused_without_echoing_it(store_url: str, data_dir: Path) -> None:
    rig = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: "not-a-key-PLANTED"})
    with pytest.raises(
        MasterKeyError,
        match="environment variable COMPTROLLER_MASTER_KEY is not URL-safe base64 of 32 bytes",
    ) as caught:
        rig.service.credentials.set(ACME, "openai", "sk-one", actor=PLATFORM)
    assert "PLANTED" not in str(caught.value)
    rig.service.close()


def test_wrong_master_key_fails_with_both_key_ids(store_url: str, data_dir: Path) -> None:
    first = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: generate_master_key()})
    info = first.service.credentials.set(ACME, "openai", "sk-one", actor=PLATFORM)
    second = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: generate_master_key()})
    with pytest.raises(
        CredentialDecryptError,
        match=rf"sealed under master key id {info.key_id}, but the key in force has id",
    ):
        second.service.credentials.resolve_secret(
            profile(credential_source="byo"), domain=None, org="acme"
        )
    first.service.close()
    second.service.close()


def test_ciphertext_moved_to_another_row_does_not_open(rig: Rig) -> None:
    creds = rig.service.credentials
    creds.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    creds.set(GLOBAL, "openai", "sk-managed", actor=PLATFORM)
    rows = {row["scope_kind"]: row for row in raw_rows(rig)}
    with rig.service.store.engine.begin() as con:
        con.execute(
            credentials_table.update()
            .where(credentials_table.c.scope_kind == "global")
            .values(nonce=rows["org"]["nonce"], ciphertext=rows["org"]["ciphertext"])
        )
    with pytest.raises(
        CredentialDecryptError, match=r"does not open under master key id .*: the row was altered"
    ):
        creds.resolve_secret(profile(), domain=None, org="acme")


def test_rotate_master_key_reencrypts_everything_and_replaces_the_key_file(rig: Rig) -> None:
    creds = rig.service.credentials
    creds.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    creds.set(GLOBAL, "anthropic", "sk-ant", actor=PLATFORM)
    key_file = rig.settings.master_key_file
    old_text, old_id = key_file.read_text(), creds.list()[0].key_id
    assert creds.rotate_master_key(actor=PLATFORM) == 2
    new_ids = {info.key_id for info in creds.list()}
    assert len(new_ids) == 1
    assert old_id not in new_ids
    assert key_file.read_text() != old_text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not key_file.with_name(key_file.name + ".new").exists()
    # A fresh process (new key source) opens everything with the new file.
    fresh = make_service(rig.service.store.url, rig.settings.data_dir)
    assert (
        fresh.service.credentials.resolve_secret(
            profile(credential_source="byo"), domain=None, org="acme"
        )
        == "sk-acme"
    )
    assert (
        fresh.service.credentials.resolve_secret(
            profile("anthropic:claude-sonnet-4-5"), domain=None, org=None
        )
        == "sk-ant"
    )
    fresh.service.close()
    entry = rig.service.audit(scope=GLOBAL)[-1]
    assert entry.action == "master_key_rotated"
    assert entry.before == {"key_id": old_id}


def test_rotation_with_an_environment_key_needs_the_new_key(store_url: str, data_dir: Path) -> None:
    old = generate_master_key()
    rig = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: old})
    rig.service.credentials.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    with pytest.raises(MasterKeyError, match="comes from COMPTROLLER_MASTER_KEY: pass the new key"):
        rig.service.credentials.rotate_master_key(actor=PLATFORM)
    new = generate_master_key()
    assert rig.service.credentials.rotate_master_key(actor=PLATFORM, new_key=new) == 1
    after = make_service(store_url, data_dir, environ={ENV_MASTER_KEY: new})
    assert (
        after.service.credentials.resolve_secret(
            profile(credential_source="byo"), domain=None, org="acme"
        )
        == "sk-acme"
    )
    rig.service.close()
    after.service.close()


def test_rotation_needs_the_platform_role(rig: Rig) -> None:
    with pytest.raises(
        PermissionDenied, match="may not rotate the master key: that needs the platform role"
    ):
        rig.service.credentials.rotate_master_key(
            actor=Actor(name="a", role="org_admin", org="acme")
        )


def test_org_admin_sets_credentials_of_own_org_only(rig: Rig) -> None:
    admin = Actor(name="alice", role="org_admin", org="acme")
    rig.service.credentials.set(ACME, "openai", "sk-acme", actor=admin)
    rig.service.credentials.set(ACME_EU, "openai", "sk-acme-eu", actor=admin)
    with pytest.raises(PermissionDenied, match="may not change org:globex"):
        rig.service.credentials.set(ACME.of_org("globex"), "openai", "sk-x", actor=admin)
    assert rig.service.audit(scope=ACME)[-1].actor == "alice"


@pytest.mark.parametrize(
    ("provider", "secret", "problem"),
    [
        ("open ai", "sk-1", "provider id 'open ai' is malformed"),
        ("openai", "   ", "the secret for provider 'openai' at org:acme is empty"),
    ],
)
def test_malformed_credential_is_refused(
    rig: Rig, provider: str, secret: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        rig.service.credentials.set(ACME, provider, secret, actor=PLATFORM)


def test_profile_pinned_to_a_credential_resolves_it_after_rollback(rig: Rig) -> None:
    creds = rig.service.credentials
    pinned = creds.set(ACME, "openai", "sk-pinned", actor=PLATFORM, name="pinned")
    rig.service.set_profile(
        ACME,
        "reasoning",
        spec(model="openai:gpt-4o", credential_source="byo", credential_ref=pinned.ref),
        actor=PLATFORM,
    )
    creds.set(ACME, "openai", "sk-default", actor=PLATFORM)
    rig.service.set_profile(ACME, "reasoning", spec(), actor=PLATFORM, unset=("credential_ref",))
    resolved = rig.service.resolve("reasoning", domain=None, org="acme")
    assert creds.resolve_secret(resolved, domain=None, org="acme") == "sk-default"
    rig.service.rollback(ACME, "reasoning", actor=PLATFORM)
    resolved = rig.service.resolve("reasoning", domain=None, org="acme")
    assert creds.resolve_secret(resolved, domain=None, org="acme") == "sk-pinned"


def test_credential_revision_of_a_resolved_profile_changes_when_its_key_rotates(rig: Rig) -> None:
    service, creds = rig.service, rig.service.credentials
    creds.set(GLOBAL, "openai", "sk-one", actor=PLATFORM)
    service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    first = service.resolve("reasoning", domain=None, org="acme").credential_revision
    assert first is not None
    assert service.resolve("reasoning", domain=None, org="acme").credential_revision == first
    creds.set(ACME, "openai", "sk-unrelated", actor=PLATFORM)  # byo key, not used: managed
    assert service.resolve("reasoning", domain=None, org="acme").credential_revision == first
    creds.set(GLOBAL, "openai", "sk-two", actor=PLATFORM)  # rotation in place, same ref
    second = service.resolve("reasoning", domain=None, org="acme").credential_revision
    assert second not in (None, first)
    creds.delete(GLOBAL, "openai", actor=PLATFORM)
    assert service.resolve("reasoning", domain=None, org="acme").credential_revision not in (
        first,
        second,
    )


def test_resolved_secrets_are_taught_to_the_redactor(rig: Rig) -> None:
    secret = "house-key-without-a-known-shape"
    rig.service.credentials.set(ACME, "openai", secret, actor=PLATFORM)
    echoed = f"upstream rejected {secret}"
    assert rig.service.credentials.redactor.redact(echoed) == echoed  # not known yet
    resolved = rig.service.credentials.resolve_secret(
        profile(credential_source="byo"), domain=None, org="acme"
    )
    assert resolved == secret
    assert rig.service.credentials.redactor.redact(echoed) == "upstream rejected [REDACTED]"


def test_a_key_given_as_the_provider_is_refused_without_echoing_it(rig: Rig) -> None:
    key = "sk-proj-" + "A1b2C3d4" * 4
    with pytest.raises(ValueError, match="looks like a key") as info:
        rig.service.credentials.set(ACME, key, "x", actor=PLATFORM)
    assert key not in str(info.value)
    assert rig.service.credentials.list() == []
