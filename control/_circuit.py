"""Circuit breakers per (provider, model): closed → open → half-open → closed.

- **closed**: calls pass. Transport failures count; the circuit opens after
  `consecutive_failures` failures in a row, or when the failure ratio within the current
  window reaches `failure_ratio` over at least `min_calls` calls.
- **open**: calls are refused (the guarded call skips to the next fallback) until
  `cooldown_s` has passed — `quota_cooldown_s` when a 402/quota-exhausted answer opened it.
- **half-open**: exactly one probe is admitted; success closes the circuit, failure opens it
  again for another cooldown.

Every transition emits an `llm.circuit.opened|half_opened|closed` event (an OTel log record
through the same pipeline as usage rows) with the reason and the counts. `snapshot()` serves
the state to the TUI and API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, TypeAlias

from opentelemetry.util.types import AttributeValue

from comptroller import semconv
from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._telemetry import EventEmitter

CircuitState: TypeAlias = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitPolicy:
    """When a circuit opens and for how long."""

    consecutive_failures: int = 5
    """Transport failures in a row that open the circuit."""
    failure_ratio: float = 0.5
    """Failure ratio within the window that opens the circuit (with at least `min_calls`)."""
    min_calls: int = 20
    window_s: float = 60.0
    """Length of the (tumbling) counting window."""
    cooldown_s: float = 30.0
    """Time an open circuit waits before admitting a half-open probe."""
    quota_cooldown_s: float = 3600.0
    """Cooldown after a 402 or quota-exhausted answer: the quota will not come back soon."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitSnapshot:
    """The state of one circuit, for the API and the TUI."""

    provider: str
    model: str
    state: CircuitState
    failures: int
    """Failures counted in the current window."""
    calls: int
    """Calls counted in the current window."""
    consecutive_failures: int
    reason: str | None
    """Why the circuit last opened."""
    cooldown_s: float
    retry_in_s: float | None
    """Seconds until an open circuit admits a probe (None unless open)."""


class _Circuit:
    __slots__ = (
        "calls",
        "consecutive",
        "cooldown_s",
        "failures",
        "model",
        "opened_at",
        "probe_in_flight",
        "provider",
        "reason",
        "state",
        "window_start",
    )

    def __init__(self, provider: str, model: str, now: float) -> None:
        self.provider = provider
        self.model = model
        self.state: CircuitState = "closed"
        self.calls = 0
        self.failures = 0
        self.consecutive = 0
        self.window_start = now
        self.opened_at = 0.0
        self.cooldown_s = 0.0
        self.reason: str | None = None
        self.probe_in_flight = False


def _state_of(circuit: _Circuit) -> CircuitState:
    return circuit.state


class CircuitBreakers:
    """All circuits of one control plane, keyed by (provider, model). Thread-safe."""

    def __init__(
        self,
        policy: CircuitPolicy | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        events: EventEmitter | None = None,
    ) -> None:
        self.policy = policy or CircuitPolicy()
        self._clock = clock
        self._events = events
        self._lock = threading.Lock()
        self._circuits: dict[tuple[str, str], _Circuit] = {}

    def set_event_emitter(self, events: EventEmitter | None) -> None:
        """Route transition events to `events` (the control plane's telemetry)."""
        self._events = events

    def _get(self, provider: str, model: str) -> _Circuit:
        key = (provider, model)
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits.setdefault(
                key, _Circuit(provider, model, self._clock.monotonic())
            )
        return circuit

    def allow(self, provider: str, model: str) -> bool:
        """Whether an attempt on (provider, model) may go ahead now.

        An open circuit whose cooldown has passed turns half-open and admits this one caller
        as its probe; everybody else is refused until the probe reports.
        """
        circuit = self._circuits.get((provider, model))
        if circuit is None or circuit.state == "closed":
            return True
        emit: tuple[str, dict[str, AttributeValue]] | None = None
        with self._lock:
            # Re-read under the lock: another thread may have moved the circuit meanwhile.
            state = _state_of(circuit)
            if state == "closed":
                return True
            if state == "open":
                if self._clock.monotonic() - circuit.opened_at < circuit.cooldown_s:
                    return False
                circuit.state = "half_open"
                circuit.probe_in_flight = True
                emit = (semconv.EVENT_CIRCUIT_HALF_OPENED, self._attrs(circuit, "cooldown elapsed"))
            elif circuit.probe_in_flight:
                return False
            else:
                circuit.probe_in_flight = True
        if emit is not None:
            self._emit(*emit)
        return True

    def record_success(self, provider: str, model: str) -> None:
        """Count a successful attempt (a validation failure counts as success: it answered)."""
        circuit = self._get(provider, model)
        if (
            circuit.state == "closed"
            and not circuit.consecutive
            and self._clock.monotonic() - circuit.window_start < self.policy.window_s
        ):
            # The common case needs no lock: the count only feeds a ratio, and a lost
            # increment under a race errs towards opening a failing circuit sooner.
            circuit.calls += 1
            return
        emit: tuple[str, dict[str, AttributeValue]] | None = None
        with self._lock:
            self._roll_window(circuit)
            circuit.calls += 1
            circuit.consecutive = 0
            # Only a half-open circuit closes on a success (its probe's, or one admitted before
            # it opened). An open circuit stays open: an attempt admitted before it opened
            # says nothing about the provider now.
            if circuit.state == "half_open":
                circuit.state = "closed"
                circuit.probe_in_flight = False
                emit = (semconv.EVENT_CIRCUIT_CLOSED, self._attrs(circuit, "probe succeeded"))
                circuit.calls = circuit.failures = 0
                circuit.window_start = self._clock.monotonic()
                circuit.reason = None
        if emit is not None:
            self._emit(*emit)

    def record_failure(
        self, provider: str, model: str, *, reason: str, quota: bool = False
    ) -> None:
        """Count a transport failure, or a quota failure (`quota=True`, opens at once)."""
        circuit = self._get(provider, model)
        policy = self.policy
        emit: tuple[str, dict[str, AttributeValue]] | None = None
        with self._lock:
            self._roll_window(circuit)
            circuit.calls += 1
            circuit.failures += 1
            circuit.consecutive += 1
            why: str | None = None
            if quota:
                why = f"quota exhausted ({reason})"
            elif circuit.state == "half_open":
                why = f"half-open probe failed ({reason})"
            elif circuit.state == "closed":
                if circuit.consecutive >= policy.consecutive_failures:
                    why = f"{circuit.consecutive} consecutive failures (last: {reason})"
                elif (
                    circuit.calls >= policy.min_calls
                    and circuit.failures / circuit.calls >= policy.failure_ratio
                ):
                    why = (
                        f"failure ratio {circuit.failures}/{circuit.calls} ≥ "
                        f"{policy.failure_ratio:g} in {policy.window_s:g}s (last: {reason})"
                    )
            if why is not None and (circuit.state != "open" or quota):
                circuit.state = "open"
                circuit.probe_in_flight = False
                circuit.opened_at = self._clock.monotonic()
                circuit.cooldown_s = policy.quota_cooldown_s if quota else policy.cooldown_s
                circuit.reason = why
                emit = (semconv.EVENT_CIRCUIT_OPENED, self._attrs(circuit, why))
        if emit is not None:
            self._emit(*emit)

    def release_probe(self, provider: str, model: str) -> None:
        """Give back a half-open probe slot whose attempt never reached the provider."""
        circuit = self._circuits.get((provider, model))
        if circuit is not None:
            with self._lock:
                circuit.probe_in_flight = False

    def snapshot(self, provider: str, model: str) -> CircuitSnapshot:
        """The state of one circuit (closed and empty when never used)."""
        circuit = self._circuits.get((provider, model)) or _Circuit(
            provider, model, self._clock.monotonic()
        )
        with self._lock:
            return self._snap(circuit)

    def snapshots(self) -> list[CircuitSnapshot]:
        """The state of every circuit this control plane has used, sorted by key."""
        with self._lock:
            return [self._snap(c) for _, c in sorted(self._circuits.items())]

    def _snap(self, circuit: _Circuit) -> CircuitSnapshot:
        retry_in: float | None = None
        if circuit.state == "open":
            retry_in = max(0.0, circuit.opened_at + circuit.cooldown_s - self._clock.monotonic())
        return CircuitSnapshot(
            provider=circuit.provider,
            model=circuit.model,
            state=circuit.state,
            failures=circuit.failures,
            calls=circuit.calls,
            consecutive_failures=circuit.consecutive,
            reason=circuit.reason,
            cooldown_s=circuit.cooldown_s,
            retry_in_s=retry_in,
        )

    def _roll_window(self, circuit: _Circuit) -> None:
        now = self._clock.monotonic()
        if now - circuit.window_start >= self.policy.window_s:
            circuit.window_start = now
            circuit.calls = circuit.failures = 0

    def _attrs(self, circuit: _Circuit, reason: str) -> dict[str, AttributeValue]:
        state = {"open": "opened", "half_open": "half_opened", "closed": "closed"}[circuit.state]
        return {
            semconv.GEN_AI_PROVIDER_NAME: circuit.provider,
            semconv.GEN_AI_REQUEST_MODEL: circuit.model,
            semconv.CIRCUIT_STATE: state,
            semconv.CIRCUIT_REASON: reason,
            semconv.CIRCUIT_FAILURES: circuit.failures,
            semconv.CIRCUIT_CALLS: circuit.calls,
            semconv.CIRCUIT_COOLDOWN_S: circuit.cooldown_s,
        }

    def _emit(self, event_name: str, attributes: dict[str, AttributeValue]) -> None:
        if self._events is not None:
            self._events.emit(event_name, attributes)
