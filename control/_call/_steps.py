"""The steps a call flow yields. Each knows how to perform itself sync (`run`) and async
(`arun`); the flow never performs I/O, the drivers never decide anything.

Invoking and streaming run with the attempt's span as the current OpenTelemetry context (and
the attempt as `current_call()`), so that instrumentation of the provider SDK or of HTTP in
the same process nests under the attempt; the context is restored before control returns to
the caller, between chunks too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

from comptroller.control._call._context import CURRENT

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable, RunnableConfig

    from comptroller.control._budget_watch import BudgetWatch
    from comptroller.control._call._attempt import Attempt, StreamAccumulator
    from comptroller.control._clock import Clock
    from comptroller.control._guard import Guard, GuardKey, Ticket
    from comptroller.control._profile_types import BudgetSpec, RateLimitSpec

_END = object()


class StreamClosed(BaseException):
    """The caller stopped reading a stream (broke out of its loop or closed it)."""


class Step:
    """One thing the flow needs done; the driver sends back what `run`/`arun` returned, or
    throws in what they raised."""

    __slots__ = ()

    def run(self) -> Any:
        raise NotImplementedError

    async def arun(self) -> Any:
        return self.run()


class Admit(Step):
    """Reserve the attempt's worst case and take its rate-limit tokens (one guard step), then
    reserve the same worst case under each budget by attribution the call counts against.

    The keys are admitted one after the other, each atomically; a refusal by any releases
    what the ones before it took, so a refused call holds nothing anywhere.
    """

    __slots__ = (
        "budget",
        "guard",
        "key",
        "linked",
        "rate_limit",
        "reserve_usd",
        "tokens",
        "wait_s",
    )

    def __init__(
        self,
        guard: Guard,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
        linked: tuple[tuple[GuardKey, BudgetSpec], ...] = (),
    ) -> None:
        self.guard = guard
        self.key = key
        self.tokens = tokens
        self.reserve_usd = reserve_usd
        self.rate_limit = rate_limit
        self.budget = budget
        self.wait_s = wait_s
        self.linked = linked

    def run(self) -> Any:
        guard = self.guard
        ticket = guard.admit(
            self.key,
            tokens=self.tokens,
            reserve_usd=self.reserve_usd,
            rate_limit=self.rate_limit,
            budget=self.budget,
            wait_s=self.wait_s,
        )
        if self.linked:
            taken: list[Ticket] = []
            try:
                for key, budget in self.linked:
                    taken.append(
                        guard.admit(
                            key, tokens=0, reserve_usd=self.reserve_usd,
                            rate_limit=None, budget=budget,
                        )
                    )  # fmt: skip
            except BaseException:
                for held in (*taken, ticket):
                    guard.release(held)
                raise
            ticket.linked = tuple(taken)
        return ticket

    async def arun(self) -> Any:
        guard = self.guard
        ticket = await guard.aadmit(
            self.key,
            tokens=self.tokens,
            reserve_usd=self.reserve_usd,
            rate_limit=self.rate_limit,
            budget=self.budget,
            wait_s=self.wait_s,
        )
        if self.linked:
            taken: list[Ticket] = []
            try:
                for key, budget in self.linked:
                    taken.append(
                        await guard.aadmit(
                            key, tokens=0, reserve_usd=self.reserve_usd,
                            rate_limit=None, budget=budget,
                        )
                    )  # fmt: skip
            except BaseException:
                for held in (*taken, ticket):
                    await guard.arelease(held)
                raise
            ticket.linked = tuple(taken)
        return ticket


class Settle(Step):
    """Charge a ticket what the attempt cost (or release it when `cost_usd` is None), then
    let the budget watch see the spend it leaves (warnings before the cap)."""

    __slots__ = ("cost_usd", "guard", "ticket", "tokens", "watch")

    def __init__(
        self,
        guard: Guard,
        ticket: Any,
        cost_usd: Decimal | None,
        tokens: int,
        watch: BudgetWatch | None = None,
    ) -> None:
        self.guard = guard
        self.ticket = ticket
        self.cost_usd = cost_usd
        self.tokens = tokens
        self.watch = watch

    def run(self) -> None:
        guard, ticket, cost = self.guard, self.ticket, self.cost_usd
        if cost is None:
            guard.release(ticket)
            for linked in ticket.linked:
                guard.release(linked)
            return
        guard.settle(ticket, cost_usd=cost, tokens=self.tokens)
        for linked in ticket.linked:
            guard.settle(linked, cost_usd=cost, tokens=None)
        if self.watch is not None:
            self._observe(self.watch)

    async def arun(self) -> None:
        guard, ticket, cost = self.guard, self.ticket, self.cost_usd
        if cost is None:
            await guard.arelease(ticket)
            for linked in ticket.linked:
                await guard.arelease(linked)
            return
        await guard.asettle(ticket, cost_usd=cost, tokens=self.tokens)
        for linked in ticket.linked:
            await guard.asettle(linked, cost_usd=cost, tokens=None)
        if self.watch is not None:
            self._observe(self.watch)

    def _observe(self, watch: BudgetWatch) -> None:
        ticket = self.ticket
        if ticket.cap_usd is not None:
            watch.observe(ticket)
        for linked in ticket.linked:
            watch.observe(linked)


class Sleep(Step):
    """Back off before a retry."""

    __slots__ = ("clock", "seconds")

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def run(self) -> None:
        self.clock.sleep(self.seconds)

    async def arun(self) -> None:
        await self.clock.asleep(self.seconds)


class Renew(Step):
    """Renew the call's credential after a 401: a round trip to a token endpoint, run in a
    worker thread when the call is async so that the event loop goes on meanwhile."""

    __slots__ = ("renew",)

    def __init__(self, renew: Callable[[], bool]) -> None:
        self.renew = renew

    def run(self) -> bool:
        return self.renew()

    async def arun(self) -> bool:
        return await asyncio.to_thread(self.renew)


def _enter(at: Attempt) -> tuple[object, object]:
    """Make the attempt the current context (plain calls: a `with` costs a µs more)."""
    return otel_context.attach(at.otel_ctx), CURRENT.set(at)


def _leave(tokens: tuple[object, object]) -> None:
    CURRENT.reset(tokens[1])  # type: ignore[arg-type]
    otel_context.detach(tokens[0])  # type: ignore[arg-type]


class _ProviderCall(Step):
    """A step that runs the provider's code for an attempt."""

    __slots__ = ("at", "config", "input", "kwargs", "runnable")

    def __init__(
        self,
        at: Attempt,
        runnable: Runnable[Any, Any],
        input: Any,
        config: RunnableConfig | None,
        kwargs: dict[str, Any],
    ) -> None:
        self.at = at
        self.runnable = runnable
        self.input = input
        self.config = config
        self.kwargs = kwargs


class Invoke(_ProviderCall):
    """Call the model once and return its result."""

    __slots__ = ()

    def run(self) -> Any:
        tokens = _enter(self.at)
        try:
            return self.runnable.invoke(self.input, self.config, **self.kwargs)
        finally:
            _leave(tokens)

    async def arun(self) -> Any:
        tokens = _enter(self.at)
        try:
            return await self.runnable.ainvoke(self.input, self.config, **self.kwargs)
        finally:
            _leave(tokens)


class Stream(_ProviderCall):
    """Stream the model's answer to the caller chunk by chunk, noting each in `acc`.

    Not run like the other steps: the streaming drivers iterate `pump`/`apump` and hand every
    chunk to the caller; the stream's outcome is in the accumulator once it ends. Closing the
    pump (the caller stopped reading) closes the provider's stream too, so its connection is
    not left open.
    """

    __slots__ = ("acc",)

    def __init__(
        self,
        at: Attempt,
        runnable: Runnable[Any, Any],
        input: Any,
        config: RunnableConfig | None,
        kwargs: dict[str, Any],
        acc: StreamAccumulator,
    ) -> None:
        # Assigned here rather than through super().__init__: one call less before the
        # first chunk.
        self.at = at
        self.runnable = runnable
        self.input = input
        self.config = config
        self.kwargs = kwargs
        self.acc = acc

    def pump(self) -> Iterator[Any]:
        at = self.at
        # The provider's code runs in the attempt's context (see `_inside`); a generator runs
        # none until it is pulled, so only another kind of iterable is entered for `iter`.
        stream = self.runnable.stream(self.input, self.config, **self.kwargs)
        source = stream if isinstance(stream, Generator) else _inside(at, iter, stream)
        add = self.acc.add
        try:
            while True:
                # `_inside(at, next, source, _END)`, written out: this runs for every chunk.
                tokens = _enter(at)
                try:
                    chunk = next(source, _END)
                finally:
                    _leave(tokens)
                if chunk is _END:
                    return
                add(chunk)
                yield chunk
        finally:
            getattr(source, "close", _nothing)()

    async def apump(self) -> AsyncGenerator[Any, None]:
        at = self.at
        stream = self.runnable.astream(self.input, self.config, **self.kwargs)
        source = stream if isinstance(stream, AsyncGenerator) else _inside(at, aiter, stream)
        try:
            while (chunk := await _ainside(at, anext(source, _END))) is not _END:
                self.acc.add(chunk)
                yield chunk
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()


def _inside(at: Attempt, fn: Any, *args: Any) -> Any:
    """`fn(*args)` with the attempt as the current context (the provider's code runs there:
    creating a stream sends the request, pulling a chunk reads the answer)."""
    tokens = _enter(at)
    try:
        return fn(*args)
    finally:
        _leave(tokens)


async def _ainside(at: Attempt, awaitable: Any) -> Any:
    tokens = _enter(at)
    try:
        return await awaitable
    finally:
        _leave(tokens)


def _nothing() -> None:
    pass
