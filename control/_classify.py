"""Classify what went wrong in one provider attempt, so the guarded call knows what to do.

| kind         | examples                                                     | the call          |
| ------------ | ------------------------------------------------------------ | ----------------- |
| `transport`  | 429, 5xx, 408/409, timeouts, connection errors, truncated stream | retry, then fall back; counts for the circuit |
| `quota`      | 402, 429/403 with `insufficient_quota`/billing codes          | no retry: open the circuit for a long cooldown, fall back |
| `validation` | output parse errors, refusals                                 | no retry: counts for the purpose-upgrade policy |
| `other`      | 400, 401, 404, programming errors                             | raised at once |

Classification reads the provider-agnostic LangChain `ModelError` subclasses first, then
status codes and headers of provider SDK errors (OpenAI's and Anthropic's — including
Anthropic's 529 `overloaded_error` — and anything with a `status_code`/`response`), then
httpx timeouts and connection errors and the SDKs' `APIConnectionError`/`APITimeoutError`
by type. google-genai's `APIError` (`ClientError`/`ServerError`, status in `.code`) is read
too, also when langchain-google-genai re-raised it as a LangChain `ModelError` that keeps
it only as its cause (429, 401, 403, 404, 400 lose their status and Retry-After otherwise).
"""

from __future__ import annotations

import email.utils
import math
import sys
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

ErrorKind: TypeAlias = Literal["transport", "quota", "validation", "other"]

_QUOTA_CODES: Final = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded", "billing_not_active"}
)
_TRANSPORT_STATUS: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass(frozen=True, kw_only=True, slots=True)
class Classified:
    """What an attempt's exception means to the guarded call."""

    kind: ErrorKind
    error_type: str
    """Value for `error.type`: the status code as a string, or the exception's class name."""
    status: int | None = None
    retry_after_s: float | None = None
    """The provider's Retry-After, in seconds, when it sent one."""
    rejected: bool = False
    """The provider answered with an error status, so it charged nothing for the attempt."""


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _header(exc: BaseException, name: str) -> str | None:
    response = getattr(exc, "response", None)
    headers: Any = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except Exception:
        return None
    return value if isinstance(value, str) else None


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a Retry-After value (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _retry_after(exc: BaseException) -> float | None:
    ms = _header(exc, "retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return retry_after_seconds(_header(exc, "retry-after"))


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("code", "type"):
                value = inner.get(key)
                if isinstance(value, str) and value in _QUOTA_CODES:
                    return value
            value = inner.get("code")
            if isinstance(value, str):
                return value
    return None


def _is_validation(exc: BaseException) -> bool:
    from langchain_core.exceptions import OutputParserException

    if isinstance(exc, OutputParserException):
        return True
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    from comptroller.control._errors import ModelRefused

    if isinstance(exc, ModelRefused):
        return True
    # The OpenAI SDK's own parse failures (a refusal, output cut at max_tokens, a content
    # filter): only checked when the SDK is loaded, so classifying never imports it.
    openai: Any = sys.modules.get("openai")
    if openai is None:
        return False
    kinds = tuple(
        kind
        for kind in (
            getattr(openai, "LengthFinishReasonError", None),
            getattr(openai, "ContentFilterFinishReasonError", None),
            # An answer (HTTP 200) that does not fit the requested schema.
            getattr(openai, "APIResponseValidationError", None),
        )
        if isinstance(kind, type)
    )
    return bool(kinds) and isinstance(exc, kinds)


def _is_timeout_or_connection(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    for module_name in ("httpx", "httpx2"):
        module: Any = sys.modules.get(module_name)
        if module is not None and isinstance(exc, module.TimeoutException | module.TransportError):
            return True
    # The SDKs wrap connection failures and timeouts (`APITimeoutError` is a subclass) in
    # their own `APIConnectionError`, which carries no status: only checked when loaded.
    for sdk_name in ("openai", "anthropic"):
        sdk: Any = sys.modules.get(sdk_name)
        if sdk is not None and isinstance(exc, sdk.APIConnectionError):
            return True
    from langchain_core.exceptions import ModelError

    return isinstance(exc, ModelError) and bool(getattr(exc, "is_retryable", False))


def _google_api_error(exc: BaseException) -> Any:
    """google-genai's `APIError` in `exc` or its cause, when google-genai is loaded."""
    errors: Any = sys.modules.get("google.genai.errors")
    if errors is None:
        return None
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, errors.APIError):
            return candidate
    return None


def _google_status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _google_retry_delay(exc: BaseException) -> float | None:
    """The `retryDelay` of a google.rpc.RetryInfo in a Gemini error body ("37s"): Gemini
    says when to retry there, not in a Retry-After header."""
    details: Any = getattr(exc, "details", None)
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(item.get("retryDelay") or "")
            try:
                seconds = float(delay.removesuffix("s"))
            except ValueError:
                return None
            return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def classify(exc: BaseException) -> Classified:
    """Classify an exception raised by (or instead of) a provider attempt.

    Args:
        exc: What the attempt raised. `comptroller.control.TruncatedStream` counts as transport.

    Returns:
        The kind of failure with its `error.type`, status and Retry-After.
    """
    from comptroller.control._errors import TruncatedStream

    if isinstance(exc, TruncatedStream):
        return Classified(kind="transport", error_type="truncated_stream")
    if _is_validation(exc):
        return Classified(kind="validation", error_type=type(exc).__name__)
    status = _status_of(exc)
    google_error = _google_api_error(exc)
    if google_error is not None:
        # Its `code` is the HTTP status (its `status` a gRPC name such as
        # RESOURCE_EXHAUSTED, which Gemini sends for rate limits and quotas alike); the
        # response carries the Retry-After.
        exc = google_error
        status = _status_of(exc) or _google_status(exc)
    if status is not None:
        code = _error_code(exc)
        error_type = str(status)
        if status == 402 or (status in (400, 403, 429) and code in _QUOTA_CODES):
            return Classified(kind="quota", error_type=error_type, status=status, rejected=True)
        if status in _TRANSPORT_STATUS or status >= 500:
            retry_after = _retry_after(exc)
            if retry_after is None and google_error is not None:
                retry_after = _google_retry_delay(exc)
            return Classified(
                kind="transport",
                error_type=error_type,
                status=status,
                retry_after_s=retry_after,
                rejected=True,
            )
        return Classified(kind="other", error_type=error_type, status=status, rejected=True)
    if _is_timeout_or_connection(exc):
        name = "timeout" if "timeout" in type(exc).__name__.lower() else type(exc).__name__
        return Classified(kind="transport", error_type=name)
    return Classified(kind="other", error_type=type(exc).__qualname__)
