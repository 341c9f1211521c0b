"""Fallback chains as profiles: a model per entry at its own endpoint, provider aliases, the
seeds' default chains, and the warning when an embedding model changes.

Store tests run on SQLite and PostgreSQL; the calls go through the real LangChain chat models
to the local fake provider servers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
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

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    ControlPlane,
    ExhaustedFallbacks,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control._profiles import read_profile_set
from comptroller.control._provider_names import canonical_provider
from comptroller.control._store_schema import profile_versions
from comptroller.control.profiles import (
    ConfiguredCatalog,
    ProfileRefused,
    ProfileService,
    ProfileSpec,
    UnknownModel,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    AnthropicReply,
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    GeminiBehaviour,
    GeminiReply,
    InMemorySink,
    ServerReply,
)
from comptroller.pricing import Pricer

FLASH = "gemini-2.5-flash"
LITE = "gemini-3.1-flash-lite"


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


@pytest.fixture
def rig(store_url: str, data_dir: Path) -> Iterator[Rig]:
    rig = make_service(store_url, data_dir)
    with_openai(rig)
    for provider in ("anthropic", "gcp.gemini"):
        rig.service.credentials.set(GLOBAL, provider, f"key-{provider}", actor=PLATFORM)
    yield rig
    rig.service.close()


def plane_over(service: ProfileService) -> ControlPlane:
    return ControlPlane(
        load_settings(telemetry="none"),
        resolver=service,
        guard=MemoryGuard(),
        sink=InMemorySink(),
        retry_policy=RetryPolicy(max_retries=0, base_s=0.01),
    )


# --- text form of a ref ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "provider", "model", "base_url"),
    [
        ("google:gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", None),
        ("Google:gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", None),
        ("google_genai:gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", None),
        ("gcp.gemini:gemini-2.5-flash", "gcp.gemini", "gemini-2.5-flash", None),
        ("gcp.vertex_ai:gemini-2.5-flash", "gcp.vertex_ai", "gemini-2.5-flash", None),
        (
            "anthropic:claude-sonnet-4-6@https://llm.example.com/v1",
            "anthropic",
            "claude-sonnet-4-6",
            "https://llm.example.com/v1",
        ),
        # A model id with an `@` (Vertex AI's snapshots) is a model id, not an endpoint.
        ("vertex:claude-sonnet-4-5@20250929", "vertex", "claude-sonnet-4-5@20250929", None),
        (
            "vertex:claude-sonnet-4-5@20250929@http://127.0.0.1:8000",
            "vertex",
            "claude-sonnet-4-5@20250929",
            "http://127.0.0.1:8000",
        ),
    ],
)
def test_a_ref_parses_with_canonical_provider_and_own_endpoint(
    text: str, provider: str, model: str, base_url: str | None
) -> None:
    ref = ModelRef.parse(text)
    assert (ref.provider, ref.model, ref.base_url) == (provider, model, base_url)
    assert str(ref) == f"{provider}:{model}"
    assert ModelRef.parse(ref.to_text()) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("openai:gpt-4o@ftp://files.example.com", "must start with http:// or https://"),
        ("openai:gpt-4o@http://", "has no host"),
        ("openai:gpt-4o@http://h:99999/v1", "is not a URL"),
        ("openai:gpt-4o@http://user:sk-secret@h/v1", "comptroller credentials set"),
        ("gpt-4o@http://h/v1", "expected 'provider:model', got 'gpt-4o@http://h/v1'"),
    ],
)
def test_a_bad_endpoint_is_refused_saying_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ModelRef.parse(text)
    assert "sk-secret" not in str(caught.value)


def test_a_ref_built_with_a_bad_endpoint_is_refused_too() -> None:
    # Stored refs are read back by `parse`: a ref that `parse` could not read must not exist.
    with pytest.raises(ValueError, match="must start with http"):
        ModelRef(provider="openai", model="gpt-4o", base_url="localhost:8000")


def test_a_written_spec_names_each_provider_once() -> None:
    written = ProfileSpec(
        model=ModelRef(provider="gcp.gemini", model=FLASH),
        fallbacks=(ModelRef(provider="google", model=LITE),),
    )
    assert {ref.provider for ref in written.models()} == {"gcp.gemini"}
    assert written.to_json() == {
        "model": f"gcp.gemini:{FLASH}",
        "fallbacks": [f"gcp.gemini:{LITE}"],
    }


def test_configured_known_models_accept_either_name_of_a_provider() -> None:
    class Nothing:
        def knows(self, provider: str, model: str) -> bool:
            return False

    catalog = ConfiguredCatalog(Nothing(), ["google:gemini-9-ultra"])
    assert catalog.knows("gcp.gemini", "gemini-9-ultra")
    assert catalog.knows("google", "gemini-9-ultra")
    assert not catalog.knows("gcp.gemini", "gemini-9-mega")


def test_gemini_models_are_priced_under_the_canonical_name() -> None:
    pricer = Pricer()
    assert pricer.knows(canonical_provider("google"), FLASH)
    assert pricer.knows("gcp.gemini", LITE)


# --- the store round-trips every entry's endpoint --------------------------------------------


def test_each_entrys_endpoint_survives_versions_rollback_diff_and_audit(rig: Rig) -> None:
    service = rig.service
    proxy = "https://llm-proxy.example.com/anthropic"
    service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    service.set_profile(
        GLOBAL,
        "reasoning",
        spec(
            model="openai:gpt-4o@http://127.0.0.1:8000/v1",
            fallbacks=[f"anthropic:claude-sonnet-4-6@{proxy}", "anthropic:claude-haiku-4-5"],
            allow_cross_provider=True,
        ),
        actor=PLATFORM,
    )

    resolved = service.resolve("reasoning", domain=None, org=None)
    assert resolved.model.base_url == "http://127.0.0.1:8000/v1"
    assert [(str(r), r.base_url) for r in resolved.fallbacks] == [
        ("anthropic:claude-sonnet-4-6", proxy),
        ("anthropic:claude-haiku-4-5", None),
    ]
    (v1, v2) = service.history(GLOBAL, "reasoning")
    assert v2.spec.fallbacks == resolved.fallbacks
    assert v1.spec.model == ModelRef(provider="openai", model="gpt-4o")

    changes = {c.field: (c.before, c.after) for c in service.diff(GLOBAL, "reasoning")}
    assert changes["model"] == ("openai:gpt-4o", "openai:gpt-4o@http://127.0.0.1:8000/v1")
    assert changes["fallbacks"] == (
        None,
        [f"anthropic:claude-sonnet-4-6@{proxy}", "anthropic:claude-haiku-4-5"],
    )
    activations = [e for e in service.audit(scope=GLOBAL) if e.action == "activate"]
    assert activations[-1].after is not None
    assert activations[-1].after["spec"]["fallbacks"][0] == f"anthropic:claude-sonnet-4-6@{proxy}"

    service.rollback(GLOBAL, "reasoning", actor=PLATFORM)
    back = service.resolve("reasoning", domain=None, org=None)
    assert (back.model.base_url, back.fallbacks) == (None, ())
    service.rollback(GLOBAL, "reasoning", to_version=2, actor=PLATFORM)
    again = service.resolve("reasoning", domain=None, org=None)
    assert again.fallbacks == resolved.fallbacks
    assert again.model == resolved.model


def test_profiles_stored_before_endpoints_and_aliases_still_load(rig: Rig) -> None:
    service = rig.service
    service.set_profile(GLOBAL, "scoring", spec(model="openai:gpt-4o-mini"), actor=PLATFORM)
    # As an older comptroller wrote it: plain `provider:model` text, and Gemini as `google`.
    old = json.dumps({"model": f"google:{FLASH}", "fallbacks": [f"google:{LITE}"]})
    with service.store.engine.begin() as connection:
        connection.execute(
            sa.update(profile_versions)
            .where(profile_versions.c.purpose == "scoring")
            .values(spec=old)
        )
    (version,) = service.history(GLOBAL, "scoring")
    assert version.spec.model == ModelRef(provider="gcp.gemini", model=FLASH)
    assert version.spec.fallbacks == (ModelRef(provider="gcp.gemini", model=LITE),)
    assert version.spec.model is not None
    assert version.spec.model.base_url is None


def test_a_server_default_written_with_an_alias_is_canonical(
    store_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPTROLLER_MODEL_SCORING", f"google:{FLASH}")
    service = ProfileService.from_settings(load_settings(), url=store_url, environ={})
    try:
        model = service.resolve("scoring", domain=None, org=None).model
    finally:
        service.close()
    assert (model.provider, model.model) == ("gcp.gemini", FLASH)


def test_an_unknown_model_at_its_own_endpoint_is_refused_like_any_other(rig: Rig) -> None:
    with pytest.raises(UnknownModel, match="openai:my-finetune"):
        rig.service.set_profile(
            GLOBAL,
            "reasoning",
            spec(model="openai:my-finetune@http://127.0.0.1:8000/v1"),
            actor=PLATFORM,
        )


# --- chains served through the stored profile ------------------------------------------------


def test_a_gemini_chain_written_with_both_names_is_one_provider(rig: Rig) -> None:
    with FakeGeminiServer() as server:
        server.script(FLASH, GeminiReply.server_error())
        rig.service.set_profile(
            GLOBAL,
            "scoring",
            ProfileSpec(
                model=ModelRef.parse(f"gcp.gemini:{FLASH}"),
                fallbacks=(ModelRef(provider="google", model=LITE),),
                base_url=server.base_url,
            ),
            actor=PLATFORM,
        )
        with plane_over(rig.service) as plane:
            answer = plane.chat_model("scoring").invoke("grade this")
        # No allow_cross_provider: had `google` stayed another provider, the chain would
        # have ended with the failed Flash call.
        assert answer.content
        assert (server.request_count(FLASH), server.request_count(LITE)) == (1, 1)


def test_a_fallback_crosses_to_another_providers_endpoint_set_in_the_store(rig: Rig) -> None:
    with FakeOpenAIServer() as openai_server, FakeAnthropicServer() as anthropic_server:
        openai_server.script("gpt-4o-mini", ServerReply.server_error())
        anthropic_server.behave(
            "claude-haiku-4-5", AnthropicBehaviour(content="from the anthropic endpoint")
        )
        rig.service.set_profile(
            GLOBAL,
            "reasoning",
            spec(
                model="openai:gpt-4o-mini",
                base_url=openai_server.base_url,
                fallbacks=[f"anthropic:claude-haiku-4-5@{anthropic_server.base_url}"],
                allow_cross_provider=True,
            ),
            actor=PLATFORM,
        )
        with plane_over(rig.service) as plane:
            answer = plane.chat_model("reasoning").invoke("q")
        assert answer.content == "from the anthropic endpoint"
        assert anthropic_server.request_count("claude-haiku-4-5") == 1
        # Each endpoint got its own provider's stored key.
        assert "Bearer key-anthropic" in anthropic_server.headers[-1].values()
        assert "Bearer sk-test-openai" in openai_server.headers[-1].values()


def test_a_seeded_claude_chain_may_fall_back_to_gemini_once_the_profile_allows_it(
    rig: Rig,
) -> None:
    seeded = seeds()["reasoning"]
    with FakeAnthropicServer() as anthropic_server, FakeGeminiServer() as gemini_server:
        for ref in seeded.models():
            anthropic_server.script(ref.model, AnthropicReply.overloaded())
        gemini_server.behave(FLASH, GeminiBehaviour(content="from gemini"))
        rig.service.set_profile(
            GLOBAL,
            "reasoning",
            spec(
                model=f"{seeded.model}@{anthropic_server.base_url}",
                fallbacks=[
                    *(f"{ref}@{anthropic_server.base_url}" for ref in seeded.fallbacks),
                    f"google:{FLASH}@{gemini_server.base_url}",
                ],
                allow_cross_provider=True,
            ),
            actor=PLATFORM,
        )
        with plane_over(rig.service) as plane:
            answer = plane.chat_model("reasoning", org="acme", domain="acme-eu").invoke("q")

        assert answer.content == "from gemini"
        assert anthropic_server.request_count() == 3
        assert gemini_server.request_count(FLASH) == 1
        assert gemini_server.headers[-1]["x-goog-api-key"] == "key-gcp.gemini"


def test_a_fallback_of_another_provider_without_allowing_it_is_refused(rig: Rig) -> None:
    with pytest.raises(ProfileRefused, match=r"openai:gpt-4\.1-mini.*--cross-provider"):
        rig.service.set_profile(
            GLOBAL,
            "scoring",
            spec(model=f"gcp.gemini:{FLASH}", fallbacks=["openai:gpt-4.1-mini"]),
            actor=PLATFORM,
        )


def test_a_chain_that_left_out_another_providers_fallback_says_so() -> None:
    with FakeGeminiServer() as gemini_server:
        gemini_server.script(FLASH, GeminiReply.server_error())
        profile = ResolvedProfile(
            purpose="scoring",
            model=ModelRef(provider="gcp.gemini", model=FLASH),
            fallbacks=(ModelRef.parse("openai:gpt-4.1-mini@http://127.0.0.1:9/v1"),),
            base_url=gemini_server.base_url,
        )
        with (
            ControlPlane(
                load_settings(telemetry="none"),
                resolver=StaticProfiles({"scoring": profile}),
                guard=MemoryGuard(),
                sink=InMemorySink(),
                retry_policy=RetryPolicy(max_retries=0, base_s=0.01),
            ) as plane,
            pytest.raises(ExhaustedFallbacks) as failed,
        ):
            plane.chat_model("scoring").invoke("q")

    assert "openai:gpt-4.1-mini" in str(failed.value)
    assert "allow_cross_provider" in str(failed.value)


# --- the seeds' chains -----------------------------------------------------------------------

SEED_CHAINS = {
    **dict.fromkeys(
        (
            "code_generation",
            "applies_when_generation",
            "distillation",
            "reasoning",
            "agent_turn",
            "agent_tool",
            "world_agent",
        ),
        (
            "anthropic:claude-opus-4-7",
            "anthropic:claude-sonnet-4-6",
            "anthropic:claude-haiku-4-5",
        ),
    ),
    **dict.fromkeys(("scoring", "detection"), (f"gcp.gemini:{FLASH}", f"gcp.gemini:{LITE}")),
    "embedding": ("openai:text-embedding-3-small",),
}


def seeds() -> dict[str, ProfileSpec]:
    text = resources.files("comptroller.control.profiles").joinpath("seeds.toml").read_text()
    return read_profile_set(text)


def test_the_shipped_seeds_are_the_design_notes_chains_all_priced() -> None:
    specs = seeds()
    assert {p: tuple(str(r) for r in s.models()) for p, s in specs.items()} == SEED_CHAINS
    pricer = Pricer()  # genai-prices alone: no fallback registry
    for spec_ in specs.values():
        for ref in spec_.models():
            assert pricer.knows(ref.provider, ref.model), ref
            assert ref.provider == canonical_provider(ref.provider)
            assert ref.base_url is None


def test_the_seeds_file_names_the_import_command_that_runs() -> None:
    # `profiles import --seeds` without a scope is refused ("name the scope"); the file a
    # user copies must show the command that works.
    text = resources.files("comptroller.control.profiles").joinpath("seeds.toml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    commands = re.findall(r"`(comptroller profiles import [^`]*)`", header)
    assert commands
    assert all("--global" in command for command in commands), commands


def test_seed_chains_activated_resolve_model_by_model(rig: Rig) -> None:
    for purpose, spec_ in seeds().items():
        rig.service.set_profile(GLOBAL, purpose, spec_, actor=PLATFORM, reason="seeds")
    for purpose, chain in SEED_CHAINS.items():
        resolved = rig.service.resolve(purpose, domain="acme-eu", org="acme")
        assert (str(resolved.model), *map(str, resolved.fallbacks)) == chain
        assert not resolved.allow_cross_provider


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles = 1", "non-empty 'profiles' table"),
        ("[profiles.reasoning]\nmodel = 3", "profiles.reasoning: model must be text"),
        ("[profiles.reasoning]\nfallbacks = 'openai:gpt-4o'", "fallbacks must be a list"),
        ("[profiles.reasoning]\nmodle = 'openai:gpt-4o'", "unknown profile fields"),
        ("[profiles.reasoning]\n", "sets no field"),
        ("[profiles.reasoning\n", "not valid TOML"),
    ],
)
def test_a_bad_profile_file_names_the_purpose_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_profile_set(text)


def test_a_profile_file_may_be_json_with_a_budget_as_a_number() -> None:
    (entry,) = read_profile_set(
        '{"profiles": {"scoring": {"model": "google:gemini-2.5-flash", "budget": '
        '{"daily_usd": 2.1}}}}',
        json_format=True,
    ).values()
    assert entry.model == ModelRef(provider="gcp.gemini", model=FLASH)
    assert entry.budget is not None
    assert str(entry.budget.daily_usd) == "2.1"


# --- the embedding-model warning -------------------------------------------------------------


def warnings_of(rig: Rig) -> list[dict[str, object]]:
    return [dict(e.attributes) for e in rig.events.named(semconv.EVENT_PROFILE_WARNING)]


def test_an_embedding_model_change_warns_with_old_and_new_model_and_scope(rig: Rig) -> None:
    service = rig.service
    small, large = "openai:text-embedding-3-small", "openai:text-embedding-3-large"
    service.set_profile(GLOBAL, "embedding", spec(model=small), actor=PLATFORM)
    service.set_profile(ACME, "embedding", spec(model=large), actor=PLATFORM, reason="quality")

    (warning,) = warnings_of(rig)
    assert warning[semconv.PROFILE_WARNING] == semconv.WARNING_EMBEDDING_MODEL_CHANGED
    assert warning[semconv.PROFILE_PREVIOUS_MODEL] == small
    assert warning[semconv.PROFILE_MODEL] == large
    assert (warning[semconv.SCOPE_KIND], warning[semconv.SCOPE_ID]) == ("org", "acme")
    assert (warning[semconv.PURPOSE], warning[semconv.REASON]) == ("embedding", "quality")
    detail = json.loads(str(warning[semconv.PROFILE_DETAIL]))
    assert detail == {
        "warning": "embedding_model_changed",
        "scope": "org:acme",
        "purpose": "embedding",
        "before": small,
        "after": large,
        "message": detail["message"],
    }
    assert f"from {small} to {large}" in detail["message"]
    assert "incompatible" in detail["message"]
    assert "re-embed" in detail["message"]


def test_a_rollback_that_switches_the_embedding_model_warns_too(rig: Rig) -> None:
    service = rig.service
    small, large = "openai:text-embedding-3-small", "openai:text-embedding-3-large"
    service.set_profile(GLOBAL, "embedding", spec(model=small), actor=PLATFORM)
    service.set_profile(GLOBAL, "embedding", spec(model=large), actor=PLATFORM)
    service.rollback(GLOBAL, "embedding", actor=PLATFORM)

    first, second = warnings_of(rig)
    assert (first[semconv.PROFILE_PREVIOUS_MODEL], first[semconv.PROFILE_MODEL]) == (small, large)
    assert (second[semconv.PROFILE_PREVIOUS_MODEL], second[semconv.PROFILE_MODEL]) == (
        large,
        small,
    )
    assert json.loads(str(second[semconv.PROFILE_DETAIL]))["scope"] == "global"


def test_the_same_embedding_model_at_another_endpoint_or_another_purpose_does_not_warn(
    rig: Rig,
) -> None:
    service = rig.service
    service.set_profile(
        GLOBAL, "embedding", spec(model="openai:text-embedding-3-small"), actor=PLATFORM
    )
    service.set_profile(
        GLOBAL,
        "embedding",
        spec(model="openai:text-embedding-3-small@https://proxy.example.com/v1"),
        actor=PLATFORM,
    )
    service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    service.set_profile(GLOBAL, "reasoning", spec(model="openai:gpt-4.1"), actor=PLATFORM)
    assert warnings_of(rig) == []
