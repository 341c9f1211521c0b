"""The attempt in progress, visible to code that runs inside it (fakes, instrumentation)."""

from __future__ import annotations

import contextvars
from typing import NamedTuple


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


CURRENT: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "comptroller_current_call", default=None
)


def current_call() -> CallInfo | None:
    """The guarded attempt running in this context, if any (for fakes and instrumentation)."""
    return CURRENT.get()
