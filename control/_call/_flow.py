"""The guarded call's decision sequence, written once.

`CallFlow.steps()` is a generator that never performs I/O: it yields `Step`s (admit, invoke
or stream, sleep, settle) and is resumed with their outcomes, or has their exceptions thrown
in. Records are handed to telemetry as they are decided (a queue append; their spans and usage
rows are built in the export threads). The drivers (`_drivers.py`) perform the steps sync or async; every way of calling
(`invoke`, `ainvoke`, `stream`, `astream`, batches through them) runs this same sequence::

    resolve profile (cached per scope) ─► for each model of the chain (fallbacks):
        circuit allows? ─► admit (rate limit + budget reservation, one atomic guard step)
        ─► invoke or stream the model (SDK retries off) ─► classify the outcome
        ─► price (provider-reported usage × cached price) ─► settle the ticket
        ─► record: the attempt's CLIENT span and its usage row
        transport failure: back off (exponential, jitter, Retry-After) and retry, at most
        `max_retries` times and within the tenant's retry budget; then the next model.
        quota failure (402, insufficient_quota): the circuit opens for long; next model.
        validation failure (parse error, refusal): counted for the purpose-upgrade policy
        and raised (invalid output is not fixed by another model of the same purpose).
        cancelled (the caller stopped reading, closed the stream, or was cancelled): charged
        the usage seen so far, else the reservation (estimated); outcome `cancelled`.
    record the call's span with the final outcome.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode

from comptroller import semconv
from comptroller.control._attribution import of_call
from comptroller.control._call._attempt import ZERO, Attempt, StreamAccumulator
from comptroller.control._call._binders import Binder
from comptroller.control._call._outcome import AttemptOutcomes, validation_outcome
from comptroller.control._call._record import CallRecord, content_json
from comptroller.control._call._steps import Admit, Invoke, Renew, Sleep, Step, Stream
from comptroller.control._errors import (
    BudgetError,
    BudgetExceeded,
    BudgetUnverifiable,
    CircuitOpen,
    ControlError,
    ExhaustedFallbacks,
    ProviderUnavailable,
    RateLimited,
)
from comptroller.control._profile_errors import CredentialError
from comptroller.control._providers import output_cap, provider_kwargs
from comptroller.control._telemetry import SAMPLED, new_span_id, new_trace_id
from comptroller.control._unreachable import provider_unavailable

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from comptroller.control._call._route import Route

_OK = Status(StatusCode.OK)
_NO_KWARGS: dict[str, Any] = {}

Flow = Generator[Step, Any, Any]


class _Stop(Exception):
    """Internal: the call is over; `error` is what the caller gets."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class CallFlow(AttemptOutcomes):
    """One logical call: its route, input and the decisions made along the chain."""

    __slots__ = (
        "attribution",
        "binder",
        "call_ctx",
        "call_start_ns",
        "caller",
        "config",
        "input",
        "kwargs",
        "model_override",
        "output_cap_named",
        "service_tier",
    )

    def __init__(
        self,
        route: Route,
        binder: Binder,
        input: Any,
        config: RunnableConfig | None,
        kwargs: dict[str, Any] | None,
    ) -> None:
        self.route = route
        self.core = core = route.core
        spool = core.spool
        if spool is not None and spool.full_error is not None:
            raise spool.full_error
        self.binder = binder
        self.input = input
        self.config = config
        self.kwargs = kwargs or _NO_KWARGS
        self.service_tier: str | None = None
        self.model_override: str | None = None
        self.attribution = of_call(config)
        self.prep = prep = route.prepared()
        self.max_output = prep.max_output
        self.output_cap_named = False
        if kwargs:
            # A per-call tier (flex, priority) is reserved at that tier's prices; a per-call
            # model is what the provider is asked for, so it is what is recorded and priced.
            tier = kwargs.get("service_tier")
            self.service_tier = tier if isinstance(tier, str) else None
            override = kwargs.get("model") or kwargs.get("model_name")
            self.model_override = override if isinstance(override, str) else None
            cap = output_cap(kwargs)
            if cap is not None:
                # Each model of the chain gets it under its own integration's name.
                self.output_cap_named = True
                if prep.max_output:
                    self.max_output = cap
        cap = binder.max_output_tokens
        if cap is not None and prep.max_output and not self.output_cap_named:
            # A binding's cap (pydantic-ai's setting) travels as a call's own would.
            self.kwargs = {**self.kwargs, "max_tokens": cap}
            self.output_cap_named = True
            self.max_output = cap
        self.errors: list[Exception] = []
        self.chain_index = 0
        self.tries_on_model = 0
        self.outcome = "ok"
        self.input_tokens = -1
        self.renewed = False
        # The call joins the caller's trace (its current span is the parent), else starts one.
        caller = trace.get_current_span().get_span_context()
        if caller.is_valid:
            self.caller: SpanContext | None = caller
            self.call_ctx = SpanContext(caller.trace_id, new_span_id(), False, caller.trace_flags)
        else:
            self.caller = None
            self.call_ctx = SpanContext(new_trace_id(), new_span_id(), False, SAMPLED)
        self.call_start_ns = time.time_ns()
        core.retry_budget.on_call(route.scope.domain)

    # -- the sequence --------------------------------------------------------------------------

    def steps(self, *, streaming: bool = False) -> Flow:
        """The call as steps; returns the caller's result (None for a stream)."""
        error: BaseException | None = None
        try:
            core = self.core
            while True:
                at = self._next_attempt()
                ticket = None
                admit = self._admission(at)
                if admit is not None:
                    refusal: ControlError | None = None
                    try:
                        ticket = yield admit
                    except ControlError as exc:
                        refusal = exc
                    if refusal is not None:
                        core.circuits.release_probe(at.ref.provider, at.ref.model)
                        raise _Stop(self._refused(refusal))
                self._start(at, ticket)
                runnable = core.runnable(self.route, self.prep, at.depth, self.binder)
                kwargs = self.kwargs
                if self.output_cap_named:
                    kwargs = provider_kwargs(at.ref.provider, kwargs)
                acc = StreamAccumulator() if streaming else None
                failure: BaseException | None = None
                try:
                    if acc is not None:
                        yield Stream(at, runnable, self.input, self.config, kwargs, acc)
                        message = acc.complete(at.ref)
                        validation, value = None, None
                    else:
                        result = yield Invoke(at, runnable, self.input, self.config, kwargs)
                        message, validation, value = self.binder.split(result)
                except BaseException as exc:
                    failure = exc
                if failure is not None:
                    decision, caller_error, settle = self._failed(at, failure, acc)
                    del failure  # only the redacted copy goes on
                    if settle is not None:
                        yield settle
                    if decision == "renew":
                        renewed = yield from self._renew_credential(at)
                        decision = "again" if renewed else "raise"
                    if decision == "retry":
                        yield Sleep(core.clock, self._backoff_s())
                    if decision == "raise":
                        raise _Stop(self._error_for_caller(at, caller_error))
                    continue
                settle = self._succeeded(at, message, validation)
                if settle is not None:
                    yield settle
                if validation is not None:
                    self.outcome = validation_outcome(validation)
                    if not self.binder.returns_errors:
                        raise _Stop(validation)
                return value
        except _Stop as stop:
            error = stop.error
        except GeneratorExit:
            raise  # the flow itself was abandoned: nothing may be yielded any more
        except BaseException as exc:
            error = exc
            if not isinstance(exc, Exception):
                self.outcome = "cancelled"
            elif self.outcome == "ok":
                # Failed before any attempt could decide (a credential that cannot be opened
                # or renewed, a model that cannot be built): not a success.
                self.outcome = "error"
            raise
        finally:
            self._finish(error)
        # Raised outside any handler, so that nothing it replaced (an unredacted provider
        # error) hangs on as its implicit __context__.
        raise error

    def _renew_credential(self, at: Attempt) -> Generator[Step, Any, bool]:
        """After a 401: whether the call's credential was renewed (OAuth), so that the same
        model is tried once more, on a route prepared again (its new revision builds a model
        with the new token). A renewal that fails ends the call with that error."""
        self.renewed = True
        self.outcome = "error"  # unless the retry succeeds
        scope = self.route.scope
        refresh = getattr(self.core.credentials, "refresh_after_unauthorized")  # noqa: B009
        profile = self.prep.profile
        try:
            renewed = yield Renew(
                lambda: bool(
                    refresh(profile, domain=scope.domain, org=scope.org, provider=at.ref.provider)
                )
            )
        except CredentialError as exc:
            raise _Stop(exc) from None
        if not renewed:
            return False
        self.outcome = "ok"
        self.prep = self.route.prepared()
        return True

    # -- choosing and admitting an attempt -------------------------------------------------------

    def _next_attempt(self) -> Attempt:
        """The next (model, attempt) to try; the call stops when the chain is exhausted."""
        chain = self.prep.chain
        circuits = self.core.circuits
        while self.chain_index < len(chain):
            ref = chain[self.chain_index]
            # Every attempt asks, retries too: a circuit that opened meanwhile (this call's
            # own failures may have opened it) stops the retries on its model.
            if not circuits.allow(ref.provider, ref.model):
                snap = circuits.snapshot(ref.provider, ref.model)
                self.errors.append(CircuitOpen(ref.provider, ref.model, snap.retry_in_s or 0.0))
                self.chain_index += 1
                self.tries_on_model = 0
                continue
            self.tries_on_model += 1
            model = self.model_override or ref.model
            return Attempt(ref, self.chain_index, self.tries_on_model, model, self.prep.info_prefix)
        if self.errors and all(isinstance(e, CircuitOpen) for e in self.errors):
            self.outcome = "circuit_open"
            raise _Stop(self.errors[0] if len(self.errors) == 1 else self._exhausted())
        self.outcome = "exhausted_fallbacks"
        raise _Stop(self._exhausted())

    def _exhausted(self) -> ExhaustedFallbacks | ProviderUnavailable:
        unreachable = provider_unavailable(self.errors, self.prep.profile.base_url)
        if unreachable is not None:
            return unreachable  # one line, not a group of identical connection errors
        models = ", ".join(str(ref) for ref in self.prep.chain)
        skipped = [str(ref) for ref in self.prep.profile.fallbacks if ref not in self.prep.chain]
        note = (
            f"; not tried: {', '.join(skipped)} (another provider: set allow_cross_provider "
            "on the profile, `--cross-provider`, to fall back to it)"
            if skipped
            else ""
        )
        return ExhaustedFallbacks(
            f"every model of the chain failed for purpose {self.route.scope.purpose!r} "
            f"({models}; {len(self.errors)} errors){note}",
            self.errors,
        )

    def _admission(self, at: Attempt) -> Admit | None:
        """The guard's admission of the attempt, or None when nothing is guarded."""
        core = self.core
        profile = self.prep.profile
        guard = core.guard
        if guard is None:
            return None
        linked = core.attribution_budgets.keys(self.route.scope, self.attribution)
        if profile.budget is None and profile.rate_limit is None and not linked:
            return None
        if self.input_tokens < 0:
            self.input_tokens = self.binder.input_tokens(self.input)
        reserve: Decimal | None = ZERO
        if profile.budget is not None or linked:
            worst = core.pricer.worst_case(
                at.ref.provider,
                at.model,
                input_tokens=self.input_tokens,
                max_output_tokens=self.max_output,
                at=core.clock.time(),
                service_tier=self.service_tier,
                org=self.route.scope.org,
            )
            # None (no price known) goes to the guard, which refuses a budgeted call with
            # BudgetUnverifiable: one code path decides, and it fails closed.
            reserve = None if worst is None else min(worst, core.max_reservation_usd)
        at.reserve = reserve or ZERO
        assert self.prep.guard_key is not None
        return Admit(
            guard,
            self.prep.guard_key,
            self.input_tokens + self.max_output,
            reserve,
            profile.rate_limit,
            profile.budget,
            self.route.scope.rate_limit_wait_s,
            linked,
        )

    def _refused(self, exc: ControlError) -> BaseException:
        """The guard refused an attempt: the call ends with that outcome."""
        if isinstance(exc, BudgetExceeded):
            self.outcome = "budget_exceeded"
            event: dict[str, Any] = {
                semconv.TENANT: exc.key.tenant,
                semconv.CONTEXT: exc.key.context,
                semconv.PURPOSE: exc.key.purpose,
                semconv.BUDGET_CAP_USD: str(exc.cap),
                semconv.BUDGET_SPENT_USD: str(exc.spent),
                semconv.BUDGET_RESERVED_USD: str(exc.reserved),
                semconv.BUDGET_REQUESTED_USD: str(exc.requested),
                semconv.BUDGET_DAY: exc.day,
            }
            if exc.key.attribute:
                event[semconv.BUDGET_ATTRIBUTE] = exc.key.attribute
            self.core.telemetry.emit(semconv.EVENT_BUDGET_REJECTED, event)
        elif isinstance(exc, BudgetUnverifiable):
            self.outcome = "budget_unverifiable"
        elif isinstance(exc, BudgetError):
            self.outcome = "budget_error"
        elif isinstance(exc, RateLimited):
            self.outcome = "rate_limited"
        else:
            self.outcome = type(exc).__name__.lower()
        return exc

    def _start(self, at: Attempt, ticket: Any) -> None:
        core = self.core
        at.ticket = ticket
        at.attribution = self.attribution
        at.waited_s = ticket.wait_s if ticket is not None else 0.0
        at.started_s = core.clock.time()
        at.started_ns = int(at.started_s * 1e9)
        at.start_ns = time.time_ns()
        # `at.attrs` holds what this attempt adds to its span; the span is built from the
        # profile's attributes and it in the export thread (see `AttemptRecord.span_item`).
        if core.telemetry.record_content:
            at.attrs[semconv.GEN_AI_INPUT_MESSAGES] = content_json(self.input)
        if self.output_cap_named:
            # The call's own cap, not the profile's, is what the request sends.
            at.attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] = self.max_output
        call = self.call_ctx
        at.span_ctx = span_ctx = SpanContext(call.trace_id, new_span_id(), False, call.trace_flags)
        at.otel_ctx = trace.set_span_in_context(NonRecordingSpan(span_ctx))

    def _finish(self, error: BaseException | None) -> None:
        self.core.telemetry.export_deferred_span(
            CallRecord(
                self.prep,
                self.call_ctx,
                self.caller,
                self.call_start_ns,
                self.outcome,
                error,
                self.attribution,
            )
        )
