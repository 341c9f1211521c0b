"""Routing: a handle's scope, its compiled profile (chain, keys, attributes), and the shared
machinery that builds and caches the concrete models."""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.util.types import AttributeValue

from comptroller import semconv
from comptroller.control._attribution import AttributionBudgetRules
from comptroller.control._call._binders import Binder
from comptroller.control._call._policy import DegradationTracker, RetryBudget, RetryPolicy
from comptroller.control._circuit import CircuitBreakers
from comptroller.control._clock import Clock
from comptroller.control._profile_types import ModelRef, ResolvedProfile
from comptroller.control._provider_names import canonical_provider
from comptroller.control._providers import ModelSpec, ProviderRegistry
from comptroller.control._redact import Redactor
from comptroller.control._telemetry import Telemetry
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.runnables import Runnable

    from comptroller.control._budget_watch import BudgetWatch
    from comptroller.control._guard import Guard, GuardKey
    from comptroller.pricing import Pricer

_MAX_ROUTES = 100_000
_MAX_BOUND = 10_000


class CredentialResolver(Protocol):
    """Resolves the secret of a call's model at call time (`CredentialStore` satisfies it)."""

    def resolve_secret(
        self,
        profile: ResolvedProfile,
        *,
        domain: str | None,
        org: str | None,
        provider: str | None = None,
    ) -> str | None: ...


# --- per-scope route (cached profile, keys, static attributes) -------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class CallScope:
    """Who calls, for what: selects the profile, the limits and the labels."""

    purpose: str
    domain: str | None = None
    org: str | None = None
    context: str | None = None
    rate_limit_wait_s: float = 0.0
    """How long a call may wait for a rate-limit bucket before `RateLimited`."""
    operation: str = semconv.OPERATION_CHAT
    """The GenAI operation of the route's calls: `chat`, or `embeddings`."""

    def __post_init__(self) -> None:
        # Checked once for every kind of handle (chat, embeddings, pydantic-ai) made on it.
        if self.rate_limit_wait_s < 0:
            raise UsageError(f"rate_limit_wait_s must be ≥ 0, got {self.rate_limit_wait_s}")


class Prepared:
    """A resolved profile, compiled for the hot path: chain, keys, attributes."""

    __slots__ = (
        "attempt_attrs",
        "attempt_names",
        "budget_cap",
        "call_name",
        "chain",
        "guard_key",
        "info_prefix",
        "max_output",
        "operation",
        "parent_attrs",
        "profile",
        "row_attrs",
        "runnables",
        "served_purpose",
        "source",
    )

    def __init__(
        self,
        core: CallCore,
        scope: CallScope,
        profile: ResolvedProfile,
        served_purpose: str,
        *,
        source: ResolvedProfile,
    ) -> None:
        self.profile = profile
        self.served_purpose = served_purpose
        # `CallInfo`'s fields common to every attempt of a call on this route.
        self.info_prefix = (served_purpose, scope.domain, scope.org, scope.context)
        # The resolver's profile this was compiled from: its identity tells a change.
        self.source = source
        chain = [profile.model]
        for ref in profile.fallbacks:
            if ref not in chain and (
                profile.allow_cross_provider or _same_provider(ref, profile.model)
            ):
                chain.append(ref)
        self.chain: tuple[ModelRef, ...] = tuple(chain)
        self.guard_key = core.guard_key(scope) if core.guard is not None else None
        self.operation = scope.operation
        # An embedding request produces no output tokens: nothing to reserve for them.
        self.max_output = (
            0
            if scope.operation == semconv.OPERATION_EMBEDDINGS
            else profile.defaults.max_tokens or core.default_max_output_tokens
        )
        self.budget_cap = str(profile.budget.daily_usd) if profile.budget is not None else None
        attrs: dict[str, AttributeValue] = {semconv.PURPOSE: scope.purpose}
        for name, value in (
            (semconv.TENANT, scope.domain),
            (semconv.ORG, scope.org),
            (semconv.CONTEXT, scope.context),
            (semconv.PROFILE_ID, profile.profile_id),
            (semconv.PROFILE_VERSION, profile.version),
        ):
            if value is not None:
                attrs[name] = value
        if served_purpose != scope.purpose:
            attrs[semconv.PURPOSE_UPGRADED_TO] = served_purpose
        self.parent_attrs = attrs
        self.call_name = "comptroller.call " + scope.purpose
        self.runnables: dict[tuple[int, int], tuple[Binder, Runnable[Any, Any]]] = {}
        # Per model of the chain, the attempt span's constant attributes, built once.
        self.attempt_names = tuple(self.operation + " " + ref.model for ref in self.chain)
        self.attempt_attrs = tuple(
            self._attempt_attrs(profile, ref, depth) for depth, ref in enumerate(self.chain)
        )
        rows = []
        for attrs in self.attempt_attrs:
            row = dict(attrs)
            del row[semconv.SEMCONV_VERSION]
            if self.budget_cap is not None:
                row[semconv.BUDGET_CAP_USD] = self.budget_cap
            rows.append(row)
        self.row_attrs = tuple(rows)

    def _attempt_attrs(
        self, profile: ResolvedProfile, ref: ModelRef, depth: int
    ) -> dict[str, AttributeValue]:
        attrs: dict[str, AttributeValue] = {
            semconv.GEN_AI_OPERATION_NAME: self.operation,
            semconv.GEN_AI_PROVIDER_NAME: ref.provider,
            semconv.GEN_AI_REQUEST_MODEL: ref.model,
            semconv.FALLBACK_DEPTH: depth,
            semconv.SEMCONV_VERSION: semconv.SEMCONV_PACKAGE_VERSION,
            **self.parent_attrs,
        }
        defaults = profile.defaults
        if self.operation != semconv.OPERATION_EMBEDDINGS:  # an embedding request sends neither
            if defaults.max_tokens is not None:
                attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] = defaults.max_tokens
            if defaults.temperature is not None:
                attrs[semconv.GEN_AI_REQUEST_TEMPERATURE] = defaults.temperature
        base_url = endpoint(profile, ref)
        if base_url:
            host = base_url.split("://", 1)[-1].split("/", 1)[0]
            attrs[semconv.SERVER_ADDRESS] = host.rsplit(":", 1)[0] if ":" in host else host
        return attrs


class Route:
    """A chat-model handle's scope with its compiled profile."""

    __slots__ = ("_prepared", "_upgraded", "core", "degrade_key", "scope")

    def __init__(self, core: CallCore, scope: CallScope) -> None:
        self.core = core
        self.scope = scope
        self.degrade_key = (scope.domain, scope.org, scope.purpose)
        self._prepared: Prepared | None = None
        self._upgraded: tuple[str, ResolvedProfile, Prepared, Prepared] | None = None

    def prepared(self) -> Prepared:
        """The compiled profile of this call (the stronger purpose's while upgraded)."""
        core = self.core
        scope = self.scope
        # Resolve on every call: the resolver caches (the profile service invalidates at once
        # on a write in this process), so a change is seen by the next call; the profile is
        # compiled again only when the resolver hands back a different one.
        profile = core.resolver.resolve(scope.purpose, domain=scope.domain, org=scope.org)
        prepared = self._prepared
        if prepared is None or (prepared.source is not profile and prepared.source != profile):
            prepared = Prepared(core, scope, profile, scope.purpose, source=profile)
            self._prepared = prepared
        upgrade = core.degradation.upgraded_to(self.degrade_key, profile)
        if upgrade is None:
            return prepared
        target = core.resolver.resolve(upgrade, domain=scope.domain, org=scope.org)
        cached = self._upgraded
        if (
            cached is not None
            and cached[0] == upgrade
            and cached[1] is target
            and cached[2] is prepared
        ):
            return cached[3]
        upgraded = core.upgraded(scope, prepared, upgrade, target)
        self._upgraded = (upgrade, target, prepared, upgraded)
        return upgraded


# --- the core ------------------------------------------------------------------------------


class CallCore:
    """The shared machinery of one control plane's guarded calls."""

    def __init__(
        self,
        *,
        resolver: Any,
        guard: Guard | None,
        pricer: Pricer,
        telemetry: Telemetry,
        circuits: CircuitBreakers,
        providers: ProviderRegistry,
        clock: Clock,
        retry: RetryPolicy,
        credentials: CredentialResolver | None = None,
        max_reservation_usd: Decimal = Decimal(1),
        default_max_output_tokens: int = 4096,
        rng: random.Random | None = None,
        budget_watch: BudgetWatch | None = None,
        attribution_budgets: AttributionBudgetRules | None = None,
    ) -> None:
        self.resolver = resolver
        self.guard = guard
        self.pricer = pricer
        self.telemetry = telemetry
        self.circuits = circuits
        self.providers = providers
        self.clock = clock
        self.retry = retry
        self.retry_budget = RetryBudget(retry, clock)
        self.degradation = DegradationTracker(clock, telemetry)
        self.credentials = credentials
        self.max_reservation_usd = max_reservation_usd
        self.default_max_output_tokens = default_max_output_tokens
        self.rng = rng or random.Random()
        self.budget_watch = (
            budget_watch if budget_watch is not None and budget_watch.active else None
        )
        """Raises budget warnings after each settlement (None: no warnings configured)."""
        self.attribution_budgets = attribution_budgets or AttributionBudgetRules()
        """The budgets by attribution a call may count against (end user, tag, …)."""
        # Every key a call may use is known here, so that a provider echoing it back in an
        # error body cannot carry it into an exception, a span or the ledger. One redactor
        # with the credential store, which adds each secret it hands out.
        shared = getattr(credentials, "redactor", None)
        self.redactor: Redactor = shared if isinstance(shared, Redactor) else Redactor()
        self.redactor.add(*_environment_secrets())
        self._models: dict[tuple[Any, ...], BaseChatModel] = {}
        self._bound: dict[tuple[Any, ...], Runnable[Any, Any]] = {}
        self._binders: dict[int, Binder] = {}
        self._routes: dict[CallScope, Route] = {}
        self._lock = threading.Lock()
        self._tracer = telemetry.tracer
        self._logger = telemetry.logger
        # A sink with a bounded spool (OTLP) reports when it is full: calls are then refused.
        self.spool: Any = telemetry.sink if hasattr(telemetry.sink, "full_error") else None

    # -- helpers ---------------------------------------------------------------------------

    def route(self, scope: CallScope) -> Route:
        """The route of `scope`, shared by every handle of that scope (so that handles made
        per request reuse the compiled profile and the model instances)."""
        found = self._routes.get(scope)
        if found is None:
            if len(self._routes) >= _MAX_ROUTES:
                self._routes.clear()  # a crude bound; routes are cheap to rebuild
            found = self._routes.setdefault(scope, Route(self, scope))
        return found

    def guard_key(self, scope: CallScope) -> GuardKey:
        from comptroller.control._guard import GuardKey

        return GuardKey(
            tenant=scope.domain or "", context=scope.context or "", purpose=scope.purpose
        )

    def upgraded(
        self, scope: CallScope, base: Prepared, purpose: str, target: ResolvedProfile
    ) -> Prepared:
        """The profile of the stronger purpose, under the caller's limits and labels."""
        merged = replace(
            target,
            purpose=scope.purpose,
            rate_limit=base.profile.rate_limit,
            budget=base.profile.budget,
            degradation=base.profile.degradation,
        )
        return Prepared(self, scope, merged, purpose, source=target)

    def runnable(
        self, route: Route, prep: Prepared, depth: int, binder: Binder
    ) -> Runnable[Any, Any]:
        """The model of chain position `depth` for this scope with `binder` applied (built
        once per scope, model and binder)."""
        fast_key = (depth, id(binder))
        found = prep.runnables.get(fast_key)
        # The binder is kept with its runnable: a binder's id may be reused once it is gone,
        # and a new binder under an old id must not get the old tools.
        if found is None or found[0] is not binder:
            if len(prep.runnables) >= _MAX_BOUND:
                prep.runnables.clear()
            found = (binder, self._runnable(route, prep, prep.chain[depth], binder))
            prep.runnables[fast_key] = found
        return found[1]

    def _runnable(
        self, route: Route, prep: Prepared, ref: ModelRef, binder: Binder
    ) -> Runnable[Any, Any]:
        profile = prep.profile
        scope = route.scope
        base_url = endpoint(profile, ref)
        defaults = profile.defaults
        # Credentials are per scope: the key holds the scope so that one tenant's model
        # instance (and its key) never serves another's call.
        key = (
            scope.operation,
            ref.provider,
            ref.model,
            base_url,
            profile.credential_source,
            profile.credential_ref,
            # Changes when a key the profile would use is set, rotated or deleted: a rotated
            # key takes effect on the next call, not at the next restart.
            profile.credential_revision,
            scope.domain if self.credentials is not None else None,
            scope.org if self.credentials is not None else None,
            defaults.temperature,
            defaults.max_tokens,
            defaults.timeout_s,
        )
        bound_key = (*key, id(binder))
        found = self._bound.get(bound_key)
        if found is not None:
            return found
        with self._lock:
            model = self._models.get(key)
            if model is None:
                api_key = None
                if self.credentials is not None:
                    api_key = self.credentials.resolve_secret(
                        profile, domain=scope.domain, org=scope.org, provider=ref.provider
                    )
                self.redactor.add(api_key)
                build: Any = (
                    self.providers.build_embeddings
                    if scope.operation == semconv.OPERATION_EMBEDDINGS
                    else self.providers.build
                )
                model = build(
                    ModelSpec(
                        provider=ref.provider,
                        model=ref.model,
                        base_url=base_url,
                        api_key=api_key,
                        temperature=defaults.temperature,
                        max_tokens=defaults.max_tokens,
                        timeout_s=defaults.timeout_s,
                        default_max_tokens=self.default_max_output_tokens,
                    )
                )
                self._models[key] = model
            runnable = binder.apply(model)
            if len(self._bound) >= _MAX_BOUND:
                # A crude bound for handles that bind per request; entries are cheap to redo.
                self._bound.clear()
                self._binders.clear()
            self._bound[bound_key] = runnable
            # Hold the binder so that its id cannot be reused while the entry exists.
            self._binders[id(binder)] = binder
        return runnable


def endpoint(profile: ResolvedProfile, ref: ModelRef) -> str | None:
    """Where `ref` is called: its own `base_url`, else the profile's for the profile's own
    provider (another provider's default endpoint is not the profile's)."""
    if ref.base_url is not None:
        return ref.base_url
    return profile.base_url if _same_provider(ref, profile.model) else None


def _same_provider(a: ModelRef, b: ModelRef) -> bool:
    # `google:` and `gcp.gemini:` are one provider, however a profile built in code names it.
    return a.provider == b.provider or canonical_provider(a.provider) == canonical_provider(
        b.provider
    )


def _environment_secrets() -> list[str]:
    """Provider keys the SDKs read from the environment (`OPENAI_API_KEY`, …)."""
    return [value for name, value in os.environ.items() if name.endswith("_API_KEY") and value]
