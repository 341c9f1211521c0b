from __future__ import annotations

import threading


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it at once and records it.

    Example:
        >>> clock = FakeClock(start=1_700_000_000.0)
        >>> clock.sleep(2.5)
        >>> clock.sleeps, clock.time()
        ([2.5], 1700000002.5)
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        """Start at `start` seconds since the epoch (default 2026-01-01T00:00:00Z)."""
        self._lock = threading.Lock()
        self._wall = start
        self._mono = 1_000.0
        self.sleeps: list[float] = []
        """Every sleep asked for, in order (sync and async)."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by `seconds`."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance the clock by it, without waiting."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """Async twin of `sleep` (does not yield to the loop)."""
        self.sleep(seconds)

    def __call__(self) -> float:
        return self._wall
