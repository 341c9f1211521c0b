"""What happens during the demo's simulated days, and the loop that plays the calls.

The story, in simulated time:

1. the platform sets its defaults; initech's admin gives its lab a tiny scoring budget, which
   it runs out of every day (calls fail closed: `budget_exceeded`); acme's admin caps its
   reasoning spend (version 1 of acme's reasoning profile);
2. from yesterday 10:00 Anthropic answers claude-opus-4-7 with 529 (overloaded): retries,
   then the circuit of claude-opus-4-7 opens and reasoning calls fall back down the Claude
   chain to claude-sonnet-4-6 (itself busy once: a 429 with a short retry-after); the
   half-open probes fail until the provider recovers, an hour after the circuit opened;
3. shortly after, acme's admin moves acme's reasoning to claude-sonnet-4-6 (version 2);
4. the provider recovers, a half-open probe succeeds and the circuit closes; half an hour
   later acme's admin rolls back to version 1 (as version 3);
5. late in the window acme's admin moves agent turns to a cheaper model (claude-haiku-4-5).

The outage's end and steps 3 and 4 follow what the circuit does, so that they happen however
the calls fall; a run too short for the circuit to open still makes every profile change, at
the end. Steps happen between sessions, at their own moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from comptroller._demo_store import (
    STORY_ORG,
    cheaper_agent_turns,
    larger_embeddings,
    move_reasoning_off,
    roll_back_reasoning,
)
from comptroller._demo_workload import CLAUDE_CHAIN

EMBEDDING_PURPOSE = "embedding"

if TYPE_CHECKING:
    from comptroller._demo_clock import DemoClock
    from comptroller._demo_workload import Session, Window
    from comptroller.control import ControlPlane
    from comptroller.control.profiles import ProfileService
    from comptroller.control.testing import FakeAnthropicServer

DEGRADED_PROVIDER, DEGRADED_MODEL = CLAUDE_CHAIN[0].split(":", 1)
"""The model whose provider has an outage (the top of the Claude chain): its circuit opens,
then closes."""
BUSY_FALLBACK = CLAUDE_CHAIN[1].split(":", 1)[1]
"""The model the degraded one falls back to: busy once when the outage starts."""
RECOVERY = timedelta(hours=1)
"""How long after its circuit opened the provider of the degraded model recovers."""
REACTION = timedelta(minutes=20)
"""How long acme's admin takes to answer the open circuit."""
ROLLBACK_AFTER = timedelta(minutes=30)
"""How long after the circuit closes acme's admin rolls back."""


@dataclass
class _Step:
    name: str
    run: Callable[[], None]
    due: float | None
    """When it happens (seconds since the epoch); None until the circuit says."""
    deadline: float
    """When it happens at the latest: the end of the window."""
    ran_at: float | None = None

    @property
    def done(self) -> bool:
        return self.ran_at is not None


class Outage:
    """The provider of `DEGRADED_MODEL` answers 529 (overloaded) from `start` until
    `RECOVERY` after the circuit opened.

    The fake server answers from a queue of scripted replies. Before each session the outage
    queues a 529 for every attempt the session can make on the model (a call retries on the
    same model, and one success would close the circuit again): every attempt of every call
    while the circuit is closed, those of the one half-open probe while it is open. So the
    provider recovers at most one probe after its time.
    """

    def __init__(self, server: FakeAnthropicServer, *, start: float, attempts: int) -> None:
        self._server = server
        self.start = start
        self._attempts = attempts
        self._started = False
        self._queued = 0
        """529s still queued, as of `_requests` requests for the model."""
        self._requests = 0

    def before(self, moment: float, *, circuit: str, opened: float | None, calls: int) -> None:
        """Queue the 503s of the session at `moment`, making `calls` calls on the model."""
        recovered = opened is not None and moment >= opened + RECOVERY.total_seconds()
        if moment < self.start or recovered or not calls:
            return
        from comptroller.control.testing import AnthropicReply

        if not self._started:
            self._started = True
            # The fallback is busy too: one 429 with a short retry-after.
            self._server.script(BUSY_FALLBACK, AnthropicReply.rate_limited(0.05))
        requests = self._server.request_count(DEGRADED_MODEL)
        # Queued replies answer the next requests, in order: those since the last look
        # took as many as there were.
        self._queued = max(0, self._queued - (requests - self._requests))
        self._requests = requests
        wanted = self._attempts * (calls if circuit == "closed" else 1)
        if self._queued < wanted:
            more = wanted - self._queued
            self._server.script(DEGRADED_MODEL, *[AnthropicReply.overloaded()] * more)
            self._queued = wanted


class Story:
    """Starts the outage and makes the profile changes as simulated time passes."""

    def __init__(
        self,
        *,
        span: Window,
        service: ProfileService,
        plane: ControlPlane,
        server: FakeAnthropicServer,
        clock: DemoClock,
    ) -> None:
        self._plane = plane
        self._clock = clock
        start, end = span.start.timestamp(), span.end.timestamp()
        outage = (span.today - timedelta(hours=14)).timestamp()  # yesterday, 10:00
        if outage <= start:
            outage = start + 0.3 * (end - start)
        self.outage = Outage(server, start=outage, attempts=plane.settings.control.max_retries + 1)
        self._opened_seen: float | None = None
        self._closed_seen: float | None = None
        self._steps = [
            _Step(
                "switch",
                lambda: move_reasoning_off(service, DEGRADED_MODEL),
                due=None,
                deadline=end,
            ),
            _Step(
                "rollback",
                lambda: roll_back_reasoning(service, DEGRADED_MODEL),
                due=None,
                deadline=end,
            ),
            _Step(
                "cheaper agent turns",
                lambda: cheaper_agent_turns(service),
                due=start + 0.8 * (end - start),
                deadline=end,
            ),
            _Step(
                "larger embeddings",
                lambda: larger_embeddings(service),
                due=start + 0.9 * (end - start),
                deadline=end,
            ),
        ]

    async def before(self, session: Session) -> None:
        """Bring the world to the moment of `session`, just before its calls."""
        moment = session.at
        state = self._plane.circuit_state(DEGRADED_PROVIDER, DEGRADED_MODEL).state
        if self._opened_seen is None and state != "closed":
            self._opened_seen = moment
            self._steps[0].due = moment + REACTION.total_seconds()
        elif self._opened_seen is not None and self._closed_seen is None and state == "closed":
            self._closed_seen = moment
            self._steps[1].due = moment + ROLLBACK_AFTER.total_seconds()
        await self._run_due(moment)
        self.outage.before(
            moment,
            circuit=state,
            opened=self._opened_seen,
            calls=self._calls_on_degraded(session),
        )

    def _calls_on_degraded(self, session: Session) -> int:
        # Reasoning runs on the degraded model, but acme's once its admin has moved it.
        if session.org == STORY_ORG and self._steps[0].done:
            return 0
        return sum(1 for purpose, _ in session.calls if purpose == "reasoning")

    async def finish(self, moment: float) -> None:
        """Make the steps still pending at the end of the window (a short run)."""
        await self._run_due(moment)

    async def _run_due(self, moment: float) -> None:
        """Make the steps due by `moment`, oldest first (time only moves forward)."""
        while True:
            ready = [(when, step) for step in self._steps if (when := self._when(step)) <= moment]
            if not ready:
                return
            when, step = min(ready, key=lambda item: item[0])
            self._clock.advance_to(when)
            await asyncio.to_thread(step.run)
            step.ran_at = when

    def _when(self, step: _Step) -> float:
        """When a pending step happens (infinity: done, or waiting for another)."""
        if step.done:
            return math.inf
        when = min(step.due or step.deadline, step.deadline)
        if step is self._steps[1]:
            # The rollback needs the switch before it.
            switched = self._steps[0].ran_at
            return math.inf if switched is None else max(when, switched)
        return when


async def play(
    plane: ControlPlane,
    sessions: list[Session],
    story: Story,
    clock: DemoClock,
    *,
    end: float,
    concurrency: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Play each session at its simulated moment, its calls at once (`concurrency` at most)."""
    slots = asyncio.Semaphore(concurrency)
    total = sum(len(session.calls) for session in sessions)
    done = 0

    async def one(session: Session, purpose: str, prompt: str) -> None:
        nonlocal done
        async with slots:
            # Refusals and failures are part of the story: their outcomes land in DuckDB.
            with contextlib.suppress(Exception):
                if purpose == EMBEDDING_PURPOSE:
                    await plane.embeddings(
                        purpose, org=session.org, domain=session.domain, context=session.context
                    ).aembed_documents([prompt])
                else:
                    model = plane.chat_model(
                        purpose, org=session.org, domain=session.domain, context=session.context
                    )
                    await model.ainvoke(prompt)
        done += 1
        if progress is not None:
            progress(done, total)

    for session in sessions:
        await story.before(session)
        clock.advance_to(session.at)
        await asyncio.gather(*(one(session, p, text) for p, text in session.calls))
    await story.finish(end)
