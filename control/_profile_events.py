"""The seam through which profile changes become telemetry events, and a catalog of models.

`ProfileEventEmitter` is what the profile service calls after each activation, rollback or
warning; the guarded-call side wires it to the OTel log pipeline (so events land in
`profile_events`), tests use `InMemoryProfileEvents`. `ModelCatalog` says whether a model id
is known (the `Pricer`: genai-prices and the fallback price registry; configured extras).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.util.types import AttributeValue

from comptroller.control._provider_names import canonical_provider


class ProfileEventEmitter(Protocol):
    """Receives profile events (`comptroller.profile.*` names from `comptroller.semconv`)."""

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """Record one event; must not raise into the operator's change (it is committed)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedEvent:
    """One event as `InMemoryProfileEvents` recorded it."""

    name: str
    attributes: Mapping[str, AttributeValue]


class InMemoryProfileEvents:
    """A `ProfileEventEmitter` that keeps every event in a list (tests, the demo, the CLI).

    Args:
        forward: Also passes each event on to this emitter (the CLI records the warnings it
            prints and still sends every event down the telemetry pipeline).
    """

    def __init__(self, forward: ProfileEventEmitter | None = None) -> None:
        self._events: list[RecordedEvent] = []
        self._lock = threading.Lock()
        self._forward = forward

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """Record the event, then forward it (a forwarding error propagates, after recording)."""
        with self._lock:
            self._events.append(RecordedEvent(name=event_name, attributes=dict(attributes)))
        if self._forward is not None:
            self._forward.emit(event_name, attributes)

    @property
    def events(self) -> list[RecordedEvent]:
        """Every recorded event, oldest first."""
        with self._lock:
            return list(self._events)

    def named(self, event_name: str) -> list[RecordedEvent]:
        """The recorded events called `event_name`."""
        return [event for event in self.events if event.name == event_name]


class ModelCatalog(Protocol):
    """Knows which `provider:model` ids exist (and can be priced)."""

    def knows(self, provider: str, model: str) -> bool:
        """Whether `model` of `provider` is known."""
        ...


class ConfiguredCatalog:
    """A catalog (the `Pricer`: genai-prices + fallback price registry) plus configured ids.

    Args:
        base: What knows models with prices (default: a `Pricer` without fallback prices).
        extra: `provider:model` ids known besides (`control.known_models`).
    """

    def __init__(self, base: ModelCatalog | None = None, extra: Iterable[str] = ()) -> None:
        if base is None:
            from comptroller.control._pricing import Pricer

            base = Pricer()
        self._base = base
        # Canonical names on both sides: `google:x` configured is known as `gcp.gemini:x`.
        self._extra = frozenset(_canonical_text(text) for text in extra)

    def knows(self, provider: str, model: str) -> bool:
        """Whether the extras or the base catalog know `provider:model` (either name of
        a provider with aliases)."""
        return f"{canonical_provider(provider)}:{model}" in self._extra or self._base.knows(
            provider, model
        )

    def makes_text(self, provider: str, model: str) -> bool:
        """Whether the base catalog prices `provider:model` as a model that answers in
        tokens (`Pricer.makes_text`); False when it cannot tell."""
        makes_text = getattr(self._base, "makes_text", None)
        return bool(makes_text is not None and makes_text(provider, model, at=time.time()))


def _canonical_text(text: str) -> str:
    provider, sep, model = text.partition(":")
    return f"{canonical_provider(provider)}{sep}{model}"
