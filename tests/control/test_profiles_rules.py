"""Governance (roles, override classes) and configuration-time validation, with messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_profiles_kit import (
    ACME,
    ACME_EU,
    GLOBAL,
    GLOBEX,
    PLATFORM,
    STORE_PARAMS,
    Rig,
    make_service,
    make_settings,
    ref,
    spec,
    store_urls,
    with_openai,
)

from comptroller.control import MissingCredential, ModelNotApproved, PermissionDenied, UnknownModel
from comptroller.control.profiles import Actor, Scope

ACME_ADMIN = Actor(name="alice", role="org_admin", org="acme")
GLOBEX_ADMIN = Actor(name="mallory", role="org_admin", org="globex")
EU_ADMIN = Actor(name="dora", role="domain_admin", domain="acme-eu", org="acme")


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def rig(store_url: str, data_dir: Path) -> Iterator[Rig]:
    settings = make_settings(
        data_dir,
        purposes={
            "reasoning": {"approved_models": ["openai:gpt-4o-mini", "openai:gpt-4o"]},
            "response": {"override": "open"},
        },
        prices={"openai:house-model-1": {"input_mtok": "1", "output_mtok": "2"}},
        known_models=["openai:priced-elsewhere"],
        keyless_providers=["ollama"],
    )
    rig = make_service(store_url, data_dir, settings=settings)
    with_openai(rig)
    yield rig
    rig.service.close()


# --- roles and override classes ------------------------------------------------------------


def test_locked_purpose_is_changed_by_the_platform_only(rig: Rig) -> None:
    with pytest.raises(
        PermissionDenied,
        match=r"purpose 'code_generation' is locked: only the platform role changes its profile \(alice \(org_admin of org:acme\) tried at org:acme\)",
    ):
        rig.service.set_profile(
            ACME, "code_generation", spec(model="openai:gpt-4o"), actor=ACME_ADMIN
        )
    version = rig.service.set_profile(
        ACME, "code_generation", spec(model="openai:gpt-4o"), actor=PLATFORM
    )
    assert version.version == 1


def test_scope_admin_picks_only_approved_models_for_operator_allowed(rig: Rig) -> None:
    rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o-mini"), actor=ACME_ADMIN)
    with pytest.raises(
        ModelNotApproved,
        match=r"openai:gpt-4.1 is not approved for purpose 'reasoning' \(operator_allowed\); approved: openai:gpt-4o, openai:gpt-4o-mini",
    ):
        rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=ACME_ADMIN)
    with pytest.raises(ModelNotApproved, match=r"openai:gpt-4\.1 is not approved"):
        rig.service.set_profile(
            ACME, "reasoning", spec(fallbacks=["openai:gpt-4.1"]), actor=ACME_ADMIN
        )
    # The scope admin may still tune the other fields of the profile.
    rig.service.set_profile(ACME, "reasoning", spec(temperature=0.4), actor=ACME_ADMIN)
    # The platform is not limited to the approved ids.
    rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)


def test_operator_allowed_with_nothing_approved_refuses_every_model(rig: Rig) -> None:
    with pytest.raises(
        ModelNotApproved, match=r"purpose 'scoring' \(operator_allowed\); approved: none"
    ):
        rig.service.set_profile(ACME, "scoring", spec(model="openai:gpt-4o"), actor=ACME_ADMIN)


def test_open_purpose_takes_any_model_even_an_unknown_one(rig: Rig) -> None:
    rig.service.set_profile(ACME, "response", spec(model="openai:gpt-9-preview"), actor=ACME_ADMIN)
    assert (
        str(rig.service.resolve("response", domain=None, org="acme").model)
        == "openai:gpt-9-preview"
    )


def test_org_admin_writes_own_org_and_its_domains_only(rig: Rig) -> None:
    rig.service.set_profile(ACME_EU, "reasoning", spec(model="openai:gpt-4o"), actor=ACME_ADMIN)
    with pytest.raises(
        PermissionDenied,
        match=r"mallory \(org_admin of org:globex\) may not change org:acme: an admin may change only their own scope",
    ):
        rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=GLOBEX_ADMIN)
    with pytest.raises(PermissionDenied, match=r"may not change domain:acme-eu of org:acme"):
        rig.service.set_profile(
            ACME_EU, "reasoning", spec(model="openai:gpt-4o"), actor=GLOBEX_ADMIN
        )
    rig.service.set_profile(GLOBEX, "reasoning", spec(model="openai:gpt-4o"), actor=GLOBEX_ADMIN)


def test_nobody_claims_another_orgs_domain_by_naming_their_own_org(rig: Rig) -> None:
    rig.service.set_profile(ACME_EU, "reasoning", spec(model="openai:gpt-4o"), actor=ACME_ADMIN)
    claimed = Scope.of_domain("acme-eu", org="globex")
    with pytest.raises(
        PermissionDenied, match=r"domain:acme-eu belongs to org:acme, not org:globex"
    ):
        rig.service.set_profile(
            claimed, "reasoning", spec(model="openai:gpt-4o-mini"), actor=GLOBEX_ADMIN
        )
    with pytest.raises(PermissionDenied, match="belongs to org:acme"):
        rig.service.credentials.set(claimed, "openai", "sk-x", actor=GLOBEX_ADMIN)


def test_domain_admin_writes_own_domain_only(rig: Rig) -> None:
    rig.service.set_profile(ACME_EU, "reasoning", spec(model="openai:gpt-4o"), actor=EU_ADMIN)
    with pytest.raises(
        PermissionDenied, match=r"dora \(domain_admin of domain:acme-eu\) may not change org:acme"
    ):
        rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=EU_ADMIN)
    with pytest.raises(PermissionDenied, match="may not change domain:acme-us"):
        rig.service.set_profile(
            Scope.of_domain("acme-us", org="acme"),
            "reasoning",
            spec(model="openai:gpt-4o"),
            actor=EU_ADMIN,
        )


def test_global_scope_needs_the_platform_role(rig: Rig) -> None:
    with pytest.raises(
        PermissionDenied, match="may not change the global scope: that needs the platform role"
    ):
        rig.service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4o"), actor=ACME_ADMIN)
    with pytest.raises(PermissionDenied, match="global scope"):
        rig.service.credentials.set(GLOBAL, "openai", "sk-x", actor=ACME_ADMIN)


def test_rollback_is_governed_like_a_set(rig: Rig) -> None:
    rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
    rig.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    with pytest.raises(ModelNotApproved, match=r"openai:gpt-4\.1 is not approved"):
        rig.service.rollback(ACME, "reasoning", actor=ACME_ADMIN)
    with pytest.raises(PermissionDenied, match="may not change org:acme"):
        rig.service.rollback(ACME, "reasoning", actor=GLOBEX_ADMIN)


def test_refused_change_writes_no_version_and_only_a_refused_audit_entry(rig: Rig) -> None:
    before = len(rig.service.audit())
    with pytest.raises(PermissionDenied):
        rig.service.set_profile(
            ACME, "code_generation", spec(model="openai:gpt-4o"), actor=ACME_ADMIN
        )
    assert rig.service.history(ACME, "code_generation") == []
    entries = rig.service.audit()[before:]
    assert [(e.action, e.actor, e.purpose) for e in entries] == [
        ("refused", "alice", "code_generation")
    ]
    assert rig.events.events == []


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": "", "role": "platform"}, "needs a name"),
        ({"name": "x", "role": "root"}, "role must be one of"),
        ({"name": "x", "role": "org_admin"}, "needs the org"),
        ({"name": "x", "role": "domain_admin"}, "needs the domain"),
    ],
)
def test_malformed_actor_is_refused(kwargs: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Actor(**kwargs)  # type: ignore[arg-type]


# --- validation at configuration time ------------------------------------------------------


def test_unknown_model_is_refused_unless_the_purpose_is_open(rig: Rig) -> None:
    with pytest.raises(
        UnknownModel,
        match=r"unknown model openai:gpt-9-preview for purpose 'agent_turn': neither genai-prices nor the fallback price registry knows it",
    ):
        rig.service.set_profile(
            ACME, "agent_turn", spec(model="openai:gpt-9-preview"), actor=PLATFORM
        )
    with pytest.raises(UnknownModel, match="unknown model openai:gpt-9-preview"):
        rig.service.set_profile(
            ACME,
            "agent_turn",
            spec(model="openai:gpt-4o", fallbacks=["openai:gpt-9-preview"]),
            actor=PLATFORM,
        )


def test_models_of_the_fallback_price_registry_and_known_models_are_accepted(rig: Rig) -> None:
    rig.service.set_profile(ACME, "agent_turn", spec(model="openai:house-model-1"), actor=PLATFORM)
    rig.service.set_profile(
        ACME, "agent_turn", spec(model="openai:priced-elsewhere"), actor=PLATFORM
    )


def test_model_without_a_resolvable_credential_is_refused_naming_provider_and_scope(
    rig: Rig,
) -> None:
    with pytest.raises(
        MissingCredential,
        match=r"no credential for provider 'anthropic' resolvable at org:acme \(credential source managed: looked at global \(managed\)\); set one with `comptroller credentials set --provider anthropic --global`",
    ):
        rig.service.set_profile(
            ACME, "agent_turn", spec(model="anthropic:claude-sonnet-4-5"), actor=PLATFORM
        )


def test_fallback_of_another_provider_needs_its_credential_too(rig: Rig) -> None:
    with pytest.raises(MissingCredential, match="provider 'anthropic'"):
        rig.service.set_profile(
            ACME,
            "agent_turn",
            spec(
                model="openai:gpt-4o",
                fallbacks=["anthropic:claude-sonnet-4-5"],
                allow_cross_provider=True,
            ),
            actor=PLATFORM,
        )
    rig.service.credentials.set(GLOBAL, "anthropic", "sk-ant-x", actor=PLATFORM)
    rig.service.set_profile(
        ACME,
        "agent_turn",
        spec(
            model="openai:gpt-4o",
            fallbacks=["anthropic:claude-sonnet-4-5"],
            allow_cross_provider=True,
        ),
        actor=PLATFORM,
    )


def test_a_provider_served_on_this_machine_needs_no_credential(rig: Rig) -> None:
    # A local OpenAI-compatible server: the call is built without a key, so the profile is
    # not refused for lacking one; an endpoint elsewhere still needs the provider's key.
    local = spec(model="anthropic:claude-haiku-4-5@http://127.0.0.1:11434/v1")
    rig.service.set_profile(ACME, "agent_turn", local, actor=PLATFORM)
    remote = spec(model="anthropic:claude-haiku-4-5@https://proxy.example/v1")
    with pytest.raises(MissingCredential, match="provider 'anthropic'"):
        rig.service.set_profile(ACME, "agent_turn", remote, actor=PLATFORM)


def test_byo_source_looks_at_the_domain_then_the_org_never_global(rig: Rig) -> None:
    with pytest.raises(
        MissingCredential,
        match=r"provider 'openai' resolvable at domain:acme-eu \(credential source byo: looked at domain:acme-eu then org:acme\); set one with `comptroller credentials set --provider openai --domain acme-eu`",
    ):
        rig.service.set_profile(
            ACME_EU,
            "agent_turn",
            spec(model="openai:gpt-4o", credential_source="byo"),
            actor=PLATFORM,
        )
    rig.service.credentials.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    rig.service.set_profile(
        ACME_EU, "agent_turn", spec(model="openai:gpt-4o", credential_source="byo"), actor=PLATFORM
    )


def test_switching_to_byo_checks_the_inherited_model(rig: Rig) -> None:
    rig.service.set_profile(GLOBAL, "agent_turn", spec(model="openai:gpt-4o"), actor=PLATFORM)
    with pytest.raises(MissingCredential, match="provider 'openai' resolvable at org:acme"):
        rig.service.set_profile(ACME, "agent_turn", spec(credential_source="byo"), actor=PLATFORM)


def test_missing_credential_ref_is_refused(rig: Rig) -> None:
    with pytest.raises(
        MissingCredential, match=r"credential ref 'cred_nope' of org:acme/agent_turn does not exist"
    ):
        rig.service.set_profile(
            ACME,
            "agent_turn",
            spec(model="openai:gpt-4o", credential_ref="cred_nope"),
            actor=PLATFORM,
        )


def test_rollback_to_a_version_whose_credential_was_deleted_is_refused(rig: Rig) -> None:
    info = rig.service.credentials.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    rig.service.set_profile(
        ACME,
        "agent_turn",
        spec(model="openai:gpt-4o", credential_source="byo", credential_ref=info.ref),
        actor=PLATFORM,
    )
    rig.service.set_profile(
        ACME,
        "agent_turn",
        spec(credential_source="managed"),
        actor=PLATFORM,
        unset=("credential_ref",),
    )
    rig.service.credentials.delete(ACME, "openai", actor=PLATFORM)
    with pytest.raises(MissingCredential, match=f"credential ref '{info.ref}'"):
        rig.service.rollback(ACME, "agent_turn", to_version=1, actor=PLATFORM)


def test_keyless_provider_needs_no_credential(rig: Rig) -> None:
    rig.service.set_profile(
        ACME,
        "response",  # open: local model ids are not in genai-prices
        spec(model="ollama:llama3.2", base_url="http://127.0.0.1:11434/v1"),
        actor=PLATFORM,
    )
    profile = rig.service.resolve("response", domain=None, org="acme")
    assert profile.model == ref("ollama:llama3.2")
    assert rig.service.credentials.resolve_secret(profile, domain=None, org="acme") is None


def test_domain_first_written_without_an_org_cannot_be_claimed_by_an_org(rig: Rig) -> None:
    orphan = Scope.of_domain("lab", org=None)
    rig.service.set_profile(orphan, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    with pytest.raises(
        PermissionDenied, match=r"domain:lab belongs to no org, not org:globex; name no org"
    ):
        rig.service.set_profile(
            Scope.of_domain("lab", org="globex"),
            "reasoning",
            spec(model="openai:gpt-4o-mini"),
            actor=GLOBEX_ADMIN,
        )


def test_profile_cannot_point_at_another_orgs_credential(rig: Rig) -> None:
    acme_key = rig.service.credentials.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    with pytest.raises(
        PermissionDenied,
        match=rf"credential ref '{acme_key.ref}' belongs to org:acme, outside the scopes org:globex may use \(org:globex, global\)",
    ):
        rig.service.set_profile(
            GLOBEX,
            "reasoning",
            spec(model="openai:gpt-4o-mini", credential_ref=acme_key.ref),
            actor=GLOBEX_ADMIN,
        )


def test_foreign_credential_ref_is_never_resolved_at_call_time(rig: Rig) -> None:
    from comptroller.control import ResolvedProfile

    acme_key = rig.service.credentials.set(ACME, "openai", "sk-acme", actor=PLATFORM)
    forged = ResolvedProfile(
        purpose="reasoning",
        model=ref("openai:gpt-4o"),
        credential_source="byo",
        credential_ref=acme_key.ref,
    )
    assert rig.service.credentials.resolve_secret(forged, domain=None, org="globex") is None
    assert rig.service.credentials.resolve_secret(forged, domain="acme-eu", org="acme") == "sk-acme"
