"""The drivers: perform a call flow's steps, sync or async, and nothing else.

Each way of calling is a few lines over `CallFlow.steps()`; a new entry point (another SDK,
another calling convention) is another such loop, never another copy of the decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from comptroller.control._call._flow import CallFlow, Flow
from comptroller.control._call._steps import Step, Stream, StreamClosed

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from comptroller.control._call._binders import Binder
    from comptroller.control._call._route import Route


class _Cursor:
    """Resumes a flow with the last step's outcome (or throws in its failure)."""

    __slots__ = ("failure", "flow", "outcome", "value")

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.outcome: Any = None
        self.failure: BaseException | None = None
        self.value: Any = None

    def next(self) -> Step | None:
        """The next step, or None once the flow is over (its value in `value`)."""
        try:
            if self.failure is None:
                return self.flow.send(self.outcome)
            # No local name holds the failure while the flow runs: a provider's original
            # error (which may hold a key) must not stay reachable from this frame through
            # the traceback of the redacted error the flow raises.
            return self.flow.throw(self._take_failure())
        except StopIteration as stop:
            self.value = stop.value
            return None
        except StreamClosed:
            return None  # the flow has settled a stream its caller closed: end quietly

    def _take_failure(self) -> BaseException:
        failure = self.failure
        assert failure is not None
        self.failure = None
        return failure

    def fail(self, exc: BaseException) -> None:
        """Throw `exc` into the flow at the next step. A stream closed by its caller goes in
        as `StreamClosed`: a GeneratorExit thrown into the flow would close it instead of
        letting it charge the attempt."""
        self.failure = StreamClosed() if isinstance(exc, GeneratorExit) else exc


def invoke(
    route: Route, binder: Binder, input: Any, config: RunnableConfig | None, kwargs: Any = None
) -> Any:
    """One guarded call, synchronously."""
    cursor = _Cursor(CallFlow(route, binder, input, config, kwargs).steps())
    while (step := cursor.next()) is not None:
        try:
            cursor.outcome = step.run()
        except BaseException as exc:
            cursor.fail(exc)
    return cursor.value


async def _renew_off_the_loop(route: Route) -> None:
    """Renew an OAuth credential that is due in a worker thread, before the flow resolves
    the route on the event loop and would wait there for the token endpoint.

    Checked cheaply on every call (`renewal_pending`); where OAuth credentials may be used,
    a route's first call goes through the thread, since nothing is known yet about the
    credentials it uses. Where they may not (the default), nothing can be renewed.
    """
    credentials = route.core.credentials
    pending = getattr(credentials, "renewal_pending", None)
    if pending is None or not getattr(credentials, "allow_oauth", False):
        return
    if route._prepared is not None and not pending():
        return
    await asyncio.to_thread(_prepare_route, route)


def _prepare_route(route: Route) -> None:
    scope = route.scope
    credentials: Any = route.core.credentials
    try:
        prep = route.prepared()
        for ref in prep.chain:
            credentials.resolve_secret(
                prep.profile, domain=scope.domain, org=scope.org, provider=ref.provider
            )
    except Exception:
        pass  # raised again, where it belongs, by the call's own resolution


async def ainvoke(
    route: Route, binder: Binder, input: Any, config: RunnableConfig | None, kwargs: Any = None
) -> Any:
    """One guarded call, asynchronously."""
    await _renew_off_the_loop(route)
    cursor = _Cursor(CallFlow(route, binder, input, config, kwargs).steps())
    while (step := cursor.next()) is not None:
        try:
            cursor.outcome = await step.arun()
        except BaseException as exc:
            cursor.fail(exc)
    return cursor.value


def stream(
    route: Route, binder: Binder, input: Any, config: RunnableConfig | None, kwargs: Any = None
) -> Iterator[Any]:
    """One guarded call as a stream of chunks; the flow learns of every way it ends (the
    caller breaking out or closing the stream included)."""
    cursor = _Cursor(CallFlow(route, binder, input, config, kwargs).steps(streaming=True))
    while (step := cursor.next()) is not None:
        try:
            if isinstance(step, Stream):
                yield from step.pump()
                cursor.outcome = None
            else:
                cursor.outcome = step.run()
        except BaseException as exc:
            cursor.fail(exc)


async def astream(
    route: Route, binder: Binder, input: Any, config: RunnableConfig | None, kwargs: Any = None
) -> AsyncIterator[Any]:
    """Async twin of `stream`."""
    await _renew_off_the_loop(route)
    cursor = _Cursor(CallFlow(route, binder, input, config, kwargs).steps(streaming=True))
    while (step := cursor.next()) is not None:
        try:
            if isinstance(step, Stream):
                pump = step.apump()
                try:
                    async for chunk in pump:
                        yield chunk
                finally:
                    await pump.aclose()
                cursor.outcome = None
            else:
                cursor.outcome = await step.arun()
        except BaseException as exc:
            cursor.fail(exc)
