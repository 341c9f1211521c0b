"""Errors of the control plane: the outcomes of a guarded call that did not produce a result.

Catch at the level you care about::

    ComptrollerError
    └── ControlError                 anything the control plane refused or could not do
        ├── RateLimited              a token bucket of (tenant, context, purpose) is empty
        ├── BudgetError              the daily spend cap of (tenant, context, purpose)
        │   ├── BudgetExceeded       the worst-case reservation does not fit under the cap
        │   └── BudgetUnverifiable   the cap could not be checked: fail closed
        ├── GuardUnavailable         the limit state store is unreachable (no budget involved)
        ├── UnknownPrice             no price for (provider, model) in genai-prices or config
        ├── CircuitOpen              the circuit of (provider, model) is open
        ├── ProviderError            the provider answered with an error or not at all
        │   ├── ProviderUnavailable  no model of the chain could be reached at all
        │   └── TruncatedStream      a stream ended without its final chunk or usage
        ├── ModelRefused             the model refused (counts for the purpose upgrade)
        └── ExhaustedFallbacks       every model of the chain failed (an ExceptionGroup of
                                     each attempt's error)

`BudgetUnverifiable` is deliberately not a `BudgetExceeded`: the call was refused because
the budget could not be *checked* (state store down, no price for a budgeted call), not
because it was spent. Both are `BudgetError`s, so `except BudgetError` catches every call a
budget stopped.

Every error pickles with its fields (they cross process boundaries in worker pools), and
its message carries the numbers and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from comptroller.errors import ComptrollerError
from comptroller.money import usd_column

if TYPE_CHECKING:
    from comptroller.control._guard import GuardKey


class ControlError(ComptrollerError):
    """Root of the control plane's errors: the guarded call did not produce a result."""


class RateLimited(ControlError):
    """A token bucket (requests or tokens) of (tenant, context, purpose) has no room.

    Attributes:
        key: The (tenant, context, purpose) whose bucket is empty.
        retry_after_s: Seconds until the bucket holds enough for this call.
        bucket: `requests` or `tokens`: which bucket was short.
    """

    def __init__(self, key: GuardKey, retry_after_s: float, *, bucket: str = "requests") -> None:
        self.key = key
        self.retry_after_s = retry_after_s
        self.bucket = bucket
        super().__init__(
            f"rate limit of {key} reached ({bucket} bucket): room again in {retry_after_s:.3f} s; "
            "retry later, pass a larger wait_s to wait for it, or raise the profile's rate limit"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.key, self.retry_after_s), {"bucket": self.bucket}))


class BudgetError(ControlError):
    """A daily budget stopped the call (exceeded, or could not be verified)."""


class BudgetExceeded(BudgetError):
    """The worst-case reservation of a call does not fit under the daily cap.

    Attributes:
        key: The (tenant, context, purpose) whose budget is spent.
        cap: The daily cap in USD.
        spent: Settled spend of the day in USD.
        reserved: Reservations of calls in flight, in USD (not counting this one).
        requested: The worst-case reservation this call asked for, in USD.
        day: The budget day (ISO date in the configured time zone).
    """

    def __init__(
        self,
        key: GuardKey,
        cap: Decimal,
        spent: Decimal,
        reserved: Decimal,
        *,
        requested: Decimal = Decimal(0),
        day: str | None = None,
    ) -> None:
        self.key = key
        self.cap = cap
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.day = day
        left = max(cap - spent - reserved, Decimal(0))
        on_day = f" on {day}" if day else ""
        # One precision for all five: they are read against each other, and a sub-cent
        # reservation must not read as $0.00.
        cap_, spent_, reserved_, requested_, left_ = usd_column(
            [cap, spent, reserved, requested, left]
        )
        super().__init__(
            f"daily budget of {key} exceeded{on_day}: cap {cap_}, spent {spent_}, "
            f"reserved in flight {reserved_}, this call needs {requested_} (worst case) "
            f"but only {left_} is left; raise the cap in the profile, lower max_tokens, "
            "or wait for the next budget day"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                (self.key, self.cap, self.spent, self.reserved),
                {"requested": self.requested, "day": self.day},
            ),
        )


class BudgetUnverifiable(BudgetError):
    """The budget of a call could not be checked, so the call was refused (fail closed).

    Attributes:
        key: The (tenant, context, purpose) whose budget could not be checked.
        reason: Why: the state store is unreachable, no price is known for the model, ….
    """

    def __init__(self, key: GuardKey, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"budget of {key} cannot be verified ({reason}); the call was refused because "
            "budgets fail closed: fix the cause, or remove the budget from the profile"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.key, self.reason), {}))


class GuardUnavailable(ControlError):
    """The limit state store (e.g. Redis) is unreachable for a rate-limited call.

    Attributes:
        key: The (tenant, context, purpose) whose limits could not be checked.
        reason: What went wrong, without secrets.
    """

    def __init__(self, key: GuardKey, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"rate limits of {key} cannot be checked ({reason}); check the state backend "
            "(control.state_backend)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.key, self.reason), {}))


class UnknownPrice(ControlError):
    """No price is known for (provider, model): neither genai-prices nor the fallback registry.

    Attributes:
        provider: The provider as given (before alias mapping).
        model: The model id.
    """

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        super().__init__(
            f"no price known for {provider}:{model}; add it to the fallback registry "
            f'(`[control.prices."{provider}:{model}"]` with input_mtok / output_mtok in USD per '
            "million tokens) or update genai-prices"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.provider, self.model), {}))


class CircuitOpen(ControlError):
    """The circuit breaker of (provider, model) is open: calls are not sent to it.

    Attributes:
        provider: The provider of the open circuit.
        model: The model of the open circuit.
        retry_after_s: Seconds until the circuit half-opens and admits a probe.
    """

    def __init__(self, provider: str, model: str, retry_after_s: float) -> None:
        self.provider = provider
        self.model = model
        self.retry_after_s = retry_after_s
        super().__init__(
            f"circuit of {provider}:{model} is open; it half-opens in {retry_after_s:.1f} s. "
            "Configure a fallback model to keep serving meanwhile"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.provider, self.model, self.retry_after_s), {}))


class ProviderError(ControlError):
    """The provider answered with an error, timed out, or broke the connection.

    Attributes:
        provider: The provider called.
        model: The model called.
        status: The HTTP status, or None for a timeout or connection error.
        retry_after_s: The provider's `Retry-After`, if it sent one.
        retryable: Whether the same model may be retried (429, 5xx, timeouts).
    """

    def __init__(
        self,
        provider: str,
        model: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = retryable
        shown = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{provider}:{model} failed ({shown}): {message}")
        self.detail = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                (self.provider, self.model, self.detail),
                {
                    "status": self.status,
                    "retry_after_s": self.retry_after_s,
                    "retryable": self.retryable,
                },
            ),
        )


class ProviderUnavailable(ProviderError):
    """No model of the chain could be reached: every attempt failed to connect (refused,
    unknown host, connect timeout), so nothing was billed.

    Raised instead of `ExhaustedFallbacks` for that case, so that the caller reads one line
    naming the model, the address and what to check. Catch it as a `ProviderError` (or a
    `ControlError`).

    Attributes:
        attempts: Each attempt's `ProviderError`, in order.
    """

    def __init__(
        self,
        provider: str,
        model: str,
        message: str,
        *,
        attempts: Sequence[Exception] = (),
    ) -> None:
        super().__init__(provider, model, message)
        self.args = (message,)  # the message is complete: no "provider:model failed" prefix
        self.attempts = tuple(attempts)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), (self.provider, self.model, self.detail), {"attempts": self.attempts}),
        )


class ExhaustedFallbacks(ExceptionGroup[Exception], ControlError):
    """Every model of the fallback chain failed; `.exceptions` holds each attempt's error.

    Use `except* RateLimited` / `except* ProviderError` to handle the parts, or catch it whole
    as a `ControlError`.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> ExhaustedFallbacks:
        return super().__new__(cls, message, exceptions)

    def __init__(self, message: str, exceptions: Sequence[Exception]) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ExhaustedFallbacks:  # type: ignore[override]
        return ExhaustedFallbacks(self.message, excs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, list(self.exceptions)))


def _rebuild(cls: type[Exception], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Exception:
    return cls(*args, **kwargs)


# --- errors of the guarded call (call core) ---------------------------------------------------


class TruncatedStream(ProviderError):
    """A stream ended without its final chunk or its usage: an error, never a success.

    Attributes:
        provider: The provider streamed from.
        model: The model streamed from.
        missing: What the stream lacked (`usage`, `finish_reason`, …).
    """

    def __init__(self, provider: str, model: str, missing: str) -> None:
        self.missing = missing
        super().__init__(
            provider,
            model,
            f"stream ended without its {missing}; the answer may be cut off, so it counts as "
            "a failed attempt (retried, then the fallback chain)",
            retryable=True,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.provider, self.model, self.missing), {}))


class ModelRefused(ControlError):
    """The model refused to answer (a refusal instead of the requested output).

    Counts as a validation failure for the purpose-upgrade policy.

    Attributes:
        refusal: The model's refusal text.
    """

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal
        super().__init__(
            f"the model refused: {refusal!r}; rephrase the request, or configure a "
            "DegradationPolicy that upgrades the purpose after repeated refusals"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.refusal,), {}))
