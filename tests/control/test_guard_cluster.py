"""The Redis guard on a real Redis Cluster: three masters started from `redis-server` in a
temporary directory for this module, torn down after it.

Every admission runs one script in one slot; a flush or a re-seed is split by node; MOVED,
ASK, TRYAGAIN and NOSCRIPT are followed; a node that lost its state (FLUSHALL, a restart
without persistence) is re-seeded from the ledger before anything is admitted. The ledger
is a real DuckDB ledger read through the analytics rollups (what the embedded sink serves).

Without `redis-server` on PATH the module is skipped (under CI, `CI=true`, it fails).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from redis.crc import key_slot
from usage_db import fill, usage_row

from comptroller.analytics import DuckDBReader, budget_state, connect
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    GuardKey,
    RateLimitSpec,
    RedisGuard,
)
from comptroller.control._guard import Ticket, make_guard
from comptroller.control._guard._redis_cluster import cluster_url, first_key
from comptroller.control._guard._redis_io import where
from comptroller.control._guard._redis_wire import tag_of
from comptroller.control.testing import FakeClock
from comptroller.errors import ConfigError

CAP = BudgetSpec(daily_usd=Decimal("1.00"))
LIMIT = RateLimitSpec(requests_per_interval=10_000, tokens_per_interval=10_000_000)
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DAY = "2026-11-21"


# --- a real three-master cluster ------------------------------------------------------------


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        reason = (
            "redis-server and redis-cli are not on PATH: install Redis (e.g. apt-get install "
            "redis-server) to run the Redis Cluster tests"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return server, cli


def run(node: redis.Redis, *args: Any) -> Any:
    """One raw command on one node (what an operator types in redis-cli)."""
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """`n` ports free with their cluster bus port (port + 10000) free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randrange(20_000, 40_000)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


class LocalCluster:
    """Three masters (no replicas) on loopback, each a `redis-server` process."""

    def __init__(self, root: Path, server: str, cli: str) -> None:
        self.root, self.server, self.cli = root, server, cli
        self.ports = _free_ports(3)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.clients: dict[int, redis.Redis] = {}
        for port in self.ports:
            self.start(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [
                self.server,
                "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "5000",
                "--dir", str(self.root),
                "--save", "", "--appendonly", "no",
                "--logfile", str(self.root / f"{port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.node(port).ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.terminate()
        proc.wait(timeout=20)

    def node(self, port: int) -> redis.Redis:
        client = self.clients.get(port)
        if client is None:
            client = self.clients[port] = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        return client

    def wait_ok(self) -> None:
        """Until every node says the cluster is ok and they agree on the slot owners."""
        deadline = time.monotonic() + 30
        while True:
            try:
                states = {self.node(p).cluster("info")["cluster_state"] for p in self.ports}
                maps = {self._slot_map(p) for p in self.ports}
                if states == {"ok"} and len(maps) == 1:
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the local Redis Cluster did not settle")
            time.sleep(0.1)

    def _slot_map(self, port: int) -> tuple[tuple[int, int, int], ...]:
        slots = run(self.node(port), "CLUSTER SLOTS")
        return tuple(sorted((int(s[0]), int(s[1]), int(s[2][1])) for s in slots))

    def owner(self, key: bytes | str) -> int:
        """The port of the master owning `key`'s slot, as the cluster itself says."""
        raw = key.encode() if isinstance(key, str) else key
        slot = key_slot(raw)
        for start, end, port in self._slot_map(self.ports[0]):
            if start <= slot <= end:
                return port
        raise AssertionError(f"slot {slot} not covered")

    def node_id(self, port: int) -> str:
        return str(run(self.node(port), "CLUSTER MYID").decode())

    def migrate_slot(self, slot: int, src: int, dst: int, *, finish: bool = True) -> None:
        """Move one slot by hand: IMPORTING/MIGRATING, its keys by MIGRATE, then (unless
        `finish` is False: the slot stays mid-migration) SETSLOT NODE on every master."""
        source, target = self.node(src), self.node(dst)
        src_id, dst_id = self.node_id(src), self.node_id(dst)
        run(target, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        run(source, "CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := run(source, "CLUSTER GETKEYSINSLOT", slot, 100):
            run(source, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        if finish:
            self.finish_slot(slot, dst)

    def finish_slot(self, slot: int, dst: int) -> None:
        dst_id = self.node_id(dst)
        for port in [dst, *(p for p in self.ports if p != dst)]:
            run(self.node(port), "CLUSTER SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for port in list(self.procs):
            self.stop(port)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    server, cli = _binaries()
    local = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), server, cli)
    try:
        yield local
    finally:
        local.close()


@pytest.fixture
def prefix() -> str:
    return f"test-cluster-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


# --- helpers ---------------------------------------------------------------------------------


def keys_on_every_node(cluster: LocalCluster, prefix: str, n: int) -> list[GuardKey]:
    """`n` keys (some with an attribute) whose slots fall on every master."""
    keys = [
        GuardKey(f"tenant-{i}", "ctx", "chat", f"user=u{i}" if i % 3 == 0 else "") for i in range(n)
    ]
    owners = {cluster.owner(ledger_key(prefix, key)) for key in keys}
    assert owners == set(cluster.ports), "the keys do not reach every master"
    return keys


def ledger_key(prefix: str, key: GuardKey, day: str = DAY) -> str:
    return f"{tag_of(prefix, key)}:b:{day}"


def admit(
    guard: RedisGuard, key: GuardKey, usd: str, *, limit: RateLimitSpec | None = LIMIT
) -> Ticket:
    return guard.admit(key, tokens=100, reserve_usd=Decimal(usd), rate_limit=limit, budget=CAP)


def ledger_source(db: Path) -> Callable[[], list[Any]]:
    """Today's spend per key from the rollups of a real DuckDB ledger."""

    def read() -> list[Any]:
        con = connect(db)
        try:
            return list(budget_state(DuckDBReader(con), now=NOW, timezone="UTC"))
        finally:
            con.close()

    return read


def land(db: Path, key: GuardKey, usd: str) -> None:
    """`usd` of `key`'s usage landed in the ledger (what the collector does)."""
    fill(
        db,
        [
            usage_row(
                NOW - dt.timedelta(minutes=5),
                tenant=key.tenant,
                context=key.context,
                purpose=key.purpose,
                cost=usd,
                cap=str(CAP.daily_usd),
            )
        ],
    )


@pytest.fixture
def ledger_db(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.duckdb"
    connect(db).close()
    return db


# --- the URL ---------------------------------------------------------------------------------


def test_a_cluster_is_named_by_its_url() -> None:
    spec = cluster_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001/0?socket_keepalive=1")
    assert spec is not None
    assert spec.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert spec.template == "redis://:s3cret@10.0.0.1:7000?socket_keepalive=1"
    assert spec.node_url("10.0.0.9", 7005) == "redis://:s3cret@10.0.0.9:7005?socket_keepalive=1"

    flagged = cluster_url("rediss://h:6380?cluster=true")
    assert flagged is not None
    assert (flagged.template, flagged.nodes) == ("rediss://h:6380", [("h", 6380)])
    assert cluster_url("redis://127.0.0.1:6379/0") is None
    assert cluster_url("redis://127.0.0.1:6379/0?cluster=false") is None
    assert where("redis+cluster://:s3cret@a:1,b:2") == "redis+cluster://a:1,b:2"

    with pytest.raises(ConfigError, match="database 0"):
        cluster_url("redis+cluster://a:1/3")
    with pytest.raises(ConfigError, match="TCP"):
        cluster_url("unix:///tmp/redis.sock?cluster=true")
    with pytest.raises(ConfigError, match="host:port"):
        cluster_url("redis+cluster://a:port")
    with pytest.raises(ConfigError, match="at least one node"):
        make_guard(load_settings(control={"state_backend": "redis+cluster:///0"}))


def test_the_routed_key_is_the_scripts_first_key() -> None:
    from comptroller.control._guard import _redis_wire as wire

    state = wire.KeyState(wire.tag_of("p", GuardKey("a", "b", "c", "user=x")))
    command = wire.ledger_command(state, DAY, 0.0)
    assert first_key(command) == f"p:{{a|b|c|user%3Dx}}:b:{DAY}".encode()


# --- admissions across slots -----------------------------------------------------------------


def test_admit_settle_and_release_across_keys_on_every_node(
    cluster: LocalCluster, prefix: str, admin: redis.cluster.RedisCluster
) -> None:
    guard = make_guard(
        load_settings(control={"state_backend": cluster.url, "state_prefix": prefix}),
        clock=FakeClock(start=NOW.timestamp()),
    )
    assert isinstance(guard, RedisGuard)
    keys = keys_on_every_node(cluster, prefix, 30)
    tickets = [admit(guard, key, "0.30") for key in keys]
    for i, ticket in enumerate(tickets):
        if i % 2:
            guard.settle(ticket, cost_usd=Decimal("0.10"), tokens=50)
        else:
            guard.release(ticket)
    assert guard.flush() == 30  # one pipelined round trip, split over three nodes

    for i, key in enumerate(keys):
        state = guard.ledger(key)
        assert (state.spent_usd, state.reserved_usd) == (
            Decimal("0.10") if i % 2 else Decimal(0),
            Decimal(0),
        ), key
        # Each key's state lives on the master owning its slot, and only there.
        owner = cluster.owner(ledger_key(prefix, key))
        assert cluster.node(owner).exists(ledger_key(prefix, key)) == 1
    # A second admission per key carries nothing stale and sees its own spend.
    again = admit(guard, keys[1], "0.90", limit=None)
    assert again.spent_usd == Decimal("0.10")
    with pytest.raises(BudgetExceeded):
        admit(guard, keys[1], "0.01", limit=None)
    guard.close()


async def test_a_flagged_url_and_a_callers_cluster_client_reach_the_same_state(
    cluster: LocalCluster, prefix: str, admin: redis.cluster.RedisCluster
) -> None:
    key = GuardKey("acme", "ctx", "forms")
    flagged = RedisGuard(f"redis://127.0.0.1:{cluster.ports[2]}/0?cluster=true", prefix=prefix)
    given = RedisGuard("redis+cluster://ignored:1", prefix=prefix, client=admin)
    try:
        first = admit(flagged, key, "0.25")
        flagged.settle(first, cost_usd=Decimal("0.25"), tokens=10)
        flagged.flush()
        second = await given.aadmit(
            key, tokens=1, reserve_usd=Decimal("0.25"), rate_limit=None, budget=CAP
        )
        assert second.spent_usd == Decimal("0.25")
        await given.asettle(second, cost_usd=Decimal("0.25"), tokens=None)
        await given.aflush()
        assert given.ledger(key).spent_usd == Decimal("0.50")
    finally:
        await given.aclose()
    flagged.close()
    given.close()
    assert admin.ping()  # the caller's client is the caller's to close


def test_budget_refusal_is_exact_under_concurrent_threads_and_processes_sharing_a_key(
    cluster: LocalCluster, prefix: str
) -> None:
    key = GuardKey("acme", "ctx", "hot")
    guards = [RedisGuard(cluster.url, prefix=prefix) for _ in range(2)]
    admitted = [0]
    count = threading.Lock()

    def worker(guard: RedisGuard) -> None:
        while True:
            try:
                ticket = admit(guard, key, "0.01")
            except BudgetExceeded:
                return
            with count:
                admitted[0] += 1
            guard.settle(ticket, cost_usd=Decimal("0.01"), tokens=100)

    threads = [threading.Thread(target=worker, args=(guards[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for guard in guards:
        guard.flush()

    assert admitted == [100]
    state = guards[0].ledger(key)
    assert (state.spent_usd, state.reserved_usd) == (Decimal("1.00"), Decimal(0))
    for guard in guards:
        guard.close()


async def test_the_async_path_routes_by_slot_and_holds_the_cap_exactly(
    cluster: LocalCluster, prefix: str
) -> None:
    guard = RedisGuard(cluster.url, prefix=prefix)
    keys = keys_on_every_node(cluster, prefix, 24)
    try:
        tickets = [
            await guard.aadmit(
                key, tokens=10, reserve_usd=Decimal("0.5"), rate_limit=LIMIT, budget=CAP
            )
            for key in keys
        ]
        for ticket in tickets[::2]:
            await guard.asettle(ticket, cost_usd=Decimal("0.25"), tokens=5)
        for ticket in tickets[1::2]:
            await guard.arelease(ticket)
        assert await guard.aflush() == len(keys)

        hot = keys[0]

        async def one() -> bool:
            try:
                ticket = await guard.aadmit(
                    hot, tokens=1, reserve_usd=Decimal("0.05"), rate_limit=None, budget=CAP
                )
            except BudgetExceeded:
                return False
            await guard.asettle(ticket, cost_usd=Decimal("0.05"), tokens=None)
            return True

        results = await asyncio.gather(*(one() for _ in range(40)))
        assert sum(results) == 15  # (1.00 - 0.25) / 0.05, none more
        await guard.aflush()
    finally:
        await guard.aclose()
    assert guard.ledger(hot).spent_usd == Decimal("1.00")
    assert guard.ledger(keys[1]).spent_usd == Decimal(0)
    guard.close()


# --- the cluster changes under the guard -------------------------------------------------------


def test_a_slot_moved_by_resharding_is_followed_through_ask_and_moved(
    cluster: LocalCluster, prefix: str
) -> None:
    guard = RedisGuard(cluster.url, prefix=prefix, clock=FakeClock(start=NOW.timestamp()))
    key = GuardKey("acme", "ctx", "moving")
    in_flight = admit(guard, key, "0.40")  # booked: the bucket, ledger and reservations exist
    slot = key_slot(ledger_key(prefix, key).encode())
    src = cluster.owner(ledger_key(prefix, key))
    dst = next(p for p in cluster.ports if p != src)

    # Mid-migration: every key of the slot is on the target already; the source answers ASK.
    cluster.migrate_slot(slot, src, dst, finish=False)
    assert run(cluster.node(src), "CLUSTER COUNTKEYSINSLOT", slot) == 0
    assert run(cluster.node(dst), "CLUSTER COUNTKEYSINSLOT", slot) == 3
    guard.settle(in_flight, cost_usd=Decimal("0.30"), tokens=50)
    asked = admit(guard, key, "0.50")  # carries the settlement, admitted on the target
    assert asked.spent_usd == Decimal("0.30")
    assert guard._cluster is not None
    assert guard._cluster.followed["ask"] == 1

    # Migration done: the source answers MOVED, the guard's slot map follows it.
    cluster.finish_slot(slot, dst)
    guard.release(asked)
    moved = admit(guard, key, "0.70")
    assert moved.spent_usd == Decimal("0.30")
    with pytest.raises(BudgetExceeded):
        admit(guard, key, "0.01")
    assert guard._cluster.followed["moved"] == 1
    topology = guard._cluster._topology
    assert topology is not None
    assert topology.nodes_manager.get_node_from_slot(slot).port == dst
    guard.release(moved)
    guard.flush()
    assert guard.ledger(key).reserved_usd == Decimal(0)
    guard.close()


def test_a_key_split_mid_migration_is_retried_until_its_keys_are_together(
    cluster: LocalCluster, prefix: str
) -> None:
    guard = RedisGuard(cluster.url, prefix=prefix, clock=FakeClock(start=NOW.timestamp()))
    key = GuardKey("acme", "ctx", "split")
    held = admit(guard, key, "0.40")  # bucket, ledger and reservations all exist
    tag = tag_of(prefix, key)
    slot = key_slot(tag.encode())
    src = cluster.owner(tag)
    dst = next(p for p in cluster.ports if p != src)
    source, target = cluster.node(src), cluster.node(dst)
    run(target, "CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(src))
    run(source, "CLUSTER SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
    # One key of three moved: the source answers TRYAGAIN until the others follow.
    run(source, "MIGRATE", "127.0.0.1", dst, f"{tag}:rl", 0, 5000)

    def move_the_rest() -> None:
        time.sleep(0.05)
        cluster.migrate_slot(slot, src, dst, finish=False)

    mover = threading.Thread(target=move_the_rest)
    mover.start()
    ticket = admit(guard, key, "0.50")
    mover.join()
    cluster.finish_slot(slot, dst)

    assert ticket.spent_usd == Decimal(0)
    assert guard.ledger(key).reserved_usd == Decimal("0.90")  # both, once each
    assert guard._cluster is not None
    assert guard._cluster.followed["tryagain"] >= 1
    assert guard._cluster.followed["ask"] >= 1
    guard.release(held)
    guard.release(ticket)
    guard.close()


async def test_the_async_path_follows_a_moved_slot(cluster: LocalCluster, prefix: str) -> None:
    guard = RedisGuard(cluster.url, prefix=prefix, clock=FakeClock(start=NOW.timestamp()))
    key = GuardKey("acme", "ctx", "moving-async")
    try:
        first = await guard.aadmit(
            key, tokens=1, reserve_usd=Decimal("0.2"), rate_limit=None, budget=CAP
        )
        await guard.asettle(first, cost_usd=Decimal("0.2"), tokens=None)
        await guard.aflush()
        slot = key_slot(ledger_key(prefix, key).encode())
        src = cluster.owner(ledger_key(prefix, key))
        dst = next(p for p in cluster.ports if p != src)
        await asyncio.to_thread(cluster.migrate_slot, slot, src, dst)

        ticket = await guard.aadmit(
            key, tokens=1, reserve_usd=Decimal("0.8"), rate_limit=None, budget=CAP
        )
        assert ticket.spent_usd == Decimal("0.2")
        with pytest.raises(BudgetExceeded):
            await guard.aadmit(
                key, tokens=1, reserve_usd=Decimal("0.01"), rate_limit=None, budget=CAP
            )
        await guard.arelease(ticket)
    finally:
        await guard.aclose()
    guard.close()


def test_a_flushed_node_is_reseeded_from_the_ledger_before_anything_is_admitted(
    cluster: LocalCluster, prefix: str, ledger_db: Path
) -> None:
    clock = FakeClock(start=NOW.timestamp())
    reads = [0]
    source = ledger_source(ledger_db)

    def counted() -> list[Any]:
        reads[0] += 1
        return source()

    keys = keys_on_every_node(cluster, prefix, 12)
    keys = [GuardKey(k.tenant, k.context, k.purpose) for k in keys]  # the rollups' keys
    guard = RedisGuard(cluster.url, prefix=prefix, clock=clock, ledger_source=counted)
    for key in keys:
        ticket = admit(guard, key, "0.90")
        guard.settle(ticket, cost_usd=Decimal("0.90"), tokens=100)
        land(ledger_db, key, "0.90")
    guard.flush()
    reads[0] = 0

    # Every node forgets (and loses its scripts: the next call meets NOSCRIPT first).
    for port in cluster.ports:
        cluster.node(port).flushall()
        cluster.node(port).script_flush()

    # A call that would fit in an empty day is refused: the ledger's 0.90 is restored first.
    with pytest.raises(BudgetExceeded) as caught:
        admit(guard, keys[0], "0.20")
    assert caught.value.spent == Decimal("0.9")
    assert reads == [1]
    assert guard._cluster is not None
    assert guard._cluster.followed["noscript"] >= 1  # the scripts were loaded again
    # The one read re-seeded every key the ledger reports, on every node.
    for key in keys[1:]:
        with pytest.raises(BudgetExceeded):
            admit(guard, key, "0.20")
        assert guard.ledger(key).reserved_usd == Decimal(0)
    assert reads == [1]
    assert admit(guard, keys[0], "0.10").spent_usd == Decimal("0.9")
    guard.close()


def test_a_restarted_node_fails_closed_while_down_then_is_reseeded_from_the_ledger(
    cluster: LocalCluster, prefix: str, ledger_db: Path
) -> None:
    clock = FakeClock(start=NOW.timestamp())
    guard = RedisGuard(
        cluster.url, prefix=prefix, clock=clock, ledger_source=ledger_source(ledger_db)
    )
    key = GuardKey("acme", "ctx", "restart")
    ticket = admit(guard, key, "0.60")
    guard.settle(ticket, cost_usd=Decimal("0.60"), tokens=100)
    land(ledger_db, key, "0.60")
    guard.flush()
    port = cluster.owner(ledger_key(prefix, key))

    cluster.stop(port)  # no persistence: it comes back empty
    with pytest.raises(BudgetUnverifiable, match="unavailable"):
        admit(guard, key, "0.10")
    cluster.start(port)
    cluster.wait_ok()

    with pytest.raises(BudgetExceeded) as caught:
        admit(guard, key, "0.50")
    assert caught.value.spent == Decimal("0.6")
    assert admit(guard, key, "0.40").spent_usd == Decimal("0.6")
    guard.close()


def test_a_node_that_does_not_answer_keeps_only_its_own_settlements_queued(
    cluster: LocalCluster, prefix: str
) -> None:
    guard = RedisGuard(
        cluster.url, prefix=prefix, clock=FakeClock(start=NOW.timestamp()), background_flush=False
    )
    keys = keys_on_every_node(cluster, prefix, 12)
    for key in keys:
        guard.settle(admit(guard, key, "0.10"), cost_usd=Decimal("0.10"), tokens=10)
    frozen = cluster.owner(ledger_key(prefix, keys[0]))
    on_frozen = [k for k in keys if cluster.owner(ledger_key(prefix, k)) == frozen]

    os.kill(cluster.procs[frozen].pid, signal.SIGSTOP)
    try:
        with pytest.raises(redis.RedisError):
            guard.flush()
        assert guard.pending_settlements == len(on_frozen)
        # The other nodes' keys read and admit as usual meanwhile.
        healthy = next(k for k in keys if k not in on_frozen)
        assert guard.ledger(healthy).spent_usd == Decimal("0.10")
        guard.release(admit(guard, healthy, "0.10"))  # queued: one more settlement
        with pytest.raises(BudgetUnverifiable):
            admit(guard, on_frozen[0], "0.10")  # its settlement rode along: queued again
        assert guard.pending_settlements == len(on_frozen) + 1
    finally:
        os.kill(cluster.procs[frozen].pid, signal.SIGCONT)
    assert guard.flush() == len(on_frozen) + 1

    for key in keys:
        spent = guard.ledger(key).spent_usd
        if key in on_frozen:
            # Its reply was lost, not its command (the node read it when it woke): delivered
            # again, charged twice at most: stricter, never looser.
            assert spent in (Decimal("0.10"), Decimal("0.20")), key
        else:
            assert spent == Decimal("0.10"), key  # delivered exactly once
    guard.close()
