"""The Redis backend's round trips: a lean connection pool, and one send-and-read step.

A round trip writes every command of one step at once (a pipeline) and reads every reply.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import urlsplit

from comptroller.control._guard._redis_wire import SCRIPTS, bulks

_LOAD = [b"*3\r\n" + bulks(b"SCRIPT", b"LOAD", script.encode()) for script in SCRIPTS]


def where(url: str) -> str:
    """The server (or a cluster's startup nodes) of `url`, for messages: never its
    credentials."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    cluster = " (cluster)" if "cluster=" in parts.query and "+" not in parts.scheme else ""
    return f"{parts.scheme}://{hosts or parts.path}{cluster}"


def connection_kwargs(timeout_s: float) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No client-side retry: a retried script may have run already, and a failed admit
    # must fail closed at once rather than after seconds of backoff.
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }


class Connections:
    """A small LIFO pool of sync connections, leaner than redis-py's for the hot path.

    The fast path is a list pop and append (atomic under the GIL); beyond `size`
    connections, callers wait up to `timeout_s` for one to come back.
    """

    def __init__(self, factory: Callable[[], Any], size: int, timeout_s: float) -> None:
        self._factory = factory
        self._size = size
        self._timeout = timeout_s
        self._idle: list[Any] = []
        self._created = 0
        self._waiting = 0
        self._cond = threading.Condition(threading.Lock())
        self._pid = os.getpid()

    def get(self) -> Any:
        if os.getpid() != self._pid:
            # A forked child must not share its parent's sockets.
            self._pid, self._idle, self._created = os.getpid(), [], 0
        try:
            return self._idle.pop()
        except IndexError:
            return self._get_slow()

    def _get_slow(self) -> Any:
        with self._cond:
            self._waiting += 1
            try:
                deadline = time.monotonic() + self._timeout
                while True:
                    if self._idle:
                        return self._idle.pop()
                    if self._created < self._size:
                        self._created += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        import redis

                        raise redis.ConnectionError(
                            f"no Redis connection free within {self._timeout}s "
                            f"({self._size} in use)"
                        )
                    self._cond.wait(left)
            finally:
                self._waiting -= 1
        try:
            return self._factory()  # connects on its first command
        except BaseException:
            self.discard(None)
            raise

    def put(self, conn: Any) -> None:
        self._idle.append(conn)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def discard(self, conn: Any) -> None:
        if conn is not None:
            conn.disconnect()
        with self._cond:
            self._created -= 1
            self._cond.notify()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()
        with self._cond:
            self._created -= len(idle)


def exchange(commands: list[bytes]) -> Generator[list[bytes], list[Any], list[Any]]:
    """One step's round trip as a flow: yields the commands to send, gets their replies
    (error replies as exception values), returns the replies or raises the first error.

    A server that lost its scripts answers NOSCRIPT having run nothing: the scripts are
    loaded and exactly those commands sent again (two more round trips, once per restart).
    """
    replies = yield commands
    for reply in replies:
        if isinstance(reply, Exception):
            return (yield from recover(commands, replies))
    return replies


def recover(
    commands: list[bytes], replies: list[Any]
) -> Generator[list[bytes], list[Any], list[Any]]:
    import redis

    missing = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        yield _LOAD
        again = yield [commands[i] for i in missing]
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _error_reply(exc: Exception) -> Exception:
    """`exc` if it is an error reply (kept as a value), else raised: the connection broke."""
    import redis

    if isinstance(exc, redis.exceptions.ResponseError):
        return exc
    raise exc


# The thin drivers' one primitive, sync and async: write the commands at once, read every
# reply (an error reply is returned as its exception, so the connection stays in step).


def send(conn: Any, commands: list[bytes]) -> list[Any]:
    conn.send_packed_command(commands, check_health=False)
    if len(commands) == 1:  # an admit: the hot path
        try:
            return [conn.read_response()]
        except Exception as exc:
            return [_error_reply(exc)]
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except Exception as exc:
            replies.append(_error_reply(exc))
    return replies


async def asend(conn: Any, commands: list[bytes]) -> list[Any]:
    await conn.send_packed_command(commands, check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except Exception as exc:
            replies.append(_error_reply(exc))
    return replies
