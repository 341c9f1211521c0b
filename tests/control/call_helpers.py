"""Builders shared by the guarded-call tests: a control plane over test doubles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    CircuitPolicy,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    RateLimitSpec,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import FakeChatModel, FakeClock, InMemorySink


@dataclass
class Rig:
    plane: ControlPlane
    sink: InMemorySink
    clock: FakeClock
    guard: MemoryGuard
    fake: FakeChatModel

    def flush(self) -> InMemorySink:
        assert self.plane.flush()
        return self.sink


def profile(
    purpose: str = "reasoning",
    model: str = "openai:gpt-4o-mini",
    *,
    fallbacks: tuple[str, ...] = (),
    budget: str | None = None,
    rate: int | None = None,
    **extra: Any,
) -> ResolvedProfile:
    return ResolvedProfile(
        purpose=purpose,
        model=ModelRef.parse(model),
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
        budget=BudgetSpec(daily_usd=Decimal(budget)) if budget is not None else None,
        rate_limit=RateLimitSpec(requests_per_interval=rate, interval_s=60) if rate else None,
        **extra,
    )


def rig(
    fake: FakeChatModel,
    profiles: Mapping[str, ResolvedProfile] | None = None,
    *,
    circuit: CircuitPolicy | None = None,
    retry: RetryPolicy | None = None,
    record_content: bool = False,
    providers: tuple[str, ...] = ("openai", "anthropic"),
    resolver: Any = None,
) -> Rig:
    """A plane whose providers are all served by `fake` (priced as the real models)."""
    clock = FakeClock()
    sink = InMemorySink()
    guard = MemoryGuard(clock=clock)
    settings = load_settings(telemetry="none", record_content=record_content)
    plane = ControlPlane(
        settings,
        resolver=resolver or StaticProfiles(profiles or {"reasoning": profile()}),
        guard=guard,
        sink=sink,
        clock=clock,
        providers={name: fake.factory for name in providers},
        circuit_policy=circuit,
        retry_policy=retry,
    )
    return Rig(plane=plane, sink=sink, clock=clock, guard=guard, fake=fake)
