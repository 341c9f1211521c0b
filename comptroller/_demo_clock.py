"""Simulated time for `comptroller demo`: days of traffic in seconds, without sleeping.

The demo moves the clock forward to each session's moment (`DemoClock.advance_to`); between
two moves it runs at real speed, so that the latencies of calls stay real. A backoff sleep
moves only the sleeping call's time forward, at once (its asyncio task's own offset), so that
the other calls of its session keep their real latencies.

"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry.trace import INVALID_SPAN_CONTEXT

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from comptroller.control._telemetry import Telemetry


class DemoClock:
    """A `comptroller.control.Clock` over simulated time, which only moves forward."""

    def __init__(self, start: float) -> None:
        """Start at `start` (seconds since the epoch)."""
        self._offset = start - time.time()
        self._slept: ContextVar[float] = ContextVar("demo_clock_slept", default=0.0)
        self._lock = threading.Lock()
        self._high = 0.0

    def advance_to(self, moment: float) -> None:
        """Make it `moment` (seconds since the epoch), unless time is past it already."""
        with self._lock:
            self._offset = max(self._offset, moment - time.time())

    def time(self) -> float:
        return time.time() + self._offset + self._slept.get()

    def utcnow(self) -> datetime:
        """`time()` as an aware UTC datetime (the profile store's clock)."""
        return datetime.fromtimestamp(self.time(), UTC)

    def monotonic(self) -> float:
        # A call that slept is a few seconds ahead of the others of its session: the shared
        # monotonic clock never runs backwards for them (token buckets compare instants).
        now = self.time()
        with self._lock:
            if now > self._high:
                self._high = now
            return self._high

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._slept.set(self._slept.get() + seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __call__(self) -> float:
        return self.time()


class ClockedEvents:
    """An event emitter that stamps circuit and profile events with the demo's clock.

    The control plane's own emitter stamps events with the real time; the demo's usage rows
    carry simulated times, and an event must sit among the calls that caused it.
    """

    def __init__(self, telemetry: Telemetry, clock: DemoClock) -> None:
        self._telemetry = telemetry
        self._clock = clock

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        clean: dict[str, AttributeValue] = {
            key: value for key, value in attributes.items() if value is not None
        }
        self._telemetry.export_record(
            event_name, clean, int(self._clock.time() * 1e9), INVALID_SPAN_CONTEXT
        )
