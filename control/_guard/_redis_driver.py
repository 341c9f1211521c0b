"""The Redis backend's two drivers: they run a flow's I/O, blocking or on the event loop.

The guard's decisions are written once, as flows (generators, like httpx's `auth_flow`):
a flow yields the commands of one round trip (a list of packed commands), a wait in seconds
(a float) or `FETCH` (read the ledger source), and gets the result back — or the exception,
thrown in, so that the flow's own `try` handles it. `_drive` does that I/O on the calling
thread, `_adrive` on the event loop; neither decides anything.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from comptroller.control._clock import Clock
from comptroller.control._guard._reconcile import ReconcileSource
from comptroller.control._guard._redis_cluster import ClusterRouter
from comptroller.control._guard._redis_io import Connections, asend, connection_kwargs, send

if TYPE_CHECKING:
    import redis
    import redis.asyncio

T = TypeVar("T")


class Fetch:
    """The flow step "read the ledger source" (its result: the budget-state rows)."""


FETCH = Fetch()
Flow = Generator["list[bytes] | float | Fetch", Any, T]


def store_errors() -> tuple[type[BaseException], ...]:
    """What a state store that cannot be used raises (the admit then fails closed)."""
    import redis

    return (redis.RedisError, OSError, RuntimeError)


class RedisDriver:
    """Connections (a lean sync pool, a redis-py async client per event loop; on a Redis
    Cluster, the `ClusterRouter`'s per-node pools) and the drivers running flows on them."""

    _url: str
    _timeout: float
    _max_connections: int
    _pool_timeout: float
    _clock: Clock
    _client: redis.Redis | None
    _aclient: redis.asyncio.Redis | None
    _conns: Connections | None
    _cluster: ClusterRouter | None
    _aloop: asyncio.AbstractEventLoop | None
    _lock: threading.Lock
    _source: ReconcileSource | None

    def _connections(self) -> Connections:
        conns = self._conns
        if conns is None:
            with self._lock:
                if self._conns is None:
                    if self._client is not None:
                        pool = self._client.connection_pool
                        cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
                    else:
                        import redis

                        parsed = redis.ConnectionPool.from_url(
                            self._url, **connection_kwargs(self._timeout)
                        )
                        cls, kwargs = parsed.connection_class, dict(parsed.connection_kwargs)
                    self._conns = Connections(
                        lambda: cls(**kwargs), self._max_connections, self._pool_timeout
                    )
                conns = self._conns
        return conns

    def _run(self, commands: list[bytes]) -> list[Any]:
        """One round trip on a pooled sync connection (a broken one is discarded)."""
        if self._cluster is not None:
            return self._cluster.run(commands)
        conns = self._connections()
        conn = conns.get()
        try:
            replies = send(conn, commands)
        except BaseException:
            conns.discard(conn)
            raise
        conns.put(conn)
        return replies

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._aclient is not None and self._aloop is not None and self._aloop is not loop:
            # Async connections belong to the loop that opened them; a guard used from a
            # new loop (asyncio.run per request, a test per loop) opens its own.
            self._aclient = None
        if self._aclient is None:
            import redis.asyncio

            self._aloop = loop
            apool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._pool_timeout,
                **connection_kwargs(self._timeout),
            )
            self._aclient = redis.asyncio.Redis.from_pool(apool)
        return self._aclient

    async def _arun(self, commands: list[bytes]) -> list[Any]:
        if self._cluster is not None:
            return await self._cluster.arun(commands)
        pool = self._async().connection_pool
        conn = await pool.get_connection()
        try:
            return await asend(conn, commands)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def _ledger_rows(self) -> Any:
        source = self._source
        if source is None:  # pragma: no cover - an unseeded reply needs a source
            raise RuntimeError("no ledger source")
        rows = source()
        return rows if isinstance(rows, Mapping) else list(rows)

    def _drive(self, flow: Flow[T]) -> T:
        """Run `flow` on this thread: round trips, the ledger read and waits block."""
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, list):
                        result: Any = self._run(step)
                    elif isinstance(step, Fetch):
                        result = self._ledger_rows()
                    else:
                        self._clock.sleep(step)
                        result = None
                except BaseException as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _adrive(self, flow: Flow[T]) -> T:
        """Run `flow` on the event loop (the ledger source, a blocking call, in a thread)."""
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, list):
                        result: Any = await self._arun(step)
                    elif isinstance(step, Fetch):
                        result = await asyncio.to_thread(self._ledger_rows)
                    else:
                        await self._clock.asleep(step)
                        result = None
                except BaseException as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
