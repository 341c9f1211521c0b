"""`ControlPlane`: builds guarded LangChain chat models, and owns what they share.

One control plane holds one profile resolver, one guard (rate limits and budgets), one
pricer, one set of circuit breakers, one provider registry and its own OpenTelemetry
providers. `chat_model(purpose, …)` returns a LangChain `BaseChatModel` whose every call is
a guarded call (see `_call/`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from comptroller.budget_alerts import WarningPolicy
from comptroller.control._attribution import AttributionBudgetRules
from comptroller.control._budget_watch import BudgetWatch
from comptroller.control._call import CallCore, CallScope, RetryPolicy
from comptroller.control._chat_model import GuardedChatModel
from comptroller.control._circuit import CircuitBreakers, CircuitPolicy, CircuitSnapshot
from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._embeddings import DEFAULT_BATCH_SIZE, GuardedEmbeddings
from comptroller.control._profile_types import ModelRef, ProfileResolver, ResolvedProfile
from comptroller.control._providers import ChatModelFactory, ProviderRegistry
from comptroller.control._purposes import Purpose, PurposeRegistry
from comptroller.control._telemetry import EventEmitter, NullSink, Telemetry, TelemetrySink
from comptroller.errors import ConfigError, UsageError
from comptroller.semconv import OPERATION_EMBEDDINGS

if TYPE_CHECKING:
    from comptroller.config import Settings
    from comptroller.control._call import CredentialResolver
    from comptroller.control._embedders import EmbeddingsFactory
    from comptroller.control._guard import Guard
    from comptroller.pricing import Pricer

_log = logging.getLogger("comptroller.control")


class StaticProfiles:
    """A `ProfileResolver` from a fixed map: purpose → profile (no store, no scopes).

    Useful for tests and for applications that configure models in code. Purposes not in the
    map fall back to `defaults` (`purpose → "provider:model"`, e.g. `settings.model`).

    Example:
        >>> profiles = StaticProfiles(defaults={"reasoning": "openai:gpt-4o-mini"})
        >>> profiles.resolve("reasoning", domain=None, org=None).model
        ModelRef(provider='openai', model='gpt-4o-mini')
    """

    def __init__(
        self,
        profiles: Mapping[str, ResolvedProfile] | None = None,
        *,
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        self._profiles = dict(profiles or {})
        for purpose, ref in (defaults or {}).items():
            self._profiles.setdefault(
                purpose, ResolvedProfile(purpose=purpose, model=ModelRef.parse(ref))
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> StaticProfiles:
        """Server defaults of `settings.model` (`COMPTROLLER_MODEL_<PURPOSE>=provider:model`)."""
        return cls(defaults=settings.model)

    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        """The profile of `purpose` (scopes are ignored).

        Raises:
            UsageError: No profile for `purpose`.
        """
        found = self._profiles.get(purpose)
        if found is None:
            raise UsageError(
                f"no model configured for purpose {purpose!r} (known: "
                f"{', '.join(sorted(self._profiles)) or 'none'}); set "
                f"COMPTROLLER_MODEL_{purpose.upper()}=provider:model or add a profile"
            )
        return found


TelemetryMode = Literal["embedded", "otlp", "none"]


def _null_sink(settings: Settings) -> TelemetrySink:
    return NullSink()


def _otlp_sink(settings: Settings) -> TelemetrySink:
    from comptroller.control._otlp import OtlpSink

    return OtlpSink.from_settings(settings)


def _embedded_sink(settings: Settings) -> TelemetrySink:
    # The one place the control plane reaches into the collector, and only in this mode:
    # an application that sends OTLP never imports DuckDB.
    try:
        from comptroller.collector import EmbeddedSink
    except ImportError as exc:
        raise ConfigError(
            f"telemetry = 'embedded' needs the collector's DuckDB sink ({exc}); install "
            "comptroller with its collector, or set COMPTROLLER_TELEMETRY=otlp or none"
        ) from exc
    from comptroller.pricing import Pricer

    settings.ensure_data_dir()
    return EmbeddedSink(
        settings.db_file,
        timezone=settings.timezone,
        prices=Pricer.from_settings(settings),
        alerts=settings.alerts,
        attribution_budgets=settings.control.attribution_budgets,
    )


_SINKS: dict[TelemetryMode, Callable[[Settings], TelemetrySink]] = {
    "none": _null_sink,
    "otlp": _otlp_sink,
    "embedded": _embedded_sink,
}
"""Where a control plane's telemetry goes, per `COMPTROLLER_TELEMETRY`."""


def _default_sink(settings: Settings, mode: TelemetryMode) -> TelemetrySink:
    factory = _SINKS.get(mode)
    if factory is None:
        raise ConfigError(
            f"unknown telemetry mode {mode!r}; set COMPTROLLER_TELEMETRY to one of "
            f"{', '.join(sorted(_SINKS))}"
        )
    return factory(settings)


class ControlPlane:
    """The in-process control plane: routing, limits, budgets, retries, fallbacks, pricing and
    telemetry around LangChain chat models.

    Args:
        settings: The settings (default: `load_settings()`); parts given explicitly win.
        resolver: Resolves (purpose, domain, org) to a profile. Default: the store-backed
            `ProfileService` when available, else `StaticProfiles.from_settings(settings)`.
        guard: Rate limits and budgets. Default: `make_guard(settings)` (memory or Redis).
        pricer: Prices attempts. Default: `Pricer.from_settings(settings)`.
        sink: Where telemetry goes. Default: by `settings.telemetry` — the embedded DuckDB
            sink, OTLP/HTTP with a durable spool, or nothing.
        clock: Time and sleeping (tests inject `testing.FakeClock`).
        providers: Extra chat-model factories by provider name, or a whole registry.
        credentials: Resolves the secret of a call's model at call time. Default: the
            resolver's credential store (`ProfileService.credentials`), if it has one.
        circuit_policy: When circuits open and for how long.
        retry_policy: Backoff and retry budget (default from `settings.control`).
        rng: Randomness of the backoff jitter (tests pass a seeded one).

    Example:
        >>> with ControlPlane() as plane:  # doctest: +SKIP
        ...     model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        ...     model.invoke("Summarise the ticket")
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        resolver: ProfileResolver | None = None,
        guard: Guard | None = None,
        pricer: Pricer | None = None,
        sink: TelemetrySink | None = None,
        clock: Clock | None = None,
        providers: ProviderRegistry | Mapping[str, ChatModelFactory] | None = None,
        credentials: CredentialResolver | None = None,
        circuit_policy: CircuitPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings is None:
            from comptroller.config import load_settings

            settings = load_settings()
        self.settings = settings
        self.clock: Clock = clock or SYSTEM_CLOCK
        if sink is None:
            sink = _default_sink(settings, settings.telemetry)
        self.telemetry = Telemetry(sink, record_content=settings.record_content)
        self._owned_resolver: ProfileResolver | None = None
        if resolver is None:
            resolver = self._owned_resolver = _default_resolver(settings, self.telemetry)
        if credentials is None:
            # A resolver that carries a credential store (ProfileService) supplies the keys
            # of its profiles, whether the plane built it or the caller did.
            store = getattr(resolver, "credentials", None)
            if callable(getattr(store, "resolve_secret", None)):
                credentials = store
        self.resolver: ProfileResolver = resolver
        self._reconciler: Any = None
        if guard is None:
            from comptroller.control._guard import make_guard

            guard = make_guard(settings, clock=self.clock)
            self._reconciler = _start_reconciler(settings, guard, sink)
        if pricer is None:
            from comptroller.control._pricing import Pricer

            pricer = Pricer.from_settings(settings)
        if isinstance(providers, ProviderRegistry):
            registry = providers
        else:
            registry = ProviderRegistry(providers)
        self.providers = registry
        control = settings.control
        policy = circuit_policy or CircuitPolicy(
            consecutive_failures=control.circuit_failures,
            failure_ratio=control.circuit_failure_ratio,
            window_s=control.circuit_window_s,
            cooldown_s=control.circuit_cooldown_s,
            quota_cooldown_s=control.circuit_quota_cooldown_s,
        )
        self.circuits = CircuitBreakers(policy, clock=self.clock, events=self.telemetry)
        retry = retry_policy or RetryPolicy(
            max_retries=control.max_retries,
            base_s=control.retry_backoff_s,
            max_backoff_s=control.retry_max_backoff_s,
            max_retry_after_s=control.max_retry_after_s,
        )
        self._core = CallCore(
            resolver=resolver,
            guard=guard,
            pricer=pricer,
            telemetry=self.telemetry,
            circuits=self.circuits,
            providers=registry,
            clock=self.clock,
            retry=retry,
            credentials=credentials,
            max_reservation_usd=Decimal(str(control.budget_max_reservation_usd)),
            default_max_output_tokens=control.default_max_output_tokens,
            rng=rng,
            budget_watch=BudgetWatch(
                WarningPolicy.from_settings(settings.alerts),
                clock=self.clock,
                events=self.telemetry,
                timezone=getattr(guard, "timezone", None) or settings.timezone,
            ),
            attribution_budgets=AttributionBudgetRules(control.attribution_budgets),
        )
        self._handles: dict[CallScope, GuardedChatModel] = {}
        self._settings_purposes: PurposeRegistry | None = None
        self._closed = False

    @property
    def guard(self) -> Guard | None:
        """The guard holding rate-limit buckets and the budget ledger."""
        return self._core.guard

    @property
    def pricer(self) -> Pricer:
        """The pricer of this control plane."""
        return self._core.pricer

    @property
    def events(self) -> EventEmitter:
        """Emits events (log records) through this control plane's telemetry pipeline."""
        return self.telemetry

    def chat_model(
        self,
        purpose: str,
        *,
        domain: str | None = None,
        org: str | None = None,
        context: str | None = None,
        rate_limit_wait_s: float = 0.0,
    ) -> GuardedChatModel:
        """A LangChain chat model for `purpose` at (domain, org), calling from `context`.

        Args:
            purpose: Why the calls are made; selects the profile.
            domain: The tenant's workspace (most specific scope; the tenant of limits).
            org: The tenant's organisation.
            context: The calling subsystem; limits and budgets are per (tenant, context,
                purpose).
            rate_limit_wait_s: How long a call may wait for the rate limit; 0 raises
                `RateLimited` at once.

        Raises:
            UsageError: A negative wait, or `purpose` is declared as an embedding purpose.
        """
        scope = CallScope(
            purpose=purpose,
            domain=domain,
            org=org,
            context=context,
            rate_limit_wait_s=rate_limit_wait_s,
        )
        # Handles are immutable in use (bind_tools and friends return new ones), so one per
        # scope is shared: an application that asks for a handle per request pays a lookup.
        model = self._handles.get(scope)
        if model is None:
            declared = self._declared(purpose)
            if declared is not None and declared.embedding:
                raise UsageError(
                    f"purpose {purpose!r} is an embedding purpose: its models make vectors, "
                    f"not answers; use plane.embeddings({purpose!r}, …) for it"
                )
            model = GuardedChatModel(purpose=purpose, domain=domain, org=org, context=context)
            model._route = self._core.route(scope)
            if len(self._handles) >= 100_000:
                self._handles.clear()
            self._handles[scope] = model
        return model

    def _declared(self, purpose: str) -> Purpose | None:
        """The declaration of `purpose` (the resolver's taxonomy, else the settings'); None
        for a purpose nobody declared."""
        purposes = getattr(self.resolver, "purposes", None)
        if not isinstance(purposes, PurposeRegistry):
            purposes = self._settings_purposes
            if purposes is None:
                purposes = self._settings_purposes = PurposeRegistry.from_settings(self.settings)
        try:
            return purposes[purpose]
        except KeyError:
            return None

    def embeddings(
        self,
        purpose: str = "embedding",
        *,
        domain: str | None = None,
        org: str | None = None,
        context: str | None = None,
        rate_limit_wait_s: float = 0.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> GuardedEmbeddings:
        """LangChain `Embeddings` for `purpose` at (domain, org), calling from `context`.

        Each request (a batch of up to `batch_size` texts) is guarded like a chat call:
        rate limits on requests and tokens, a budget reservation sized from the input,
        retries and fallback along the profile's chain of embedding models, priced from the
        provider-reported usage, with a GenAI span (`gen_ai.operation.name = embeddings`)
        and a usage row per attempt.

        Example:
            >>> emb = plane.embeddings("embedding", org="acme", domain="acme-eu")  # doctest: +SKIP
            >>> emb.embed_query("refund policy")[:3]  # doctest: +SKIP

        Raises:
            UsageError: `purpose` is declared and is not an embedding purpose, or a bad
                wait or batch size.
        """
        declared = self._declared(purpose)
        if declared is not None and not declared.embedding:
            raise UsageError(
                f"purpose {purpose!r} is not an embedding purpose; use plane.chat_model for "
                "it, or declare it with embedding = true under "
                f"[control.purposes.{purpose}] in comptroller.toml"
            )
        scope = CallScope(
            purpose=purpose,
            domain=domain,
            org=org,
            context=context,
            rate_limit_wait_s=rate_limit_wait_s,
            operation=OPERATION_EMBEDDINGS,
        )
        return GuardedEmbeddings(self._core.route(scope), batch_size=batch_size)

    def register_embeddings(self, name: str, factory: EmbeddingsFactory) -> None:
        """Build the embedding models of provider `name` with `factory` (an `Embedder`, or
        any LangChain `Embeddings`, whose usage is then estimated from the input)."""
        self.providers.register_embeddings(name, factory)

    def pydantic_ai_model(
        self,
        purpose: str,
        *,
        domain: str | None = None,
        org: str | None = None,
        context: str | None = None,
        rate_limit_wait_s: float = 0.0,
    ) -> Any:
        """A pydantic-ai `Model` for `purpose` at (domain, org), calling from `context`.

        Every request of an `Agent` using it runs the guarded call flow of
        `chat_model(purpose, …)` (routing, limits, budgets, retries, fallbacks, pricing,
        spans and usage rows). Needs the `pydantic-ai` extra
        (`pip install 'comptroller[pydantic-ai]'`).

        Example:
            >>> from pydantic_ai import Agent  # doctest: +SKIP
            >>> agent = Agent(plane.pydantic_ai_model("reasoning", domain="acme-eu"))  # doctest: +SKIP
            >>> agent.run_sync("Summarise the ticket").output  # doctest: +SKIP

        Raises:
            ConfigError: pydantic-ai is not installed.
        """
        from comptroller.control._pydantic_ai import guarded_pydantic_ai_model

        return guarded_pydantic_ai_model(
            self.chat_model(
                purpose,
                domain=domain,
                org=org,
                context=context,
                rate_limit_wait_s=rate_limit_wait_s,
            )
        )

    def register_provider(self, name: str, factory: ChatModelFactory) -> None:
        """Build the models of provider `name` with `factory` (any LangChain chat model)."""
        self.providers.register(name, factory)

    def circuit_states(self) -> list[CircuitSnapshot]:
        """The state of every circuit used so far (for the TUI and API)."""
        return self.circuits.snapshots()

    def circuit_state(self, provider: str, model: str) -> CircuitSnapshot:
        """The state of the circuit of (provider, model)."""
        return self.circuits.snapshot(provider, model)

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Export every span, usage row and event emitted so far."""
        return self.telemetry.flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush telemetry and release the sink and the guard. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._reconciler is not None:
            self._reconciler.stop()
        self.telemetry.shutdown()
        for part in (self._core.guard, self._owned_resolver):
            close = getattr(part, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _start_reconciler(settings: Settings, guard: Any, sink: TelemetrySink | None) -> Any:
    """Seed the budget ledger with today's landed spend, and keep it reconciled.

    With `control.budget_state_url` (a collector shared by several processes) the ledger is
    seeded now and then every `reconcile_interval_s`; with the embedded sink it is seeded once
    from the sink's own database, which only this process writes. Seeding failures are
    logged, not raised: the ledger then starts from what this process sees (the documented
    overshoot bound), and budgets still fail closed on their own state.
    """
    from comptroller.control._guard import BudgetReconciler, make_reconciler

    reconciler = make_reconciler(settings, guard)
    periodic = reconciler is not None
    if reconciler is None:
        source = getattr(sink, "budget_state", None)
        if not callable(source):
            return None
        reconciler = BudgetReconciler(guard, source)
    try:
        reconciler.run_once()
    except Exception as exc:  # telemetry or collector trouble never breaks the caller
        _log.warning("comptroller: could not seed budgets from the budget state: %s", exc)
    if periodic:
        reconciler.start()
        return reconciler
    return None


def _default_resolver(settings: Settings, events: EventEmitter) -> ProfileResolver:
    # Loaded here, not at import: the profile store brings SQLAlchemy, which an application
    # with static profiles never needs.
    from comptroller.control._profile_service import ProfileService

    return ProfileService.from_settings(settings, events=events)
