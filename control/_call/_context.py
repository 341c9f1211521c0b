"""The attempt in progress, visible to code that runs inside it (fakes, instrumentation)."""

from __future__ import annotations

import contextvars
from typing import NamedTuple, Protocol


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


class Running(Protocol):
    """An attempt in progress (the call's `Attempt`)."""

    def call_info(self) -> CallInfo: ...


# The attempt itself is current, not its `CallInfo`: most calls never ask, so the info is
# made only when `current_call()` is called.
CURRENT: contextvars.ContextVar[Running | None] = contextvars.ContextVar(
    "comptroller_current_call", default=None
)


def current_call() -> CallInfo | None:
    """The guarded attempt running in this context, if any (for fakes and instrumentation)."""
    running = CURRENT.get()
    return None if running is None else running.call_info()
