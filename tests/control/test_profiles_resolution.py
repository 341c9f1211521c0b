"""The pure precedence function and the resolution cache (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_profiles_kit import ManualClock, ref, spec

from comptroller.control import BudgetSpec, DegradationPolicy, RateLimitSpec
from comptroller.control._resolution import ResolutionCache, explain_resolution
from comptroller.control.profiles import ProfileSpec, ProfileVersion, Scope, resolve_active_profile

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(scope: Scope, profile: ProfileSpec, number: int = 1) -> ProfileVersion:
    return ProfileVersion(
        profile_id=f"{scope}/reasoning",
        scope=scope,
        purpose="reasoning",
        version=number,
        spec=profile,
        created_by="root",
        created_at=T0,
        activated_at=T0,
        deactivated_at=None,
        reason="",
    )


DOMAIN = Scope.of_domain("acme-eu", org="acme")
ORG = Scope.of_org("acme")
GLOBAL = Scope.global_()
DEFAULTS = {"reasoning": ref("openai:gpt-4o-mini")}


def active(*versions: ProfileVersion) -> dict[tuple[str, str], ProfileVersion]:
    return {(v.scope.kind, v.scope.id): v for v in versions}


@pytest.mark.parametrize(
    ("present", "domain", "org", "expected"),
    [
        (("domain", "org", "global"), "acme-eu", "acme", "openai:gpt-4.1"),
        (("org", "global"), "acme-eu", "acme", "openai:gpt-4o"),
        (("global",), "acme-eu", "acme", "anthropic:claude-sonnet-4-5"),
        ((), "acme-eu", "acme", "openai:gpt-4o-mini"),  # server default
        (("domain", "org", "global"), None, "acme", "openai:gpt-4o"),  # no domain in the call
        (("domain", "org", "global"), None, None, "anthropic:claude-sonnet-4-5"),
        (("domain", "global"), "acme-eu", "acme", "openai:gpt-4.1"),
    ],
)
def test_most_specific_scope_wins_at_every_level(
    present: tuple[str, ...], domain: str | None, org: str | None, expected: str
) -> None:
    table = {
        "domain": version(DOMAIN, spec(model="openai:gpt-4.1")),
        "org": version(ORG, spec(model="openai:gpt-4o")),
        "global": version(GLOBAL, spec(model="anthropic:claude-sonnet-4-5")),
    }
    profile = resolve_active_profile(
        domain,
        org,
        "reasoning",
        active=active(*(table[name] for name in present)),
        server_defaults=DEFAULTS,
    )
    assert profile is not None
    assert str(profile.model) == expected


def test_scope_that_sets_one_field_inherits_every_other_field() -> None:
    budget = BudgetSpec(daily_usd=Decimal("12.50"))
    limit = RateLimitSpec(requests_per_interval=60, tokens_per_interval=100_000, burst=10)
    degrade = DegradationPolicy(failures=3, window_s=300.0, upgrade_to="code_generation")
    resolution = explain_resolution(
        "acme-eu",
        "acme",
        "reasoning",
        active=active(
            version(DOMAIN, spec(model="openai:gpt-4.1"), number=4),
            version(ORG, spec(budget=budget, max_tokens=2048, credential_source="byo"), number=2),
            version(
                GLOBAL,
                spec(
                    model="openai:gpt-4o",
                    fallbacks=["openai:gpt-4o-mini"],
                    rate_limit=limit,
                    temperature=0.2,
                    max_tokens=512,
                    timeout_s=30.0,
                    degradation=degrade,
                    variant="b",
                ),
            ),
        ),
        server_defaults=DEFAULTS,
    )
    assert resolution is not None
    profile = resolution.profile
    assert str(profile.model) == "openai:gpt-4.1"
    assert profile.budget == budget
    assert profile.credential_source == "byo"
    assert profile.rate_limit == limit
    assert profile.fallbacks == (ref("openai:gpt-4o-mini"),)
    assert profile.degradation == degrade
    assert profile.variant == "b"
    # Call defaults inherit per field: max_tokens from the org, the rest from global.
    assert profile.defaults.max_tokens == 2048
    assert profile.defaults.temperature == 0.2
    assert profile.defaults.timeout_s == 30.0
    assert (profile.profile_id, profile.version) == ("domain:acme-eu/reasoning", 4)
    assert (profile.scope_kind, profile.scope_id) == ("domain", "acme-eu")
    assert resolution.sources == {
        "model": "domain:acme-eu v4",
        "fallbacks": "global v1",
        "rate_limit": "global v1",
        "budget": "org:acme v2",
        "temperature": "global v1",
        "max_tokens": "org:acme v2",
        "timeout_s": "global v1",
        "credential_source": "org:acme v2",
        "degradation": "global v1",
        "variant": "global v1",
    }


def test_stage_no_scope_sets_inherits_the_server_default_model_and_scope_fields() -> None:
    resolution = explain_resolution(
        "acme-eu",
        "acme",
        "reasoning",
        active=active(version(ORG, spec(temperature=0.0))),
        server_defaults=DEFAULTS,
    )
    assert resolution is not None
    assert str(resolution.profile.model) == "openai:gpt-4o-mini"
    assert resolution.profile.defaults.temperature == 0.0
    assert resolution.sources["model"] == "server default"
    assert resolution.profile.profile_id == "org:acme/reasoning"


def test_no_model_anywhere_resolves_to_none() -> None:
    assert (
        resolve_active_profile(
            "acme-eu",
            "acme",
            "scoring",
            active=active(version(ORG, spec(temperature=0.0))),
            server_defaults=DEFAULTS,
        )
        is None
    )


def test_only_server_defaults_leave_profile_id_empty() -> None:
    profile = resolve_active_profile(None, None, "reasoning", active={}, server_defaults=DEFAULTS)
    assert profile is not None
    assert profile.profile_id is None
    assert profile.version is None
    assert (profile.scope_kind, profile.credential_source) == ("global", "managed")


def test_profile_of_another_org_is_never_used() -> None:
    other = version(Scope.of_org("globex"), spec(model="openai:gpt-4.1"))
    profile = resolve_active_profile(
        None, "acme", "reasoning", active={("org", "globex"): other}, server_defaults=DEFAULTS
    )
    assert profile is not None
    assert str(profile.model) == "openai:gpt-4o-mini"


# --- the cache ----------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.polls = 0
        self.fail = False

    def __call__(self) -> int:
        self.polls += 1
        if self.fail:
            raise ConnectionError("store down")
        return self.value


def test_cache_polls_the_change_counter_at_most_once_per_ttl() -> None:
    clock, counter = ManualClock(), Counter()
    cache = ResolutionCache(ttl_s=0.5, poll=counter, clock=clock)
    profile = resolve_active_profile(None, None, "reasoning", active={}, server_defaults=DEFAULTS)
    assert profile is not None
    assert cache.get(("reasoning", None, None)) is None  # the first call polls
    cache.put(("reasoning", None, None), profile, cache.generation)
    for _ in range(100):
        assert cache.get(("reasoning", None, None)) is profile
    assert counter.polls == 1
    clock.advance(0.5)
    cache.get(("reasoning", None, None))
    assert counter.polls == 2


def test_change_by_another_process_is_seen_after_one_ttl_not_before() -> None:
    clock, counter = ManualClock(), Counter()
    cache = ResolutionCache(ttl_s=1.0, poll=counter, clock=clock)
    profile = resolve_active_profile(None, None, "reasoning", active={}, server_defaults=DEFAULTS)
    assert profile is not None
    key = ("reasoning", None, None)
    cache.get(key)
    cache.put(key, profile, cache.generation)
    counter.value += 1  # another process wrote
    clock.advance(0.99)
    assert cache.get(key) is profile
    clock.advance(0.01)
    assert cache.get(key) is None


def test_result_computed_before_an_invalidation_is_not_cached() -> None:
    cache = ResolutionCache(ttl_s=1.0, poll=Counter(), clock=ManualClock())
    profile = resolve_active_profile(None, None, "reasoning", active={}, server_defaults=DEFAULTS)
    assert profile is not None
    key = ("reasoning", None, None)
    cache.get(key)
    generation = cache.generation
    cache.invalidate()  # a write landed while the stale result was being computed
    cache.put(key, profile, generation)
    assert cache.get(key) is None


def test_unreachable_store_keeps_serving_cached_profiles(caplog: pytest.LogCaptureFixture) -> None:
    clock, counter = ManualClock(), Counter()
    cache = ResolutionCache(ttl_s=1.0, poll=counter, clock=clock)
    profile = resolve_active_profile(None, None, "reasoning", active={}, server_defaults=DEFAULTS)
    assert profile is not None
    key = ("reasoning", None, None)
    cache.get(key)
    cache.put(key, profile, cache.generation)
    counter.fail = True
    clock.advance(2.0)
    assert cache.get(key) is profile
    assert "poll failed (ConnectionError)" in caplog.text


# --- property: every field comes from the most specific scope that sets it -----------------

_MODELS = st.sampled_from(["openai:gpt-4o", "openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"])
_SPECS = st.builds(
    ProfileSpec,
    model=st.none() | _MODELS.map(ref),
    temperature=st.none() | st.floats(min_value=0, max_value=2),
    max_tokens=st.none() | st.integers(min_value=1, max_value=10_000),
    variant=st.none() | st.sampled_from(["a", "b"]),
    credential_source=st.none() | st.sampled_from(["managed", "byo"]),
)


@given(
    domain_spec=st.none() | _SPECS,
    org_spec=st.none() | _SPECS,
    global_spec=st.none() | _SPECS,
    default=st.none() | _MODELS,
)
def test_each_field_comes_from_the_most_specific_scope_setting_it(
    domain_spec: ProfileSpec | None,
    org_spec: ProfileSpec | None,
    global_spec: ProfileSpec | None,
    default: str | None,
) -> None:
    chain = [(DOMAIN, domain_spec), (ORG, org_spec), (GLOBAL, global_spec)]
    table = active(*(version(scope, s) for scope, s in chain if s is not None))
    defaults = {"reasoning": ref(default)} if default else {}
    profile = resolve_active_profile(
        "acme-eu", "acme", "reasoning", active=table, server_defaults=defaults
    )

    def first(name: str) -> object:
        return next(
            (getattr(s, name) for _, s in chain if s is not None and getattr(s, name) is not None),
            None,
        )

    model = first("model") or (ref(default) if default else None)
    if model is None:
        assert profile is None
        return
    assert profile is not None
    assert profile.model == model
    assert profile.defaults.temperature == first("temperature")
    assert profile.defaults.max_tokens == first("max_tokens")
    assert profile.variant == first("variant")
    assert profile.credential_source == (first("credential_source") or "managed")
