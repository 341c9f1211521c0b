"""The guarded call: one logical LLM call, run through every control the profile asks for.

Per call, in this order::

    resolve profile (cached per scope) ─► for each model of the chain (fallbacks):
        circuit allows? ─► admit (rate limit + budget reservation, one atomic guard step)
        ─► invoke the LangChain model (SDK retries off) ─► classify the outcome
        ─► price (provider-reported usage × cached price) ─► settle (or release) the ticket
        ─► emit: the attempt's CLIENT span and its usage row
        transport failure: back off (exponential, jitter, Retry-After) and retry, at most
        `max_retries` times and within the tenant's retry budget; then the next model.
        quota failure (402, insufficient_quota): open the circuit for long, next model.
        validation failure (parse error, refusal): count it for the purpose-upgrade policy,
        raise it (invalid output is not fixed by another model of the same purpose).
    the parent span of the call gets the final outcome.

The sync and async paths share everything but the waiting: `_CallRun` holds the decisions,
`run_sync` / `run_async` / `stream_sync` / `stream_async` are thin loops around it.
"""

from __future__ import annotations

import contextvars
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.util.types import AttributeValue

from comptroller import semconv
from comptroller.control._circuit import CircuitBreakers
from comptroller.control._classify import Classified, classify
from comptroller.control._clock import Clock
from comptroller.control._errors import (
    BudgetError,
    BudgetExceeded,
    BudgetUnverifiable,
    CircuitOpen,
    ControlError,
    ExhaustedFallbacks,
    ProviderError,
    RateLimited,
    TruncatedStream,
)
from comptroller.control._pricing import Price, Usage
from comptroller.control._profile_types import ModelRef, ResolvedProfile
from comptroller.control._providers import ModelSpec, ProviderRegistry
from comptroller.control._telemetry import SAMPLED, Telemetry, new_span_id, new_trace_id
from comptroller.control._tokens import estimate_tokens
from comptroller.control._usage import usage_of

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import Runnable, RunnableConfig

    from comptroller.control._guard import GuardKey

_ZERO = Decimal(0)
_MAX_ROUTES = 100_000
_OK = Status(StatusCode.OK)
_UNSET = Status(StatusCode.UNSET)
_INVALID = INVALID_SPAN_CONTEXT


# --- seams the call consumes -------------------------------------------------------------------


class PricerLike(Protocol):
    """What the call needs from `comptroller.control.Pricer`."""

    def price(self, provider: str, model: str, usage: Usage, at: datetime) -> Price: ...

    def worst_case(
        self, provider: str, model: str, *, input_tokens: int, max_output_tokens: int, at: datetime
    ) -> Decimal | None: ...

    def knows(self, provider: str, model: str) -> bool: ...


class GuardLike(Protocol):
    """What the call needs from a `comptroller.control.Guard` (memory or Redis)."""

    def admit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: Any,
        budget: Any,
        wait_s: float = 0.0,
    ) -> Any: ...

    def settle(self, ticket: Any, *, cost_usd: Decimal | None, tokens: int | None) -> None: ...

    def release(self, ticket: Any) -> None: ...

    async def aadmit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: Any,
        budget: Any,
        wait_s: float = 0.0,
    ) -> Any: ...

    async def asettle(
        self, ticket: Any, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None: ...

    async def arelease(self, ticket: Any) -> None: ...


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


class CallInfo(NamedTuple):
    """The attempt in progress, readable by test doubles through `current_call()`."""

    purpose: str
    tenant: str | None
    org: str | None
    context: str | None
    provider: str
    model: str
    attempt: int
    fallback_depth: int


_CURRENT: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "comptroller_current_call", default=None
)


def current_call() -> CallInfo | None:
    """The guarded attempt running in this context, if any (for fakes and instrumentation)."""
    return _CURRENT.get()


# --- policies --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Backoff of transport retries on the same model."""

    max_retries: int = 3
    base_s: float = 0.5
    """First backoff; doubles with each retry."""
    max_backoff_s: float = 20.0
    max_retry_after_s: float = 60.0
    """A Retry-After longer than this is not waited for: the call moves to the next model."""
    tenant_ratio: float = 0.2
    """Per-tenant retry budget: retries allowed per first attempt, on top of `tenant_min`."""
    tenant_min: int = 10
    """Retries a tenant may always make per `tenant_window_s`."""
    tenant_window_s: float = 10.0


class RetryBudget:
    """Per-tenant retry budget (tumbling window): a tenant's retry storm cannot take the shared
    provider limits from everybody else."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        # tenant → [window start, first attempts, retries]
        self._windows: dict[str | None, list[float]] = {}

    def _window(self, tenant: str | None) -> list[float]:
        now = self._clock.monotonic()
        window = self._windows.get(tenant)
        if window is None or now - window[0] >= self._policy.tenant_window_s:
            window = [now, 0.0, 0.0]
            self._windows[tenant] = window
        return window

    def on_call(self, tenant: str | None) -> None:
        window = self._windows.get(tenant)
        if (
            window is not None
            and self._clock.monotonic() - window[0] < self._policy.tenant_window_s
        ):
            # No lock on the hot path: a lost increment under a race only makes the retry
            # allowance a little smaller.
            window[1] += 1
            return
        with self._lock:
            self._window(tenant)[1] += 1

    def try_retry(self, tenant: str | None) -> bool:
        with self._lock:
            window = self._window(tenant)
            allowed = self._policy.tenant_min + self._policy.tenant_ratio * window[1]
            if window[2] + 1 > allowed:
                return False
            window[2] += 1
            return True


class DegradationTracker:
    """Consecutive validation failures per (tenant, org, purpose) → upgrade the purpose.

    The upgrade holds while failures keep coming: it ends once no validation failure was seen
    for the policy's `window_s`.
    """

    def __init__(self, clock: Clock, telemetry: Telemetry) -> None:
        self._clock = clock
        self._telemetry = telemetry
        self._lock = threading.Lock()
        # key → [consecutive failures, last failure (monotonic), upgraded (0/1)]
        self._state: dict[tuple[str | None, str | None, str], list[float]] = {}

    def upgraded_to(
        self, key: tuple[str | None, str | None, str], profile: ResolvedProfile
    ) -> str | None:
        policy = profile.degradation
        if policy is None or not self._state:
            return None
        state = self._state.get(key)
        if state is None or not state[2]:
            return None
        if self._clock.monotonic() - state[1] >= policy.window_s:
            with self._lock:
                state[0] = state[2] = 0
            return None
        return policy.upgrade_to

    def record(
        self, key: tuple[str | None, str | None, str], profile: ResolvedProfile, *, failed: bool
    ) -> None:
        policy = profile.degradation
        if policy is None:
            return
        if not failed:
            state = self._state.get(key)
            if state is not None and not state[2]:
                state[0] = 0
            return
        now = self._clock.monotonic()
        with self._lock:
            state = self._state.setdefault(key, [0, now, 0])
            if now - state[1] >= policy.window_s:
                state[0] = 0
            state[0] += 1
            state[1] = now
            trigger = not state[2] and state[0] >= policy.failures
            if trigger:
                state[2] = 1
        if trigger:
            self._telemetry.emit(
                semconv.EVENT_PURPOSE_UPGRADED,
                {
                    semconv.PURPOSE: key[2],
                    semconv.TENANT: key[0],
                    semconv.ORG: key[1],
                    semconv.PURPOSE_UPGRADED_TO: policy.upgrade_to,
                    semconv.REASON: (
                        f"{int(state[0])} consecutive validation failures within {policy.window_s:g}s"
                    ),
                },
            )


# --- binders: what a chat model handle applies to each concrete model ----------------------


class Binder:
    """How a handle turns a concrete chat model into what it invokes (identity by default)."""

    structured = False
    returns_errors = False
    """Validation errors are returned in the result (`include_raw=True`), not raised."""

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        return model

    def split(self, result: Any) -> tuple[AIMessage | None, BaseException | None, Any]:
        """(the raw AI message for usage, a validation error or None, the caller's result)."""
        return result, None, result


class ToolsBinder(Binder):
    def __init__(self, inner: Binder, tools: Any, kwargs: Mapping[str, Any]) -> None:
        self.inner = inner
        self.tools = tools
        self.kwargs = dict(kwargs)

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        return model.bind_tools(self.tools, **self.kwargs)


class StructuredBinder(Binder):
    structured = True

    def __init__(self, schema: Any, include_raw: bool, kwargs: Mapping[str, Any]) -> None:
        self.schema = schema
        self.include_raw = include_raw
        self.returns_errors = include_raw
        self.kwargs = dict(kwargs)

    def apply(self, model: BaseChatModel) -> Runnable[Any, Any]:
        # include_raw always: the raw message carries the usage, and a parse error comes back
        # as a value the call can count for the upgrade policy instead of an opaque raise.
        return model.with_structured_output(self.schema, include_raw=True, **self.kwargs)

    def split(self, result: Any) -> tuple[AIMessage | None, BaseException | None, Any]:
        raw = result.get("raw")
        error = result.get("parsing_error")
        if error is None:
            refusal = getattr(raw, "additional_kwargs", {}).get("refusal")
            if refusal:
                from comptroller.control._errors import ModelRefused

                error = ModelRefused(str(refusal))
            elif result.get("parsed") is None:
                from langchain_core.exceptions import OutputParserException

                error = OutputParserException("structured output is missing (nothing parsed)")
        if not self.include_raw:
            return raw, error, result.get("parsed")
        if error is not None and result.get("parsing_error") is None:
            result = {**result, "parsing_error": error}
        return raw, error, result


IDENTITY = Binder()


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


class _Prepared:
    """A resolved profile, compiled for the hot path: chain, keys, attributes."""

    __slots__ = (
        "attempt_attrs",
        "attempt_names",
        "budget_cap",
        "call_name",
        "chain",
        "guard_key",
        "max_output",
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
        # The resolver's profile this was compiled from: its identity tells a change.
        self.source = source
        chain = [profile.model]
        for ref in profile.fallbacks:
            if ref not in chain and (
                profile.allow_cross_provider or ref.provider == profile.model.provider
            ):
                chain.append(ref)
        self.chain: tuple[ModelRef, ...] = tuple(chain)
        self.guard_key = core.guard_key(scope) if core.guard is not None else None
        self.max_output = profile.defaults.max_tokens or core.default_max_output_tokens
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
        self.runnables: dict[tuple[int, int], Runnable[Any, Any]] = {}
        # Per model of the chain, the attempt span's constant attributes, built once.
        self.attempt_names = tuple(semconv.OPERATION_CHAT + " " + ref.model for ref in self.chain)
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
            semconv.GEN_AI_OPERATION_NAME: semconv.OPERATION_CHAT,
            semconv.GEN_AI_PROVIDER_NAME: ref.provider,
            semconv.GEN_AI_REQUEST_MODEL: ref.model,
            semconv.FALLBACK_DEPTH: depth,
            semconv.SEMCONV_VERSION: semconv.SEMCONV_PACKAGE_VERSION,
            **self.parent_attrs,
        }
        defaults = profile.defaults
        if defaults.max_tokens is not None:
            attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] = defaults.max_tokens
        if defaults.temperature is not None:
            attrs[semconv.GEN_AI_REQUEST_TEMPERATURE] = defaults.temperature
        if profile.base_url and ref.provider == profile.model.provider:
            host = profile.base_url.split("://", 1)[-1].split("/", 1)[0]
            attrs[semconv.SERVER_ADDRESS] = host.rsplit(":", 1)[0] if ":" in host else host
        return attrs


class Route:
    """A chat-model handle's scope with its compiled profile."""

    __slots__ = ("_prepared", "_upgraded", "core", "degrade_key", "scope")

    def __init__(self, core: CallCore, scope: CallScope) -> None:
        self.core = core
        self.scope = scope
        self.degrade_key = (scope.domain, scope.org, scope.purpose)
        self._prepared: _Prepared | None = None
        self._upgraded: tuple[str, ResolvedProfile, _Prepared, _Prepared] | None = None

    def prepared(self) -> _Prepared:
        """The compiled profile of this call (the stronger purpose's while upgraded)."""
        core = self.core
        scope = self.scope
        # Resolve on every call: the resolver caches (the profile service invalidates at once
        # on a write in this process), so a change is seen by the next call; the profile is
        # compiled again only when the resolver hands back a different one.
        profile = core.resolver.resolve(scope.purpose, domain=scope.domain, org=scope.org)
        prepared = self._prepared
        if prepared is None or (prepared.source is not profile and prepared.source != profile):
            prepared = _Prepared(core, scope, profile, scope.purpose, source=profile)
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
        guard: GuardLike | None,
        pricer: PricerLike,
        telemetry: Telemetry,
        circuits: CircuitBreakers,
        providers: ProviderRegistry,
        clock: Clock,
        retry: RetryPolicy,
        credentials: CredentialResolver | None = None,
        max_reservation_usd: Decimal = Decimal(1),
        default_max_output_tokens: int = 4096,
        rng: random.Random | None = None,
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
        self, scope: CallScope, base: _Prepared, purpose: str, target: ResolvedProfile
    ) -> _Prepared:
        """The profile of the stronger purpose, under the caller's limits and labels."""
        merged = replace(
            target,
            purpose=scope.purpose,
            rate_limit=base.profile.rate_limit,
            budget=base.profile.budget,
            degradation=base.profile.degradation,
        )
        return _Prepared(self, scope, merged, purpose, source=target)

    def runnable(self, run: _CallRun, at: _Attempt, binder: Binder) -> Runnable[Any, Any]:
        """The model of the attempt for this call's scope with `binder` applied (built once)."""
        fast_key = (at.depth, id(binder))
        found = run.prep.runnables.get(fast_key)
        if found is None:
            found = self._runnable(run, at.ref, binder)
            run.prep.runnables[fast_key] = found
        return found

    def _runnable(self, run: _CallRun, ref: ModelRef, binder: Binder) -> Runnable[Any, Any]:
        profile = run.prep.profile
        scope = run.route.scope
        base_url = profile.base_url if ref.provider == profile.model.provider else None
        defaults = profile.defaults
        # Credentials are per scope: the key holds the scope so that one tenant's model
        # instance (and its key) never serves another's call.
        key = (
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
                model = self.providers.build(
                    ModelSpec(
                        provider=ref.provider,
                        model=ref.model,
                        base_url=base_url,
                        api_key=api_key,
                        temperature=defaults.temperature,
                        max_tokens=defaults.max_tokens,
                        timeout_s=defaults.timeout_s,
                    )
                )
                self._models[key] = model
            runnable = binder.apply(model)
            self._bound[bound_key] = runnable
            # Hold the binder so that its id cannot be reused while the entry exists.
            self._binders[id(binder)] = binder
        return runnable


class _Attempt:
    __slots__ = (
        "attempt",
        "attrs",
        "cls",
        "depth",
        "estimated",
        "price",
        "ref",
        "reserve",
        "span_ctx",
        "start_ns",
        "started_ns",
        "started_s",
        "ticket",
        "token",
        "usage",
        "waited_s",
    )

    def __init__(self, ref: ModelRef, depth: int, attempt: int) -> None:
        self.ref = ref
        self.depth = depth
        self.attempt = attempt
        self.ticket: Any = None
        self.reserve = _ZERO
        self.waited_s = 0.0
        self.span_ctx: SpanContext = _INVALID
        self.attrs: dict[str, AttributeValue] = {}
        self.start_ns = 0
        self.started_ns = 0
        self.started_s = 0.0
        self.token: Any = None
        self.usage: Usage | None = None
        self.price: Price | None = None
        self.estimated = False
        self.cls: Classified | None = None


class Stop(Exception):
    """Internal: the chain is done; `error` is what the caller gets."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _CallRun:
    """The decisions of one logical call; the sync/async loops drive it."""

    __slots__ = (
        "binder",
        "call_ctx",
        "call_start_ns",
        "caller",
        "chain_index",
        "core",
        "errors",
        "input",
        "input_tokens",
        "outcome",
        "prep",
        "retries",
        "route",
        "tries_on_model",
        "when",
    )

    def __init__(self, route: Route, binder: Binder, input: Any) -> None:
        self.route = route
        self.core = route.core
        spool = self.core.spool
        if spool is not None and spool.full_error is not None:
            raise spool.full_error
        self.binder = binder
        self.input = input
        self.prep = route.prepared()
        self.errors: list[Exception] = []
        self.chain_index = 0
        self.tries_on_model = 0
        self.retries = 0
        self.outcome = "ok"
        self.input_tokens = -1
        self.when = 0.0
        # The call joins the caller's trace (its current span is the parent), else starts one.
        caller = trace.get_current_span().get_span_context()
        if caller.is_valid:
            self.caller: SpanContext | None = caller
            self.call_ctx = SpanContext(caller.trace_id, new_span_id(), False, caller.trace_flags)
        else:
            self.caller = None
            self.call_ctx = SpanContext(new_trace_id(), new_span_id(), False, SAMPLED)
        self.call_start_ns = time.time_ns()
        self.core.retry_budget.on_call(route.scope.domain)

    # -- choosing the next attempt -----------------------------------------------------------

    def next_attempt(self) -> _Attempt:
        """The next (model, attempt) to try; raises Stop when the chain is exhausted."""
        chain = self.prep.chain
        circuits = self.core.circuits
        while self.chain_index < len(chain):
            ref = chain[self.chain_index]
            if self.tries_on_model == 0 and not circuits.allow(ref.provider, ref.model):
                snap = circuits.snapshot(ref.provider, ref.model)
                self.errors.append(CircuitOpen(ref.provider, ref.model, snap.retry_in_s or 0.0))
                self.chain_index += 1
                continue
            self.tries_on_model += 1
            return _Attempt(ref, self.chain_index, self.tries_on_model)
        if self.errors and all(isinstance(e, CircuitOpen) for e in self.errors):
            self.outcome = "circuit_open"
            raise Stop(self.errors[0] if len(self.errors) == 1 else self._exhausted())
        self.outcome = "exhausted_fallbacks"
        raise Stop(self._exhausted())

    def _exhausted(self) -> ExhaustedFallbacks:
        models = ", ".join(str(ref) for ref in self.prep.chain)
        return ExhaustedFallbacks(
            f"every model of the chain failed for purpose {self.route.scope.purpose!r} "
            f"({models}; {len(self.errors)} errors)",
            self.errors,
        )

    def admission(self, at: _Attempt) -> dict[str, Any] | None:
        """Keyword arguments of guard.admit for this attempt, or None when nothing is guarded."""
        core = self.core
        profile = self.prep.profile
        if core.guard is None or (profile.budget is None and profile.rate_limit is None):
            return None
        if self.input_tokens < 0:
            self.input_tokens = estimate_tokens(self.input)
        self.when = core.clock.time()
        reserve: Decimal | None = _ZERO
        if profile.budget is not None:
            worst = core.pricer.worst_case(
                at.ref.provider,
                at.ref.model,
                input_tokens=self.input_tokens,
                max_output_tokens=self.prep.max_output,
                at=datetime.fromtimestamp(self.when, UTC),
            )
            # None (no price known) goes to the guard, which refuses a budgeted call with
            # BudgetUnverifiable: one code path decides, and it fails closed.
            reserve = None if worst is None else min(worst, core.max_reservation_usd)
        at.reserve = reserve or _ZERO
        return {
            "tokens": self.input_tokens + self.prep.max_output,
            "reserve_usd": reserve,
            "rate_limit": profile.rate_limit,
            "budget": profile.budget,
            "wait_s": self.route.scope.rate_limit_wait_s,
        }

    def refused(self, exc: BaseException) -> BaseException:
        """The guard refused an attempt: the call ends with that outcome."""
        if isinstance(exc, BudgetExceeded):
            self.outcome = "budget_exceeded"
            self.core.telemetry.emit(
                semconv.EVENT_BUDGET_REJECTED,
                {
                    semconv.TENANT: exc.key.tenant,
                    semconv.CONTEXT: exc.key.context,
                    semconv.PURPOSE: exc.key.purpose,
                    semconv.BUDGET_CAP_USD: str(exc.cap),
                    semconv.BUDGET_SPENT_USD: str(exc.spent),
                    semconv.BUDGET_RESERVED_USD: str(exc.reserved),
                    semconv.BUDGET_DAY: exc.day,
                },
            )
        elif isinstance(exc, BudgetUnverifiable):
            self.outcome = "budget_unverifiable"
        elif isinstance(exc, BudgetError):
            self.outcome = "budget_error"
        elif isinstance(exc, RateLimited):
            self.outcome = "rate_limited"
        elif isinstance(exc, ControlError):
            self.outcome = type(exc).__name__.lower()
        else:
            self.outcome = "error"
        return exc

    # -- one attempt -------------------------------------------------------------------------

    def start(self, at: _Attempt, ticket: Any, *, attach: bool) -> None:
        at.ticket = ticket
        at.waited_s = ticket.wait_s if ticket is not None else 0.0
        at.started_s = self.core.clock.time()
        at.started_ns = int(at.started_s * 1e9)
        at.start_ns = time.time_ns()
        ref = at.ref
        prep = self.prep
        attrs = dict(prep.attempt_attrs[at.depth])
        attrs[semconv.ATTEMPT] = at.attempt
        if at.waited_s:
            attrs[semconv.RATE_LIMIT_WAIT_MS] = at.waited_s * 1000.0
        if self.core.telemetry.record_content:
            attrs[semconv.GEN_AI_INPUT_MESSAGES] = _content_json(self.input)
        at.attrs = attrs
        call = self.call_ctx
        at.span_ctx = span_ctx = SpanContext(call.trace_id, new_span_id(), False, call.trace_flags)
        info = CallInfo(
            prep.served_purpose,
            self.route.scope.domain,
            self.route.scope.org,
            self.route.scope.context,
            ref.provider,
            ref.model,
            at.attempt,
            at.depth,
        )
        if attach:
            # The attempt's span is current during the provider call, so that HTTP
            # instrumentation the application runs nests under it.
            at.token = (
                otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span_ctx))),
                _CURRENT.set(info),
            )
        else:
            at.token = (None, _CURRENT.set(info))

    def _detach(self, at: _Attempt) -> None:
        token = at.token
        if token is None:
            return
        at.token = None
        ctx_token, info_token = token
        try:
            _CURRENT.reset(info_token)
        except ValueError:  # reset from another context (a generator resumed elsewhere)
            _CURRENT.set(None)
        if ctx_token is not None:
            otel_context.detach(ctx_token)

    def succeeded(
        self, at: _Attempt, message: Any, validation: BaseException | None
    ) -> tuple[Decimal, int] | None:
        """Record a provider answer; returns (cost, tokens) to settle, or None to release."""
        self._detach(at)
        core = self.core
        ref = at.ref
        core.circuits.record_success(ref.provider, ref.model)
        usage = usage_of(message)
        meta = getattr(message, "response_metadata", None) or {}
        response_model = meta.get("model_name") or meta.get("model") or ref.model
        attrs = at.attrs
        attrs[semconv.GEN_AI_RESPONSE_MODEL] = response_model
        response_id = meta.get("id") or getattr(message, "id", None)
        if response_id:
            attrs[semconv.GEN_AI_RESPONSE_ID] = response_id
        finish = meta.get("finish_reason")
        if finish:
            attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = (finish,)
        at.usage = usage
        if usage is not None:
            when = datetime.fromtimestamp(at.started_s, UTC)
            at.price = price = core.pricer.price(ref.provider, response_model, usage, when)
            if price.cost_usd is None and response_model != ref.model:
                at.price = core.pricer.price(ref.provider, ref.model, usage, when)
        else:
            at.price = None
        cost = self._cost(at)
        status = _OK
        if validation is not None:
            outcome = (
                "refused" if type(validation).__name__ == "ModelRefused" else "validation_error"
            )
            attrs[semconv.ERROR_TYPE] = type(validation).__name__
            status = Status(StatusCode.ERROR, str(validation)[:200])
        else:
            outcome = "ok"
        if core.telemetry.record_content:
            attrs[semconv.GEN_AI_OUTPUT_MESSAGES] = _content_json([message])
        self._emit_attempt(at, outcome, cost, response_model, status)
        core.degradation.record(
            self.route.degrade_key, self.prep.profile, failed=validation is not None
        )
        if at.ticket is None:
            return None
        tokens = (
            usage.total_tokens if usage is not None else self.input_tokens + self.prep.max_output
        )
        return (cost if cost is not None else at.reserve), tokens

    def _cost(self, at: _Attempt) -> Decimal | None:
        if at.price is not None and at.price.cost_usd is not None:
            return at.price.cost_usd
        # Usage missing or unpriced: charge the reservation (flagged estimated); without one
        # the cost is unknown and stays absent, never 0.
        at.estimated = True
        return at.reserve if at.ticket is not None and at.reserve else None

    def failed(self, at: _Attempt, exc: BaseException) -> tuple[str, tuple[Decimal, int] | None]:
        """Record a failed attempt. Returns (decision, settlement) where decision is
        `retry`, `next` (fall back), or `raise`; settlement is (cost, tokens) or None: release."""
        self._detach(at)
        core = self.core
        ref = at.ref
        cls = classify(exc)
        at.cls = cls
        cancelled = not isinstance(exc, Exception)
        if cancelled:
            outcome = "cancelled"
        elif cls.kind == "validation":
            outcome = "refused" if type(exc).__name__ == "ModelRefused" else "validation_error"
        else:
            outcome = "error"
        settlement: tuple[Decimal, int] | None = None
        cost: Decimal | None
        if cancelled:
            cost = None
            at.estimated = True
            core.circuits.release_probe(ref.provider, ref.model)
        elif cls.rejected:
            cost = _ZERO  # the provider refused the request: nothing was charged
            at.price = Price(_ZERO, "provider")
        else:
            # Timeout, broken connection, truncated stream: the provider may have billed.
            cost = self._cost(at)
            if cost is not None and at.ticket is not None:
                settlement = (cost, self.input_tokens + self.prep.max_output)
        if not cancelled:
            if cls.kind == "transport":
                core.circuits.record_failure(ref.provider, ref.model, reason=cls.error_type)
            elif cls.kind == "quota":
                core.circuits.record_failure(
                    ref.provider, ref.model, reason=cls.error_type, quota=True
                )
            elif cls.kind == "validation":
                core.circuits.record_success(ref.provider, ref.model)
            else:
                core.circuits.release_probe(ref.provider, ref.model)
        at.attrs[semconv.ERROR_TYPE] = cls.error_type if not cancelled else "cancelled"
        status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200])
        self._emit_attempt(at, outcome, cost, None, status)
        if cancelled:
            self.outcome = "cancelled"
            return "raise", None
        if cls.kind == "validation":
            core.degradation.record(self.route.degrade_key, self.prep.profile, failed=True)
            self.outcome = outcome
            return "raise", settlement
        if cls.kind == "other":
            self.outcome = "error"
            return "raise", settlement
        self.errors.append(self._provider_error(ref, exc, cls))
        if cls.kind == "transport" and self.tries_on_model <= core.retry.max_retries:
            ra = cls.retry_after_s
            if (ra is None or ra <= core.retry.max_retry_after_s) and core.retry_budget.try_retry(
                self.route.scope.domain
            ):
                return "retry", settlement
        self.chain_index += 1
        self.tries_on_model = 0
        return "next", settlement

    def backoff_s(self) -> float:
        policy = self.core.retry
        last = self.errors[-1] if self.errors else None
        n = self.tries_on_model - 1
        delay = min(policy.max_backoff_s, policy.base_s * 2.0**n)
        delay = delay / 2 + self.core.rng.random() * delay / 2
        retry_after = getattr(last, "retry_after_s", None)
        if isinstance(retry_after, int | float):
            delay = max(delay, float(retry_after))
        return delay

    def _provider_error(self, ref: ModelRef, exc: BaseException, cls: Classified) -> Exception:
        if isinstance(exc, ProviderError):
            return exc
        err = ProviderError(
            ref.provider,
            ref.model,
            f"{type(exc).__name__}: {exc}"[:500],
            status=cls.status,
            retry_after_s=cls.retry_after_s,
            retryable=cls.kind == "transport",
        )
        err.__cause__ = exc
        return err

    def _emit_attempt(
        self,
        at: _Attempt,
        outcome: str,
        cost: Decimal | None,
        response_model: str | None,
        status: Status,
    ) -> None:
        """Export the attempt's CLIENT span and its usage row."""
        telemetry = self.core.telemetry
        attrs = at.attrs
        # The usage row: the span's identity and labels plus the billing fields. Token
        # counts always present on the row (0 when reported so); on the span only as reported.
        row = dict(self.prep.row_attrs[at.depth])
        row[semconv.ATTEMPT] = at.attempt
        error_type = attrs.get(semconv.ERROR_TYPE)
        if error_type is not None:
            row[semconv.ERROR_TYPE] = error_type
        usage = at.usage
        if usage is not None:
            attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            row[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            row[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            row[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
            if usage.cache_read_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        price = at.price
        if price is not None and price.cost_usd is not None:
            source = price.source
        elif cost is not None:
            source = "reservation"
        else:
            source = "unpriced"
        attrs[semconv.PRICE_SOURCE] = row[semconv.PRICE_SOURCE] = source
        attrs[semconv.OUTCOME] = row[semconv.OUTCOME] = outcome
        if cost is not None:
            attrs[semconv.COST_USD] = float(cost)
            row[semconv.COST_USD] = str(cost)
        row[semconv.USAGE_ID] = f"{random.getrandbits(128):032x}"
        row[semconv.ESTIMATED] = at.estimated
        row[semconv.LATENCY_MS] = (self.core.clock.time() - at.started_s) * 1000.0
        if response_model is not None:
            row[semconv.GEN_AI_RESPONSE_MODEL] = response_model
        telemetry.export_record(semconv.EVENT_USAGE, row, at.started_ns, at.span_ctx)
        telemetry.export_span(
            self.prep.attempt_names[at.depth],
            SpanKind.CLIENT,
            at.span_ctx,
            self.call_ctx,
            attrs,
            at.start_ns,
            time.time_ns(),
            status,
        )

    def finish(self, error: BaseException | None) -> None:
        attrs = dict(self.prep.parent_attrs)
        attrs[semconv.OUTCOME] = self.outcome
        status = _UNSET
        if error is not None:
            attrs[semconv.ERROR_TYPE] = type(error).__name__
            status = Status(StatusCode.ERROR, str(error)[:200])
        self.core.telemetry.export_span(
            self.prep.call_name,
            SpanKind.INTERNAL,
            self.call_ctx,
            self.caller,
            attrs,
            self.call_start_ns,
            time.time_ns(),
            status,
        )


def _content_json(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps([{"role": "user", "content": value}])
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            role = getattr(item, "type", None) or "user"
            content = getattr(item, "content", item)
            out.append(
                {
                    "role": role,
                    "content": content if isinstance(content, str | list) else str(content),
                }
            )
        return json.dumps(out, default=str)
    to_messages = getattr(value, "to_messages", None)
    if to_messages is not None:
        return _content_json(to_messages())
    return json.dumps([{"role": "user", "content": str(value)}])


# --- the loops -----------------------------------------------------------------------------


def _settle(guard: GuardLike | None, ticket: Any, settlement: tuple[Decimal, int] | None) -> None:
    assert guard is not None
    if settlement is None:
        guard.release(ticket)
    else:
        guard.settle(ticket, cost_usd=settlement[0], tokens=settlement[1])


async def _asettle(
    guard: GuardLike | None, ticket: Any, settlement: tuple[Decimal, int] | None
) -> None:
    assert guard is not None
    if settlement is None:
        await guard.arelease(ticket)
    else:
        await guard.asettle(ticket, cost_usd=settlement[0], tokens=settlement[1])


def run_sync(
    route: Route,
    binder: Binder,
    input: Any,
    config: RunnableConfig | None,
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Run one guarded call synchronously (invoke)."""
    run = _CallRun(route, binder, input)
    core = run.core
    guard = core.guard
    error: BaseException | None = None
    try:
        while True:
            at = run.next_attempt()
            admit_kw = run.admission(at)
            ticket = None
            if admit_kw is not None:
                assert guard is not None
                try:
                    ticket = guard.admit(run.prep.guard_key, **admit_kw)  # type: ignore[arg-type]
                except ControlError as exc:
                    core.circuits.release_probe(at.ref.provider, at.ref.model)
                    raise Stop(run.refused(exc)) from None
            run.start(at, ticket, attach=True)
            try:
                runnable = core.runnable(run, at, binder)
                result = runnable.invoke(input, config, **(kwargs or {}))
            except BaseException as exc:
                decision, settlement = run.failed(at, exc)
                if ticket is not None:
                    _settle(guard, ticket, settlement)
                if decision == "raise":
                    if isinstance(exc, Exception) and run.outcome == "error":
                        cls = at.cls
                        if cls is not None and cls.status is not None:
                            raise Stop(run._provider_error(at.ref, exc, cls)) from None
                    raise
                if decision == "retry":
                    core.clock.sleep(run.backoff_s())
                continue
            message, validation, value = binder.split(result)
            settlement = run.succeeded(at, message, validation)
            if ticket is not None:
                _settle(guard, ticket, settlement)
            if validation is not None:
                run.outcome = (
                    "refused" if type(validation).__name__ == "ModelRefused" else "validation_error"
                )
                if not binder.returns_errors:
                    raise validation
            return value
    except Stop as stop:
        error = stop.error
        raise stop.error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        run.finish(error)


async def run_async(
    route: Route,
    binder: Binder,
    input: Any,
    config: RunnableConfig | None,
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Run one guarded call asynchronously (ainvoke)."""
    run = _CallRun(route, binder, input)
    core = run.core
    guard = core.guard
    error: BaseException | None = None
    try:
        while True:
            at = run.next_attempt()
            admit_kw = run.admission(at)
            ticket = None
            if admit_kw is not None:
                assert guard is not None
                try:
                    ticket = await guard.aadmit(run.prep.guard_key, **admit_kw)  # type: ignore[arg-type]
                except ControlError as exc:
                    core.circuits.release_probe(at.ref.provider, at.ref.model)
                    raise Stop(run.refused(exc)) from None
            run.start(at, ticket, attach=False)
            try:
                runnable = core.runnable(run, at, binder)
                result = await runnable.ainvoke(input, config, **(kwargs or {}))
            except BaseException as exc:
                decision, settlement = run.failed(at, exc)
                if ticket is not None:
                    await _asettle(guard, ticket, settlement)
                if decision == "raise":
                    if isinstance(exc, Exception) and run.outcome == "error":
                        cls = at.cls
                        if cls is not None and cls.status is not None:
                            raise Stop(run._provider_error(at.ref, exc, cls)) from None
                    raise
                if decision == "retry":
                    await core.clock.asleep(run.backoff_s())
                continue
            message, validation, value = binder.split(result)
            settlement = run.succeeded(at, message, validation)
            if ticket is not None:
                await _asettle(guard, ticket, settlement)
            if validation is not None:
                run.outcome = (
                    "refused" if type(validation).__name__ == "ModelRefused" else "validation_error"
                )
                if not binder.returns_errors:
                    raise validation
            return value
    except Stop as stop:
        error = stop.error
        raise stop.error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        run.finish(error)


class _StreamState:
    __slots__ = ("finish", "merged", "yielded")

    def __init__(self) -> None:
        self.merged: Any = None
        self.finish = False
        self.yielded = False

    def add(self, chunk: Any) -> None:
        self.merged = chunk if self.merged is None else self.merged + chunk
        meta = getattr(chunk, "response_metadata", None)
        if meta and meta.get("finish_reason"):
            self.finish = True

    def check(self, ref: ModelRef) -> Any:
        merged = self.merged
        if merged is None or not getattr(merged, "usage_metadata", None):
            raise TruncatedStream(ref.provider, ref.model, "usage (final chunk)")
        if not self.finish:
            raise TruncatedStream(ref.provider, ref.model, "finish reason")
        return merged


def stream_sync(
    route: Route,
    binder: Binder,
    input: Any,
    config: RunnableConfig | None,
    kwargs: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Run one guarded call as a stream; retries and fallbacks only before the first chunk."""
    run = _CallRun(route, binder, input)
    core = run.core
    guard = core.guard
    error: BaseException | None = None
    try:
        while True:
            at = run.next_attempt()
            admit_kw = run.admission(at)
            ticket = None
            if admit_kw is not None:
                assert guard is not None
                try:
                    ticket = guard.admit(run.prep.guard_key, **admit_kw)  # type: ignore[arg-type]
                except ControlError as exc:
                    core.circuits.release_probe(at.ref.provider, at.ref.model)
                    raise Stop(run.refused(exc)) from None
            run.start(at, ticket, attach=False)
            state = _StreamState()
            try:
                runnable = core.runnable(run, at, binder)
                for chunk in runnable.stream(input, config, **(kwargs or {})):
                    state.add(chunk)
                    state.yielded = True
                    yield chunk
                merged = state.check(at.ref)
            except BaseException as exc:
                decision, settlement = run.failed(at, exc)
                if ticket is not None:
                    _settle(guard, ticket, settlement)
                if decision == "raise" or state.yielded or isinstance(exc, GeneratorExit):
                    if run.outcome == "ok":
                        run.outcome = "error"
                    if (
                        isinstance(exc, Exception)
                        and at.cls is not None
                        and at.cls.kind in ("transport", "quota")
                    ):
                        raise Stop(run._provider_error(at.ref, exc, at.cls)) from None
                    raise
                if decision == "retry":
                    core.clock.sleep(run.backoff_s())
                continue
            settlement = run.succeeded(at, merged, None)
            if ticket is not None:
                _settle(guard, ticket, settlement)
            return
    except Stop as stop:
        error = stop.error
        raise stop.error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        run.finish(error)


async def stream_async(
    route: Route,
    binder: Binder,
    input: Any,
    config: RunnableConfig | None,
    kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[Any]:
    """Async twin of `stream_sync`."""
    run = _CallRun(route, binder, input)
    core = run.core
    guard = core.guard
    error: BaseException | None = None
    try:
        while True:
            at = run.next_attempt()
            admit_kw = run.admission(at)
            ticket = None
            if admit_kw is not None:
                assert guard is not None
                try:
                    ticket = await guard.aadmit(run.prep.guard_key, **admit_kw)  # type: ignore[arg-type]
                except ControlError as exc:
                    core.circuits.release_probe(at.ref.provider, at.ref.model)
                    raise Stop(run.refused(exc)) from None
            run.start(at, ticket, attach=False)
            state = _StreamState()
            try:
                runnable = core.runnable(run, at, binder)
                async for chunk in runnable.astream(input, config, **(kwargs or {})):
                    state.add(chunk)
                    state.yielded = True
                    yield chunk
                merged = state.check(at.ref)
            except BaseException as exc:
                decision, settlement = run.failed(at, exc)
                if ticket is not None:
                    await _asettle(guard, ticket, settlement)
                if decision == "raise" or state.yielded or isinstance(exc, GeneratorExit):
                    if run.outcome == "ok":
                        run.outcome = "error"
                    if (
                        isinstance(exc, Exception)
                        and at.cls is not None
                        and at.cls.kind in ("transport", "quota")
                    ):
                        raise Stop(run._provider_error(at.ref, exc, at.cls)) from None
                    raise
                if decision == "retry":
                    await core.clock.asleep(run.backoff_s())
                continue
            settlement = run.succeeded(at, merged, None)
            if ticket is not None:
                await _asettle(guard, ticket, settlement)
            return
    except Stop as stop:
        error = stop.error
        raise stop.error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        run.finish(error)
