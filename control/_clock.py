"""Time as a seam: the guarded call, circuits and retries read time and sleep through a `Clock`.

Tests inject `comptroller.control.testing.FakeClock`, whose `sleep` advances time at once, so
that backoff, Retry-After and cooldowns are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Wall time, monotonic time and sleeping, injectable."""

    def time(self) -> float:
        """Seconds since the epoch (wall clock: timestamps, budget days)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (durations, cooldowns, windows)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the thread for `seconds`."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the task for `seconds`."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __call__(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
