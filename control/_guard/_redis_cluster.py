"""The Redis backend on a Redis Cluster: each command goes to the node owning its slot.

Every command the guard sends is one script over the keys of ONE hash tag (one slot), so a
round trip of several commands (a flush, a re-seed) is split by node: all of them are
written first, then every reply is read (one round trip in time, whatever the number of
nodes). The slot map is redis-py's (`redis.cluster.RedisCluster`: `CLUSTER SLOTS` at start,
`NodesManager.move_slot` on MOVED, a full refresh after a connection failure, CLUSTERDOWN
or an uncovered slot); the commands themselves use the guard's lean connections, one small
pool per node.

Redirections are followed, never guessed: a script answered by MOVED, ASK or TRYAGAIN did
not run, so it is sent again (to the slot's new owner; after `ASKING` to the node importing
the slot; after a short wait), and NOSCRIPT (a node that restarted or had its scripts
flushed) loads the scripts on that node and sends the script again. A node that cannot be
reached fails only its own commands: the others' replies stand (a flush re-queues only what
that node did not acknowledge).

A cluster is named by its URL: `redis+cluster://[[user]:password@]host:port[,host:port…]`
(`rediss+cluster://` for TLS), or any `redis://`/`rediss://` URL with `?cluster=true`.
The hosts are startup nodes (one is enough; the others are discovered). A cluster has one
database: a path other than `/0` is refused.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from comptroller.control._guard._redis_io import _LOAD, Connections, _error_reply, send

if TYPE_CHECKING:
    import redis.asyncio
    import redis.cluster

_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_TRUE = {"1", "true", "yes", "on"}
_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_MAX_ROUNDS = 8
"""Redirections followed for one command before it fails closed."""
_TRYAGAIN_S = 0.01
_TRYAGAIN_MAX_S = 0.1
"""TRYAGAIN (a multi-key script on a slot whose keys are split mid-migration) is retried
after 10, 20, 40, 80, 100… ms: ~0.45 s in all before the call fails closed."""
_ASYNC_SHARED = ("username", "password", "credential_provider", "client_name", "protocol")
"""What the async connections take from a caller's `RedisCluster` (TLS: give a URL)."""
_REFRESH_EVERY_S = 1.0
"""A slot map refresh after a failure happens at most this often (a dead cluster is not
asked again on every call)."""


class ClusterURL:
    """A cluster's URL taken apart: one node's URL (the connection settings every node
    shares) and the startup nodes."""

    __slots__ = ("nodes", "template")

    def __init__(self, template: str, nodes: list[tuple[str, int]]) -> None:
        self.template = template
        """A `redis://`/`rediss://` URL of the first node, carrying the shared settings."""
        self.nodes = nodes
        """(host, port) of every startup node."""

    def node_url(self, host: str, port: int) -> str:
        """`template` pointed at another node."""
        parts = urlsplit(self.template)
        userinfo = parts.netloc.rpartition("@")[0]
        where = f"[{host}]" if ":" in host else host
        netloc = f"{userinfo}@{where}:{port}" if userinfo else f"{where}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def cluster_url(url: str) -> ClusterURL | None:
    """The cluster `url` names, or None for a single server.

    Raises:
        ConfigError: A cluster URL without a usable host list, on a Unix socket, or with a
            database other than 0.
    """
    from comptroller.errors import ConfigError

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flag = [value for name, value in query if name == "cluster"]
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None:
        if not flag or flag[-1].lower() not in _TRUE:
            return None
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(
                f"a Redis Cluster is reached over TCP: use redis+cluster://host:port[,…] "
                f"or redis://host:port?cluster=true, not {parts.scheme}://"
            )
        scheme = parts.scheme
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, port = _host_port(item)
        nodes.append((host, port))
    if not nodes:
        raise ConfigError(
            "a Redis Cluster URL needs at least one node: redis+cluster://host:port[,host:port…]"
        )
    db = parts.path.strip("/")
    if db not in ("", "0"):
        raise ConfigError(
            f"a Redis Cluster has only database 0; remove /{db} from the state backend URL"
        )
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    host, port = nodes[0]
    where = f"[{host}]" if ":" in host else host
    netloc = f"{userinfo}@{where}:{port}" if userinfo else f"{where}:{port}"
    return ClusterURL(urlunsplit((scheme, netloc, "", rest, "")), nodes)


def single_url(url: str) -> str:
    """`url` without a `cluster=…` query parameter (`cluster=false`: one server)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name == "cluster" for name, _ in query):
        return url
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))


def _host_port(item: str) -> tuple[str, int]:
    from comptroller.errors import ConfigError

    if item.startswith("["):  # [v6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":")
        if not host:
            host, port_text = item, ""
    try:
        port = int(port_text) if port_text else 6379
    except ValueError:
        raise ConfigError(
            f"Redis Cluster node {item!r}: expected host:port in the state backend URL"
        ) from None
    if not host or not 0 < port < 65536:
        raise ConfigError(
            f"Redis Cluster node {item!r}: expected host:port in the state backend URL"
        )
    return host, port


def first_key(command: bytes) -> bytes:
    """The first key of a packed `EVALSHA sha numkeys key …` (every command the guard
    routes is one)."""
    # Skip the array header and three bulk strings (EVALSHA, the digest, numkeys).
    at = command.index(b"\r\n") + 2
    for _ in range(3):
        end = command.index(b"\r\n", at)
        at = end + 2 + int(command[at + 1 : end]) + 2
    end = command.index(b"\r\n", at)
    size = int(command[at + 1 : end])
    return command[end + 2 : end + 2 + size]


class _Lib:
    """What routing uses of redis-py, imported once on first use (not when the guard is
    imported: the client library loads only when the guard first talks to Redis)."""

    def __init__(self) -> None:
        from redis import exceptions as e
        from redis.crc import key_slot

        self.key_slot = key_slot
        self.moved, self.ask, self.tryagain = e.MovedError, e.AskError, e.TryAgainError
        self.redirected = (e.AskError, e.TryAgainError, e.NoScriptError)  # MOVED is an ASK
        self.down = e.ClusterDownError
        self.exhausted = e.ClusterError
        self.connection = e.ConnectionError


_LIB: list[_Lib] = []


def _lib() -> _Lib:
    if not _LIB:
        _LIB.append(_Lib())
    return _LIB[0]


class _Refresh:
    """The routing step "refresh the slot map" (blocking: the async driver runs it in a
    thread)."""


REFRESH = _Refresh()
Batch = tuple[str, list[bytes]]
"""One node's share of a round trip: its address `host:port` and the packed commands."""
Route = Generator["list[Batch] | float | _Refresh", Any, list[Any]]


class ClusterRouter:
    """Sends the guard's round trips to a Redis Cluster, slot by slot (see the module)."""

    def __init__(
        self,
        url: ClusterURL | None,
        *,
        timeout_s: float,
        max_connections: int,
        pool_timeout_s: float,
        client: redis.cluster.RedisCluster | None = None,
    ) -> None:
        self._url = url
        self._timeout = timeout_s
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout_s
        self._topology: redis.cluster.RedisCluster | None = client
        self._own_topology = client is None
        self._stale = False
        self._refreshed = 0.0
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._template: tuple[type[Any], dict[str, Any]] | None = None
        self._pools: dict[str, Connections] = {}
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._apools: dict[str, redis.asyncio.BlockingConnectionPool] = {}
        self.followed = {"moved": 0, "ask": 0, "tryagain": 0, "noscript": 0}
        """Redirections followed and script loads, by kind (for logs and tests)."""

    # --- the slot map ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the slot map (the first time, or after a failure; at most once a second).

        Raises:
            redis.ConnectionError: No startup node answered with a full slot map.
        """
        import redis
        from redis.exceptions import RedisClusterException

        with self._refresh_lock:
            if self._topology is not None and not self._stale:
                return  # another caller refreshed it meanwhile
            if self._topology is not None and (
                time.monotonic() - self._refreshed < _REFRESH_EVERY_S
            ):
                return
            try:
                if self._topology is None:
                    assert self._url is not None
                    self._topology = self._connect(self._url)
                else:
                    self._topology.nodes_manager.initialize()
            except (RedisClusterException, redis.RedisError, OSError) as exc:
                self._refreshed = time.monotonic()
                raise redis.ConnectionError(
                    f"the Redis Cluster slot map could not be read ({type(exc).__name__}: "
                    f"{exc}); check that its nodes answer"
                ) from exc
            self._stale = False
            self._refreshed = time.monotonic()

    def _connect(self, url: ClusterURL) -> redis.cluster.RedisCluster:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            url=url.template,
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in url.nodes[1:]
            ],
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            require_full_coverage=True,
        )

    def _node_of(self, command: bytes) -> str:
        topology = self._topology
        assert topology is not None
        # redis-py's own lookup (`get_node_from_key`): the slot map is swapped whole on a
        # refresh, so a lock-free read sees the old map or the new one.
        owners = topology.nodes_manager.slots_cache.get(_lib().key_slot(first_key(command)))
        if not owners:
            import redis

            self._stale = True
            raise redis.ConnectionError(
                "Redis Cluster: the slot of this key is not covered by any node (the cluster "
                "is being resharded or lost a master); check CLUSTER INFO"
            )
        return str(owners[0].name)

    def _moved(self, error: Any, replied: str) -> None:
        topology = self._topology
        assert topology is not None
        if not error.host:  # "MOVED <slot> :<port>": the node that answered, another port
            error.host = replied.rpartition(":")[0]
            error.node_addr = (error.host, error.port)
        try:
            topology.nodes_manager.move_slot(error)
        except Exception:  # the map does not know that slot: read it all again
            self._stale = True

    # --- routing, written once for both drivers ------------------------------------------------

    def _route(self, commands: list[bytes]) -> Route:
        """Yields the per-node batches of a round trip (and the refreshes and waits it
        needs), gets their replies (a list, or the exception that broke that node's
        connection); returns one reply per command, in order, error replies as values."""
        if self._topology is None or self._stale:
            yield REFRESH
        errors = _lib()
        redirected = errors.redirected
        replies: list[Any] = [None] * len(commands)
        # (command index, the node an ASK sent it to, load the scripts first)
        todo: list[tuple[int, str | None, bool]] = [(i, None, False) for i in range(len(commands))]
        waits = 0
        for _ in range(_MAX_ROUNDS):
            by_node: dict[str, tuple[list[bytes], list[tuple[int, str | None] | None]]] = {}
            loading: set[str] = set()
            for i, ask, load in todo:
                try:
                    node = ask or self._node_of(commands[i])
                except errors.connection as exc:  # an uncovered slot: this command fails
                    replies[i] = exc
                    continue
                wire, order = by_node.setdefault(node, ([], []))
                if load and node not in loading:  # once per node, ahead of its commands
                    loading.add(node)
                    wire[:0] = _LOAD
                    order[:0] = [None] * len(_LOAD)
                if ask is not None:
                    wire.append(_ASKING)
                    order.append(None)
                wire.append(commands[i])
                order.append((i, ask))
            nodes = list(by_node)
            if not nodes:
                return replies
            results = yield [(node, by_node[node][0]) for node in nodes]
            todo = []
            wait = False
            for node, result in zip(nodes, results, strict=True):
                order = by_node[node][1]
                if isinstance(result, BaseException):
                    # That node may or may not have run them: they fail (closed); the map is
                    # read again before the next round trip (a failover moves the slots).
                    self._stale = True
                    for entry in order:
                        if entry is not None:
                            replies[entry[0]] = result
                    continue
                for entry, reply in zip(order, result, strict=True):
                    if entry is None:
                        continue  # ASKING, SCRIPT LOAD: the command's own reply tells
                    i, ask = entry
                    if not isinstance(reply, redirected):  # a reply, or an error to report
                        if isinstance(reply, errors.down):
                            self._stale = True
                        replies[i] = reply
                    elif isinstance(reply, errors.moved):
                        self._moved(reply, node)
                        todo.append((i, None, False))
                        self.followed["moved"] += 1
                    elif isinstance(reply, errors.ask):
                        host = reply.host or node.rpartition(":")[0]
                        todo.append((i, f"{host}:{reply.port}", False))
                        self.followed["ask"] += 1
                    elif isinstance(reply, errors.tryagain):
                        todo.append((i, None, False))  # a multi-key script mid-migration
                        wait = True
                        self.followed["tryagain"] += 1
                    else:  # NOSCRIPT
                        todo.append((i, ask, True))
                        self.followed["noscript"] += 1
            if not todo:
                return replies
            if wait:
                yield min(_TRYAGAIN_MAX_S, _TRYAGAIN_S * 2**waits)
                waits += 1
        for i, _, _ in todo:
            replies[i] = errors.exhausted(
                f"Redis Cluster: still redirected after {_MAX_ROUNDS} tries (slot migrating?)"
            )
        return replies

    # --- connections ----------------------------------------------------------------------

    def _connection_template(self) -> tuple[type[Any], dict[str, Any]]:
        template = self._template
        if template is None:
            if self._url is not None:
                import redis

                from comptroller.control._guard._redis_io import connection_kwargs

                parsed = redis.ConnectionPool.from_url(
                    self._url.template, **connection_kwargs(self._timeout)
                )
                cls, kwargs = parsed.connection_class, dict(parsed.connection_kwargs)
            else:  # a caller's RedisCluster: its nodes' connection settings
                assert self._topology is not None
                node = self._topology.get_nodes()[0]  # type: ignore[no-untyped-call]
                pool = self._topology.get_redis_connection(node).connection_pool
                cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
            kwargs.pop("host", None)
            kwargs.pop("port", None)
            template = self._template = (cls, kwargs)
        return template

    def _pool(self, node: str) -> Connections:
        pool = self._pools.get(node)
        if pool is None:
            with self._lock:
                pool = self._pools.get(node)
                if pool is None:
                    cls, kwargs = self._connection_template()
                    host, _, port = node.rpartition(":")
                    node_kwargs = {**kwargs, "host": host, "port": int(port)}
                    pool = self._pools[node] = Connections(
                        lambda: cls(**node_kwargs), self._max_connections, self._pool_timeout
                    )
        return pool

    def _apool(self, node: str) -> redis.asyncio.BlockingConnectionPool:
        loop = asyncio.get_running_loop()
        if self._aloop is not loop:
            # Async connections belong to the loop that opened them.
            self._aloop, self._apools = loop, {}
        pool = self._apools.get(node)
        if pool is None:
            import redis.asyncio

            from comptroller.control._guard._redis_io import connection_kwargs

            if self._url is not None:
                host, _, port = node.rpartition(":")
                url = self._url.node_url(host, int(port))
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    url,
                    max_connections=self._max_connections,
                    timeout=self._pool_timeout,
                    **connection_kwargs(self._timeout),
                )
            else:  # a caller's RedisCluster: its nodes' address and credentials
                _, kwargs = self._connection_template()
                host, _, port = node.rpartition(":")
                shared = {k: kwargs[k] for k in _ASYNC_SHARED if k in kwargs}
                pool = redis.asyncio.BlockingConnectionPool(
                    max_connections=self._max_connections,
                    timeout=self._pool_timeout,
                    host=host,
                    port=int(port),
                    **shared,
                    **connection_kwargs(self._timeout),
                )
            self._apools[node] = pool
        return pool

    # --- the drivers ----------------------------------------------------------------------

    def run(self, commands: list[bytes]) -> list[Any]:
        """One round trip on the calling thread (see `_route`)."""
        route = self._route(commands)
        step = next(route)
        try:
            while True:
                if isinstance(step, list):
                    result: Any = self._send(step)
                elif isinstance(step, _Refresh):
                    self.refresh()
                    result = None
                else:
                    time.sleep(step)
                    result = None
                step = route.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _send(self, batches: list[Batch]) -> list[Any]:
        if len(batches) == 1:  # an admit: one node
            node, wire = batches[0]
            pool = self._pool(node)
            conn = pool.get()
            try:
                one = send(conn, wire)
            except Exception as exc:
                pool.discard(conn)
                return [exc]
            except BaseException:
                pool.discard(conn)
                raise
            pool.put(conn)
            return [one]
        # Every node's commands are written first, then every reply read: one round trip.
        sent: list[tuple[Connections, Any]] = []
        results: list[Any] = []
        try:
            for node, wire in batches:
                pool = self._pool(node)
                try:
                    conn = pool.get()
                except Exception as exc:  # no connection free: nothing sent to that node
                    sent.append((pool, None))
                    results.append(exc)
                    continue
                try:
                    conn.send_packed_command(wire, check_health=False)
                except Exception as exc:
                    pool.discard(conn)
                    sent.append((pool, None))
                    results.append(exc)
                except BaseException:
                    pool.discard(conn)
                    raise
                else:
                    sent.append((pool, conn))
                    results.append(None)
            for k, ((pool, conn), (_, wire)) in enumerate(zip(sent, batches, strict=True)):
                if conn is None:
                    continue
                replies: list[Any] = []
                try:
                    for _ in wire:
                        try:
                            replies.append(conn.read_response())
                        except Exception as exc:
                            replies.append(_error_reply(exc))
                except Exception as exc:
                    pool.discard(conn)
                    results[k] = exc
                else:
                    pool.put(conn)
                    results[k] = replies
                sent[k] = (pool, None)
        except BaseException:
            for pool, conn in sent:  # written, never read: out of step
                if conn is not None:
                    pool.discard(conn)
            raise
        return results

    async def arun(self, commands: list[bytes]) -> list[Any]:
        """One round trip on the event loop (the slot map is read in a thread)."""
        route = self._route(commands)
        step = next(route)
        try:
            while True:
                if isinstance(step, list):
                    if len(step) == 1:
                        result: Any = [await self._asend(*step[0])]
                    else:
                        result = list(
                            await asyncio.gather(*(self._asend(node, w) for node, w in step))
                        )
                elif isinstance(step, _Refresh):
                    await asyncio.to_thread(self.refresh)
                    result = None
                else:
                    await asyncio.sleep(step)
                    result = None
                step = route.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _asend(self, node: str, wire: list[bytes]) -> Any:
        from comptroller.control._guard._redis_io import asend

        pool: Any = self._apool(node)
        try:
            conn = await pool.get_connection()
        except Exception as exc:
            return exc
        try:
            return await asend(conn, wire)
        except Exception as exc:
            await conn.disconnect()
            return exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        if self._topology is not None and self._own_topology:
            self._topology.close()
            self._topology = None

    async def aclose(self) -> None:
        pools, self._apools = self._apools, {}
        for pool in pools.values():
            await pool.aclose()
