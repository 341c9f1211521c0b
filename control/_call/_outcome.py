"""What an attempt's outcome means: its price, its settlement, retry or fall back or raise,
and the error the caller gets. `CallFlow` inherits these decisions."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from langchain_core.exceptions import OutputParserException
from opentelemetry.trace import SpanContext, Status, StatusCode
from pydantic import ValidationError

from comptroller import semconv
from comptroller._fees import reported_fees
from comptroller.control._call._attempt import ZERO, Attempt, StreamAccumulator
from comptroller.control._call._policy import backoff_s
from comptroller.control._call._record import AttemptRecord, content_json
from comptroller.control._call._steps import Settle
from comptroller.control._classify import Classified, classify
from comptroller.control._errors import ModelRefused, ProviderError
from comptroller.control._pricing import Price
from comptroller.control._profile_types import ModelRef
from comptroller.control._unreachable import refused
from comptroller.control._usage import usage_of

if TYPE_CHECKING:
    from comptroller.control._call._binders import Binder
    from comptroller.control._call._route import CallCore, Prepared, Route

_OK = Status(StatusCode.OK)
_PROVIDER_ZERO = Price(ZERO, "provider")
"""A request the provider refused: it charged nothing."""


def _leaks(core: CallCore, exc: BaseException) -> bool:
    return core.redactor.exception_leaks(exc)


def _is_langchain_error(exc: BaseException) -> bool:
    return isinstance(exc, OutputParserException | ValidationError | ModelRefused)


def validation_outcome(error: BaseException) -> str:
    return "refused" if isinstance(error, ModelRefused) else "validation_error"


class AttemptOutcomes:
    """The decisions taken on an attempt's outcome (mixed into `CallFlow`)."""

    __slots__ = (
        "chain_index",
        "core",
        "errors",
        "input_tokens",
        "max_output",
        "outcome",
        "prep",
        "renewed",
        "route",
        "tries_on_model",
    )

    core: CallCore
    binder: Binder
    call_ctx: SpanContext
    route: Route
    prep: Prepared
    errors: list[Exception]
    chain_index: int
    tries_on_model: int
    outcome: str
    input_tokens: int
    max_output: int
    renewed: bool

    def _price(self, at: Attempt, response_model: str) -> None:
        usage = at.usage
        if usage is None:
            at.price = None
            return
        pricer = self.core.pricer
        when = at.started_s
        org = self.route.scope.org  # a negotiated price may be an org's own
        at.price = price = pricer.price(at.ref.provider, response_model, usage, when, org)
        if price.cost_usd is None and response_model != at.model:
            at.price = price = pricer.price(at.ref.provider, at.model, usage, when, org)
        fees = at.fees
        if fees:
            # Fees are priced apart (reports show them separately) and added to the cost the
            # budget is charged. Fees with no known price leave the token cost standing and
            # are recorded by count (`comptroller.fees`), never as a silent 0.
            fee = pricer.price_fees(at.ref.provider, response_model, fees, when, org)
            if fee is not None and fee.cost_usd is not None:
                at.fee_cost = fee.cost_usd
                if price.cost_usd is not None:
                    at.price = Price(price.cost_usd + fee.cost_usd, price.source, price.detail)

    def _cost(self, at: Attempt) -> Decimal | None:
        if at.price is not None and at.price.cost_usd is not None:
            return at.price.cost_usd
        # Usage missing or unpriced: charge the reservation (flagged estimated); without one
        # the cost is unknown and stays absent, never 0.
        at.estimated = True
        return at.reserve if at.ticket is not None and at.reserve else None

    def _settle(self, at: Attempt, cost: Decimal | None, tokens: int | None) -> Settle | None:
        """The step that charges the attempt's ticket: its cost, else its reservation."""
        core = self.core
        guard = core.guard
        if at.ticket is None or guard is None:
            return None
        if tokens is None:
            tokens = self.input_tokens + self.max_output
        return Settle(
            guard,
            at.ticket,
            cost if cost is not None else at.reserve,
            tokens,
            core.budget_watch,
        )

    def _succeeded(
        self, at: Attempt, message: Any, validation: BaseException | None
    ) -> Settle | None:
        """Note a successful attempt: export its record, return the step that charges it."""
        core = self.core
        ref = at.ref
        core.circuits.record_success(ref.provider, ref.model)
        meta = getattr(message, "response_metadata", None) or {}
        response_model = meta.get("model_name") or meta.get("model") or at.model
        attrs = at.attrs
        response_id = meta.get("id") or getattr(message, "id", None)
        # `lc_run-…` is LangChain's own run id (what its streams carry), not the provider's.
        if response_id and not response_id.startswith("lc_"):
            attrs[semconv.GEN_AI_RESPONSE_ID] = response_id
        finish = meta.get("finish_reason")
        if finish:
            attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = (finish,)
        at.usage = usage = usage_of(message)
        fees = reported_fees(message)
        if fees:
            at.fees = fees
        binder = self.binder
        if binder.may_estimate and binder.note_result(message, attrs):
            at.estimated = True  # usage the provider did not report (an upper bound)
        self._price(at, response_model)
        cost = self._cost(at)
        status = _OK
        outcome = "ok"
        if validation is not None:
            outcome = validation_outcome(validation)
            attrs[semconv.ERROR_TYPE] = type(validation).__name__
            status = Status(StatusCode.ERROR, str(validation)[:200])
        if core.telemetry.record_content:
            attrs[semconv.GEN_AI_OUTPUT_MESSAGES] = content_json([message])
        core.degradation.record(
            self.route.degrade_key, self.prep.profile, failed=validation is not None
        )
        AttemptRecord(
            at, outcome, cost, response_model, status, (self.core, self.prep, self.call_ctx)
        ).export()
        return self._settle(at, cost, usage.total_tokens if usage is not None else None)

    def _failed(
        self, at: Attempt, exc: BaseException, acc: StreamAccumulator | None
    ) -> tuple[str, BaseException, Settle | None]:
        """Classify a failed attempt and export its record: (`retry` | `next` | `raise`, the
        error as the caller may see it, its settlement)."""
        core = self.core
        ref = at.ref
        cls = classify(exc)  # on the original: it reads the status and Retry-After
        at.cls = cls
        cancelled = not isinstance(exc, Exception)
        if not cancelled and (
            cls.kind in ("transport", "quota") or cls.status or _leaks(core, exc)
        ):
            # The boundary where provider errors enter: from here on (status, records,
            # what the caller gets) only a copy with every known key redacted travels. An
            # application's own error that holds no secret keeps its identity and traceback.
            exc = core.redactor.redact_exception(exc, provider=ref.provider, model=at.model)
        settle: Settle | None
        if cancelled:
            outcome = "cancelled"
            if acc is not None:
                # A stream was answering: the provider bills it whether or not anybody reads
                # on, so charge what it reported so far, else the reservation.
                at.usage = acc.usage_so_far()
                self._price(at, at.model)
                cost = self._cost(at)
                settle = self._settle(at, cost, None)
            else:
                # A call cancelled while waiting for its answer: nothing is known to be
                # billed; its reservation goes back.
                at.estimated = True
                cost = None
                settle = self._release(at)
            core.circuits.release_probe(ref.provider, ref.model)
            at.attrs[semconv.ERROR_TYPE] = "cancelled"
        else:
            outcome = validation_outcome(exc) if cls.kind == "validation" else "error"
            if cls.rejected:
                cost = ZERO  # the provider refused the request: nothing was charged
                at.price = _PROVIDER_ZERO
                settle = self._release(at)
            else:
                # Timeout, broken connection, truncated stream: the provider may have billed.
                cost = self._cost(at)
                settle = self._settle(at, cost, None) if cost is not None else self._release(at)
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
            at.attrs[semconv.ERROR_TYPE] = cls.error_type
        status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200])
        AttemptRecord(
            at, outcome, cost, None, status, (self.core, self.prep, self.call_ctx)
        ).export()
        return self._decide(at, exc, cls, outcome, acc), exc, settle

    def _release(self, at: Attempt) -> Settle | None:
        if at.ticket is None:
            return None
        assert self.core.guard is not None
        return Settle(self.core.guard, at.ticket, None, 0)

    def _decide(
        self,
        at: Attempt,
        exc: BaseException,
        cls: Classified,
        outcome: str,
        acc: StreamAccumulator | None,
    ) -> str:
        core = self.core
        if not isinstance(exc, Exception):
            self.outcome = "cancelled"
            return "raise"
        if cls.kind == "validation":
            core.degradation.record(self.route.degrade_key, self.prep.profile, failed=True)
            self.outcome = outcome
            return "raise"
        if (
            cls.status == 401
            and not self.renewed
            and hasattr(core.credentials, "refresh_after_unauthorized")
        ):
            return "renew"  # an OAuth token may have been revoked early: renew, try once more
        if cls.kind == "other" or (acc is not None and acc.delivered):
            # A stream that has handed out chunks cannot be retried without repeating them.
            self.outcome = "error"
            return "raise"
        self.errors.append(self._provider_error(at.ref, exc, cls))
        if (
            cls.kind == "transport"
            and self.tries_on_model <= core.retry.max_retries
            # Nothing listens there (refused, unknown host): waiting and knocking again only
            # makes the caller wait; the next model may be elsewhere.
            and not refused(exc)
        ):
            ra = cls.retry_after_s
            if (ra is None or ra <= core.retry.max_retry_after_s) and core.retry_budget.try_retry(
                self.route.scope.domain
            ):
                return "retry"
        self.chain_index += 1
        self.tries_on_model = 0
        return "next"

    def _backoff_s(self) -> float:
        last = self.errors[-1] if self.errors else None
        retry_after = getattr(last, "retry_after_s", None)
        return backoff_s(
            self.core.retry,
            self.core.rng,
            self.tries_on_model - 1,
            float(retry_after) if isinstance(retry_after, int | float) else None,
        )

    def _error_for_caller(self, at: Attempt, exc: BaseException) -> BaseException:
        """What the caller gets for an attempt that ends the call: provider failures as
        `ProviderError`; validation errors and cancellations as they are."""
        cls = at.cls
        if cls is not None and cls.kind == "validation" and not _is_langchain_error(exc):
            # An SDK's own schema failure: raised as what LangChain users catch.
            error = OutputParserException(f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error
        if (
            isinstance(exc, Exception)
            and cls is not None
            and (cls.kind in ("transport", "quota") or (cls.kind == "other" and cls.status))
        ):
            return self._provider_error(at.ref, exc, cls)
        return exc

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
