"""A provider nobody answers for: attempts that never reached it, and the one error the
caller gets when every model of the chain was unreachable.

A refused connection or an unknown host is not the provider being busy (429/5xx): retrying
the same address with backoff only makes the caller wait, so the call moves on to the next
model at once (a connect timeout is retried: it may pass). When every attempt failed to
connect, `ProviderUnavailable` says in one line which model and address failed and what to
check, instead of an `ExhaustedFallbacks` group of identical connection tracebacks.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

from comptroller.control._errors import ProviderError, ProviderUnavailable

_MAX_CHAIN = 12


def _connect_errors() -> tuple[type[BaseException], ...]:
    """The HTTP clients' connect failures, of the clients that are loaded (an error of a
    client nobody imported cannot be raised, so nothing is imported for this)."""
    kinds: list[type[BaseException]] = [ConnectionRefusedError, socket.gaierror]
    for name in ("httpx", "httpcore"):
        module = sys.modules.get(name)
        if module is not None:
            kinds += (module.ConnectError, module.ConnectTimeout)
    return tuple(kinds)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < _MAX_CHAIN and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def connect_failed(exc: BaseException) -> bool:
    """True when the attempt never reached the provider: no connection could be opened."""
    kinds = _connect_errors()
    return any(isinstance(error, kinds) for error in _chain(exc))


def refused(exc: BaseException) -> bool:
    """True when nothing listens at the address or its host is unknown: knocking again will
    not help (a connect timeout may be a passing blip, and is retried like other transport
    failures)."""
    return any(isinstance(error, ConnectionRefusedError | socket.gaierror) for error in _chain(exc))


def _reason(exc: BaseException) -> str:
    # The innermost error names the cause ("[Errno 111] Connection refused"); the SDK's
    # wrappers above it only say "Connection error.".
    text = str(_chain(exc)[-1]).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def provider_unavailable(
    errors: Sequence[Exception], base_url: str | None
) -> ProviderUnavailable | None:
    """The error for a chain whose every attempt failed to connect, else None.

    Args:
        errors: Each attempt's error, in order.
        base_url: The profile's endpoint (None: the provider SDK's default).
    """
    if not errors or not all(
        isinstance(e, ProviderError) and e.status is None and connect_failed(e) for e in errors
    ):
        return None
    failed = [e for e in errors if isinstance(e, ProviderError)]
    first = failed[0]
    models = ", ".join(dict.fromkeys(f"{e.provider}:{e.model}" for e in failed))
    address = base_url
    if address is None and first.provider == "openai":
        address = os.environ.get("OPENAI_BASE_URL")  # what the OpenAI SDK falls back to
    where = f" at {address}" if address else ""
    attempts = f"{len(failed)} attempt{'s' if len(failed) != 1 else ''}"
    message = (
        f"cannot reach {models}{where} ({_reason(first)}; {attempts}, nothing billed): "
        "check that the provider's server runs and that its address is right (the "
        "profile's base_url, or OPENAI_BASE_URL for openai) and reachable from here"
    )
    return ProviderUnavailable(first.provider, first.model, message, attempts=tuple(failed))
