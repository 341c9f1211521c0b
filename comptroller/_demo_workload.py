"""The demo's traffic: who calls, for what, and when in the simulated window.

Calls come in sessions: one tenant's subsystem makes a few calls at once (a request that
reasons, scores and plans an agent turn). Sessions follow a working day (quiet nights, a peak
in the afternoon) and grow from one day to the next, so that the dashboard's hourly and daily
trend columns have a shape to show. Every afternoon initech's lab scores a batch of answers
at once, more than its daily scoring budget allows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

TENANTS: tuple[tuple[str, str], ...] = (
    ("acme", "acme-eu"),
    ("acme", "acme-us"),
    ("globex", "globex-main"),
    ("initech", "initech-lab"),
)
"""(org, domain) pairs: a domain is a tenant's workspace, its org the parent scope."""
TENANT_WEIGHTS = (5, 3, 4, 2)
CONTEXTS = ("support", "platform", "worlds")
"""Calling subsystems: budgets and limits are kept per context so none starves another."""

CLAUDE_CHAIN = (
    "anthropic:claude-opus-4-7",
    "anthropic:claude-sonnet-4-6",
    "anthropic:claude-haiku-4-5",
)
GEMINI_CHAIN = ("gcp.gemini:gemini-2.5-flash", "gcp.gemini:gemini-3.1-flash-lite")
OPENAI_CHAIN = ("openai:o4-mini", "openai:gpt-4.1-mini", "openai:gpt-4.1-nano")
EMBEDDING_CHAIN = ("openai:text-embedding-3-small",)
EMBEDDING_UPGRADE = "openai:text-embedding-3-large"
"""What acme's admin moves its embeddings to late in the demo (a warning: re-embed)."""
"""One chain of each provider, strongest model first: a call falls back along its chain. The
Claude and Gemini chains are those of the seeds (`comptroller profiles import --seeds`)."""

PURPOSES: Mapping[str, tuple[tuple[str, ...], int]] = {
    "reasoning": (CLAUDE_CHAIN, 3),
    "scoring": (GEMINI_CHAIN, 5),
    "agent_turn": (CLAUDE_CHAIN[1:], 4),
    "distillation": (OPENAI_CHAIN[1:], 2),
    "code_generation": (OPENAI_CHAIN, 2),
    "embedding": (EMBEDDING_CHAIN, 2),
}
"""purpose -> (its chain: model, then fallbacks, as `provider:model`; weight in the workload).
A purpose may enter its provider's chain below the top (agent turns start at the middle)."""

PROMPTS = (
    "Summarise the customer's ticket about a failed invoice export in two sentences.",
    "Score this answer from 1 to 5 for helpfulness and explain the score briefly.",
    "Plan the next step of the agent: the user wants to rename a shared folder.",
    "Distil the key facts of this meeting transcript into bullet points.",
    "Write a Python function that deduplicates a list while keeping order.",
)

DAY_GROWTH = 0.3
"""Each simulated day carries this much more traffic than the one before."""
SESSION_CALLS = (1, 2, 3, 4, 6, 8)
"""How many calls one session makes (uniformly one of these)."""
LAB_BATCH = ("initech", "initech-lab", "worlds", "scoring", 12, 15)
"""(org, domain, context, purpose, calls, local hour): the lab's daily scoring batch."""


@dataclass(frozen=True, slots=True)
class Window:
    """The simulated stretch of time, ending now: whole days before today, and today so far."""

    start: datetime
    end: datetime
    today: datetime
    """Local midnight starting today (the budget day's start)."""

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600.0


@dataclass(frozen=True, slots=True)
class Session:
    """Calls one tenant's subsystem makes at the same moment."""

    at: float
    """Seconds since the epoch."""
    org: str
    domain: str
    context: str
    calls: tuple[tuple[str, str], ...]
    """(purpose, prompt) of each call."""


def window(now: datetime, *, days: int, timezone: str) -> Window:
    """From local midnight `days` days before today until `now`."""
    local = now.astimezone(ZoneInfo(timezone))
    today = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(start=today - timedelta(days=days), end=now, today=today)


def _hour_weight(local_hour: float, day_index: int) -> float:
    # A working day: 0.15 at night, rising to 1.0 around 14:00, times the day's growth.
    daylight = max(0.0, math.sin(math.pi * (local_hour - 6.0) / 16.0))
    return (0.15 + 0.85 * daylight * math.sqrt(daylight)) * (1.0 + DAY_GROWTH * day_index)


def plan(span: Window, *, calls: int, rng: random.Random) -> list[Session]:
    """Sessions making `calls` calls in all over the window, oldest first."""
    batches = _lab_batches(span, budget=calls // 4)
    remaining = calls - sum(len(b.calls) for b in batches)
    sizes: list[int] = []
    while remaining > 0:
        sizes.append(min(remaining, rng.choice(SESSION_CALLS)))
        remaining -= sizes[-1]
    hours: list[tuple[float, float]] = []
    weights: list[float] = []
    cursor = span.start
    while cursor < span.end:
        length = min(3600.0, (span.end - cursor).total_seconds())
        day_index = (cursor.date() - span.start.date()).days
        weights.append(_hour_weight(cursor.hour + 0.5, day_index) * length / 3600.0)
        hours.append((cursor.timestamp(), length))
        cursor += timedelta(hours=1)
    picked = rng.choices(hours, weights=weights, k=len(sizes))
    moments = sorted(start + rng.uniform(0.0, length) for start, length in picked)
    purposes = list(PURPOSES)
    purpose_weights = [weight for _, weight in PURPOSES.values()]
    sessions = list(batches)
    for moment, size in zip(moments, sizes, strict=True):
        org, domain = rng.choices(TENANTS, weights=TENANT_WEIGHTS)[0]
        sessions.append(
            Session(
                at=moment,
                org=org,
                domain=domain,
                context=rng.choice(CONTEXTS),
                calls=tuple(
                    (rng.choices(purposes, weights=purpose_weights)[0], rng.choice(PROMPTS))
                    for _ in range(size)
                ),
            )
        )
    return sorted(sessions, key=lambda session: session.at)


def _lab_batches(span: Window, *, budget: int) -> list[Session]:
    """The lab's scoring batch on each day of the window whose batch hour has come."""
    org, domain, context, purpose, size, hour = LAB_BATCH
    out: list[Session] = []
    day = span.start
    while day <= span.end and budget >= size:
        moment = day.replace(hour=hour)
        if span.start <= moment < span.end:
            out.append(
                Session(
                    at=moment.timestamp(),
                    org=org,
                    domain=domain,
                    context=context,
                    calls=((purpose, PROMPTS[1]),) * size,
                )
            )
            budget -= size
        day += timedelta(days=1)
    return out
