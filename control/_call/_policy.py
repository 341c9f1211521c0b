"""Retry and degradation policy: how long to back off, whether a tenant may retry, when a
purpose is upgraded after repeated validation failures."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from comptroller import semconv
from comptroller.control._clock import Clock
from comptroller.control._profile_types import ResolvedProfile
from comptroller.control._telemetry import EventEmitter


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """Backoff of transport retries on the same model."""

    max_retries: int = 3
    base_s: float = 0.5
    """First backoff; doubles with each retry."""
    max_backoff_s: float = 20.0
    max_retry_after_s: float = 60.0
    """A Retry-After longer than this is not waited for: the call moves to the next model."""
    tenant_ratio: float = 0.2
    """Per-tenant retry budget: retries allowed per first attempt, on top of `tenant_min`."""
    tenant_min: int = 10
    """Retries a tenant may always make per `tenant_window_s`."""
    tenant_window_s: float = 10.0


class RetryBudget:
    """Per-tenant retry budget (tumbling window): a tenant's retry storm cannot take the shared
    provider limits from everybody else."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        # tenant → [window start, first attempts, retries]
        self._windows: dict[str | None, list[float]] = {}

    def _window(self, tenant: str | None) -> list[float]:
        now = self._clock.monotonic()
        window = self._windows.get(tenant)
        if window is None or now - window[0] >= self._policy.tenant_window_s:
            window = [now, 0.0, 0.0]
            self._windows[tenant] = window
        return window

    def on_call(self, tenant: str | None) -> None:
        window = self._windows.get(tenant)
        if (
            window is not None
            and self._clock.monotonic() - window[0] < self._policy.tenant_window_s
        ):
            # No lock on the hot path: a lost increment under a race only makes the retry
            # allowance a little smaller.
            window[1] += 1
            return
        with self._lock:
            self._window(tenant)[1] += 1

    def try_retry(self, tenant: str | None) -> bool:
        with self._lock:
            window = self._window(tenant)
            allowed = self._policy.tenant_min + self._policy.tenant_ratio * window[1]
            if window[2] + 1 > allowed:
                return False
            window[2] += 1
            return True


class DegradationTracker:
    """Consecutive validation failures per (tenant, org, purpose) → upgrade the purpose.

    The upgrade holds while failures keep coming: it ends once no validation failure was seen
    for the policy's `window_s`.
    """

    def __init__(self, clock: Clock, telemetry: EventEmitter) -> None:
        self._clock = clock
        self._telemetry = telemetry
        self._lock = threading.Lock()
        # key → [consecutive failures, last failure (monotonic), upgraded (0/1)]
        self._state: dict[tuple[str | None, str | None, str], list[float]] = {}

    def upgraded_to(
        self, key: tuple[str | None, str | None, str], profile: ResolvedProfile
    ) -> str | None:
        policy = profile.degradation
        if policy is None or not self._state:
            return None
        state = self._state.get(key)
        if state is None or not state[2]:
            return None
        if self._clock.monotonic() - state[1] >= policy.window_s:
            with self._lock:
                state[0] = state[2] = 0
            return None
        return policy.upgrade_to

    def record(
        self, key: tuple[str | None, str | None, str], profile: ResolvedProfile, *, failed: bool
    ) -> None:
        policy = profile.degradation
        if policy is None:
            return
        if not failed:
            state = self._state.get(key)
            if state is not None and not state[2]:
                state[0] = 0
            return
        now = self._clock.monotonic()
        with self._lock:
            state = self._state.setdefault(key, [0, now, 0])
            if now - state[1] >= policy.window_s:
                state[0] = 0
            state[0] += 1
            state[1] = now
            trigger = not state[2] and state[0] >= policy.failures
            if trigger:
                state[2] = 1
        if trigger:
            self._telemetry.emit(
                semconv.EVENT_PURPOSE_UPGRADED,
                {
                    semconv.PURPOSE: key[2],
                    semconv.TENANT: key[0],
                    semconv.ORG: key[1],
                    semconv.PURPOSE_UPGRADED_TO: policy.upgrade_to,
                    semconv.REASON: (
                        f"{int(state[0])} consecutive validation failures within {policy.window_s:g}s"
                    ),
                },
            )


# --- binders: what a chat model handle applies to each concrete model ----------------------


def backoff_s(
    policy: RetryPolicy, rng: random.Random, retry: int, retry_after_s: float | None
) -> float:
    """The wait before retry number `retry` (0-based): exponential with half jitter, and never
    shorter than the provider's Retry-After."""
    delay = min(policy.max_backoff_s, policy.base_s * 2.0**retry)
    delay = delay / 2 + rng.random() * delay / 2
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay
