"""`RedisGuard`: rate limits and budgets shared by several processes or machines, in Redis.

One guarded call costs ONE round trip in steady state: the apply script (`_apply.lua`).
`settle` and `release` do not talk to Redis: they are applied to the ticket at once (the
caller's view) and queued; a key's queued settlements ride in that key's NEXT admit (the same
EVALSHA), which first applies them and then admits. Settlements of other keys are never
carried (a script touches one hash tag: one Redis Cluster slot); they wait for their key's
next admit or the flush timer (`settle_flush_s`, one pipelined round trip for the whole
queue, one script per tag). The queue is also flushed when it reaches
`max_pending_settles`, by `flush()`, before `ledger()` and `seed()`, at `close`/`aclose`,
and at interpreter exit.

The admit part refills and checks the token buckets, sweeps expired reservations, checks the
reservation against the day's cap and books it, and takes from the buckets — or refuses
having changed nothing (the settlements before it still apply). Redis runs a script
atomically, so concurrent admits from any number of processes cannot both fit into the room
of one.

A Redis that forgets is not trusted. A day's ledger hash carries a seeding marker, written
only when its spend was seeded from the ledger's rollups (`seed`, or the re-seed below); an
admit that finds none takes nothing and answers "unseeded": the guard reads the ledger
source (the `BudgetReconciler`'s), seeds every key it reports for that day plus this one,
and admits again; until the source answers, the call is refused with `BudgetUnverifiable`.
Without a ledger source Redis is the only record, and an unmarked ledger is adopted as it
stands. Partial evictions and the limits: docs/ARCHITECTURE.md ("The guard and a Redis that
forgets").

Fail closed: when Redis cannot be reached or answers with an error, a budgeted admit raises
`BudgetUnverifiable` and a rate-limited one `GuardUnavailable`; nothing is let through.
Settlements that could not be delivered stay queued (ahead of newer ones) and are retried
with the next admit or flush. A delivery whose reply was lost (a read timeout, or an
`aadmit` cancelled while waiting for Redis) may have been applied already and is applied
again, which charges those calls twice: stricter, never looser.

Redis Cluster (`redis+cluster://host:port[,…]`, or `?cluster=true`): every script touches
one key's hash tag, so one slot; `_redis_cluster` routes each command to its slot's master,
splits a flush or a re-seed by node, and follows MOVED, ASK, TRYAGAIN and NOSCRIPT (none of
which ran the command). A node that cannot be reached fails closed for its own keys only.

Overshoot bound. Across every process sharing the server or cluster (a key's admissions
are serialised on one node, so the bound does not grow with the number of processes or
machines, only with the calls they have in flight), the day's settled spend exceeds the cap
by at most Σ max(0, actual − reserved) (calls that cost more than the worst case
reserved for them) plus the reservations of calls still running after `reservation_ttl_s`.
With honest reservations and calls shorter than the TTL, the bound is 0 — the concurrency
test holds four processes to it. Queued settlements add nothing while the process lives (the
worst case stays booked until delivered: stricter). A process that dies with queued
settlements leaves their reservations booked until the TTL; after that their spend is
missing until the reconciliation restores it. A loss of Redis's state adds what the ledger
source had not landed yet when it was read (the collector's landing lag), and the
reservations in flight at the loss; a restart from an older snapshot (RDB/AOF) keeps its
markers, so the spend since the snapshot waits for the periodic reconciliation. Bucket
refills use the callers' wall clocks: clock skew of δ seconds can over-admit by rate × δ
(and shortens the reservation TTL by δ). On a cluster, a failover to a replica that missed
the master's last writes is such an older snapshot (its replication lag). The terms, for N
processes on M machines: docs/DEPLOYMENT.md ("Redis Cluster and the overshoot bound").
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._errors import (
    BudgetUnverifiable,
    GuardUnavailable,
)
from comptroller.control._guard import _redis_wire as wire
from comptroller.control._guard._kernel import (
    GuardKey,
    LedgerState,
    Ticket,
    _BudgetDay,
    _TicketIds,
    from_nanos,
    to_nanos,
)
from comptroller.control._guard._reconcile import ReconcileSource, spend_by_day
from comptroller.control._guard._redis_cluster import ClusterRouter, cluster_url, single_url
from comptroller.control._guard._redis_driver import FETCH, Flow, RedisDriver, store_errors
from comptroller.control._guard._redis_io import Connections, exchange, recover, where
from comptroller.control._guard._redis_queue import Flusher, SettleQueue
from comptroller.control._profile_types import BudgetSpec, RateLimitSpec

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.cluster

_DAY_KEY_GRACE_S = 2 * 86_400
_log = logging.getLogger("comptroller.control.guard")
_LIVE: weakref.WeakSet[RedisGuard] = weakref.WeakSet()


def _is_cluster(client: object) -> bool:
    import redis.cluster  # the caller's client: redis is imported already

    return isinstance(client, redis.cluster.RedisCluster)


@atexit.register
def _flush_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for guard in list(_LIVE):
        try:
            guard.flush()
        except Exception as exc:  # exiting: log and go on
            _log.warning("budget settlements not flushed at exit: %s", exc)


class RedisGuard(RedisDriver):
    """Rate limits and budgets in Redis, shared by every process that uses the same prefix.

    Redis support is the `comptroller[redis]` extra; the client library is imported when
    the guard first talks to the server. The async methods use their own connections,
    opened on the running event loop: `await guard.aclose()` before that loop ends; a guard
    used from another loop later opens new connections there.

    Example:
        >>> guard = RedisGuard("redis://127.0.0.1:6379/0", prefix="myapp")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        timezone: str = "UTC",
        prefix: str = "comptroller",
        reservation_ttl_s: float = 900.0,
        socket_timeout_s: float = 0.5,
        max_connections: int = 64,
        pool_timeout_s: float = 5.0,
        settle_flush_s: float = 0.05,
        max_pending_settles: int = 256,
        background_flush: bool = True,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
        aclient: redis.asyncio.Redis | None = None,
        ledger_source: ReconcileSource | None = None,
    ) -> None:
        """Build a Redis guard (no connection is made until the first call).

        Args:
            url: `redis://[[user]:password@]host:port/db`, `rediss://…` or `unix://…`;
                a Redis Cluster: `redis+cluster://[[user]:password@]host:port[,host:port…]`
                (`rediss+cluster://` for TLS) or a `redis://`/`rediss://` URL with
                `?cluster=true` (startup nodes; the others are discovered).
            clock: Time source (wall time selects the day and refills the buckets;
                monotonic time ages the queued settlements).
            timezone: IANA time zone of the budget day.
            prefix: Prefix of every key (several deployments may share a server).
            reservation_ttl_s: An unsettled reservation older than this is dropped.
            socket_timeout_s: Connect and read timeout; beyond it the call fails closed.
            max_connections: Connections per side (sync and async each); more concurrent
                callers queue for one.
            pool_timeout_s: How long a caller queues for a free connection before failing
                closed.
            settle_flush_s: A queued settlement waits at most about this long for the next
                admit to carry it; then a background flush delivers it.
            max_pending_settles: A queue this long is flushed at once by the settle that
                fills it.
            background_flush: Run the timer flush in a daemon thread; False leaves it to
                `flush_due()` (tests drive it with an injected clock).
            client: A ready `redis.Redis`, whose connection class and settings are used,
                or a ready `redis.cluster.RedisCluster` (its slot map and its nodes'
                connection settings; the caller closes it).
            aclient: A ready `redis.asyncio.Redis` for the async methods.
            ledger_source: Today's spend per key from the ledger's rollups, to re-seed a
                state Redis lost (a `BudgetReconciler` names its source here too). None:
                Redis is the only record.
        """
        self._url = single_url(url)
        self._where = where(url)
        given = client if client is not None and _is_cluster(client) else None
        cluster = cluster_url(url) if given is None else None
        self._cluster: ClusterRouter | None = None
        if cluster is not None or given is not None:
            self._cluster = ClusterRouter(
                cluster,
                timeout_s=socket_timeout_s,
                max_connections=max_connections,
                pool_timeout_s=pool_timeout_s,
                client=given,  # type: ignore[arg-type]
            )
            client = None
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._days = _BudgetDay(timezone)
        self._prefix = prefix
        self._ttl = reservation_ttl_s
        self._timeout = socket_timeout_s
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout_s
        self._flush_s = settle_flush_s
        self._max_pending = max(1, max_pending_settles)
        self._background = background_flush
        self._client: redis.Redis | None = client  # type: ignore[assignment]
        self._aclient = aclient
        self._conns: Connections | None = None
        # The loop our own async client was opened on (None: a caller-provided client).
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._ids = _TicketIds()
        self._key_states: dict[GuardKey, wire.KeyState] = {}
        self._args = wire.AdmitArgs(reservation_ttl_s)
        self._ttl_arg: tuple[int, bytes] = (-1, b"")
        self._lock = threading.Lock()
        self._source: ReconcileSource | None = None
        if ledger_source is not None:
            self.use_ledger_source(ledger_source)
        self._pending = SettleQueue()
        self._flusher = Flusher(
            self.flush_due, self._pending.__len__, settle_flush_s / 2, self._where
        )
        _LIVE.add(self)

    def use_ledger_source(self, source: ReconcileSource) -> None:
        """Re-seed a lost state from `source` (today's spend per key) before admitting."""
        self._source = source
        self._args.require_seeded()

    # --- keys and arguments ----------------------------------------------------------------

    def _state(self, key: GuardKey) -> wire.KeyState:
        state = self._key_states.get(key)
        if state is None:
            state = self._key_states[key] = wire.KeyState(wire.tag_of(self._prefix, key))
        return state

    def _ledger_ttl(self, now: float) -> int:
        return int(self._days.seconds_left(now)) + _DAY_KEY_GRACE_S

    def _ledger_ttl_arg(self, now: float) -> bytes:
        # Encoded once a second: two admits in the same second share it (the grace of two
        # days dwarfs a second).
        second = int(now)
        cached = self._ttl_arg
        if cached[0] != second:
            cached = self._ttl_arg = (second, b"%d" % self._ledger_ttl(now))
        return cached[1]

    def _unavailable(
        self, key: GuardKey, budget: BudgetSpec | None, exc: BaseException
    ) -> Exception:
        reason = f"state store {self._where} unavailable: {type(exc).__name__}: {exc}"
        if budget is not None:
            return BudgetUnverifiable(key, reason)
        return GuardUnavailable(key, reason)

    # --- the flows: every decision, once, for both drivers ----------------------------------

    def _admit_flow(
        self,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
    ) -> Flow[Ticket]:
        now = self._clock.time()
        day = self._days.of(now)
        ticket = Ticket(key=key, id=self._ids.next(), rate_limit=rate_limit, budget=budget)
        if budget is not None:
            ticket.day = day
        args = self._args.encode(
            ticket, tokens, reserve_usd, wait_s, now, self._ledger_ttl_arg(now)
        )
        state = self._state(key)
        keys = state.keys_of(day)
        pending = self._pending.take(state.tag)
        try:
            command = [wire.apply_command(pending, args, keys)]
            [reply] = replies = yield command
            if isinstance(reply, Exception):  # exchange()'s check, inlined on the hot path
                [reply] = yield from recover(command, replies)
            pending = []  # delivered, whatever the admit decided
            if reply[0] == wire.UNSEEDED:
                yield from self._reseed_flow(ticket, day)
                [reply] = yield from exchange([wire.apply_command([], args, keys)])
                if reply[0] == wire.UNSEEDED:
                    raise BudgetUnverifiable(
                        key, f"state store {self._where} lost the budget state again at once"
                    )
        except store_errors() as exc:
            self._pending.requeue(pending, self._clock.monotonic())
            raise self._unavailable(key, budget, exc) from exc
        except BaseException:
            self._pending.requeue(pending, self._clock.monotonic())
            raise
        wire.admitted(ticket, reply)
        if ticket.wait_s > 0:
            try:
                yield ticket.wait_s
            except BaseException:
                yield from self._release_flow(ticket)
                raise
        return ticket

    def _reseed_flow(self, ticket: Ticket, day: str) -> Flow[None]:
        """Restore `day`'s spend from the ledger source: every key it reports, and this one."""
        try:
            rows = yield FETCH
            spend = dict(spend_by_day(rows, today=day).get(day, {}))
        except Exception as exc:
            raise BudgetUnverifiable(
                ticket.key,
                f"the state store {self._where} holds no seeded budget state for {day} "
                "(restarted, flushed or evicted) and the ledger could not be read to "
                f"restore it ({type(exc).__name__}: {exc}); check the collector's "
                "budget-state endpoint or the embedded sink",
            ) from exc
        spend.setdefault(ticket.key, Decimal(0))
        now = self._clock.time()
        yield from exchange(wire.seed_commands(self._state, spend, day, self._ledger_ttl(now), now))

    def _flush_flow(self) -> Flow[int]:
        pending = self._pending.take_all()
        if not pending:
            return 0
        groups = wire.by_tag(pending)
        commands = [wire.apply_command(group, None, b"") for group in groups]
        replies: list[Any] = []
        try:
            replies = yield commands
            if any(isinstance(reply, Exception) for reply in replies):
                yield from recover(commands, replies)  # NOSCRIPT: load, send those again
        except BaseException:
            # Only what was not acknowledged waits for the next delivery: on a cluster, a
            # node that cannot be reached does not make the others' settlements apply twice.
            failed = (
                [
                    s
                    for group, r in zip(groups, replies, strict=True)
                    if isinstance(r, Exception)
                    for s in group
                ]
                if replies
                else pending
            )
            self._pending.requeue(failed, self._clock.monotonic())
            raise
        return len(pending)

    def _quiet_flush_flow(self) -> Flow[int]:
        # The call already succeeded: never fail it for the ledger. The queue is kept (its
        # reservations stay booked, or expire after the TTL) until a later delivery.
        try:
            return (yield from self._flush_flow())
        except store_errors() as exc:
            _log.warning(
                "budget settlements kept, state store %s unavailable: %s", self._where, exc
            )
            return 0

    def _release_flow(self, ticket: Ticket) -> Flow[None]:
        if ticket.state != "open":
            return
        ticket.state = "released"
        if self._queue(ticket, 0, None):
            yield from self._quiet_flush_flow()

    # --- the queue of settlements ----------------------------------------------------------

    def _queue(self, ticket: Ticket, charge: int, tokens: int | None) -> bool:
        """Queue the settlement of `ticket`; True when the queue is full and must flush."""
        spec = ticket.rate_limit
        delta = tok_cap = 0
        if tokens is not None and spec is not None and spec.tokens_per_interval:
            delta = tokens - ticket.tokens
            tok_cap = spec.tokens_per_interval
        day = ticket.day
        state = self._state(ticket.key)
        if day is None:
            if not delta:
                return False  # nothing in Redis to correct
            charge = -1
            day = state.cached[0] or self._days.of(self._clock.time())
        args = wire.settlement_args(
            ticket.id,
            charge,
            delta,
            tok_cap,
            ticket.reserved_nanos,
            self._ledger_ttl_arg(self._clock.time()),
        )
        queued = self._pending.add(
            wire.Settlement(state.tag, state.keys_of(day), args), self._clock.monotonic()
        )
        if self._background and self._flusher.thread is None:
            self._flusher.ensure_running()
        return queued >= self._max_pending

    def _settle_local(self, ticket: Ticket, cost_usd: Decimal | None, tokens: int | None) -> bool:
        """Settle `ticket` for the caller now and queue it; True when the queue must flush."""
        ticket.state = "settled"
        charge = ticket.reserved_nanos if cost_usd is None else max(to_nanos(cost_usd), 0)
        if ticket.day is not None:
            # The caller's view: spend seen at admission plus this call (other processes'
            # spend since is in Redis, not here).
            ticket.spent_nanos = (ticket.spent_nanos or 0) + charge
        return self._queue(ticket, charge, tokens)

    def flush_due(self) -> int:
        """Flush the queued settlements if the oldest has waited `settle_flush_s`.

        Returns:
            The number of settlements delivered.

        Raises:
            redis.RedisError: Redis could not be reached (the queue is kept).
        """
        if self._pending and self._clock.monotonic() - self._pending.oldest >= self._flush_s:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Deliver every queued settlement now (one round trip); returns how many.

        Raises:
            redis.RedisError: Redis could not be reached (the queue is kept).
        """
        return self._drive(self._flush_flow())

    async def aflush(self) -> int:
        """Async `flush`, on the async connections."""
        return await self._adrive(self._flush_flow())

    @property
    def pending_settlements(self) -> int:
        """Settlements queued for Redis (their key's next admit or a flush delivers them)."""
        return len(self._pending)

    # --- the Guard protocol ----------------------------------------------------------------

    def admit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float = 0.0,
    ) -> Ticket:
        """See `Guard.admit`: one round trip, carrying the key's queued settlements."""
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        return self._drive(self._admit_flow(key, tokens, reserve_usd, rate_limit, budget, wait_s))

    async def aadmit(
        self,
        key: GuardKey,
        *,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float = 0.0,
    ) -> Ticket:
        """See `Guard.aadmit`: one round trip, carrying the key's queued settlements."""
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        flow = self._admit_flow(key, tokens, reserve_usd, rate_limit, budget, wait_s)
        return await self._adrive(flow)

    def settle(self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None) -> None:
        """See `Guard.settle`: applied to the ticket now, delivered with the next admit."""
        if ticket.state == "open" and self._settle_local(ticket, cost_usd, tokens):
            self._drive(self._quiet_flush_flow())

    async def asettle(
        self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None:
        """See `Guard.asettle`."""
        if ticket.state == "open" and self._settle_local(ticket, cost_usd, tokens):
            await self._adrive(self._quiet_flush_flow())

    def release(self, ticket: Ticket) -> None:
        """See `Guard.release`: delivered with the next admit (until then, still booked)."""
        self._drive(self._release_flow(ticket))

    async def arelease(self, ticket: Ticket) -> None:
        """See `Guard.arelease`."""
        await self._adrive(self._release_flow(ticket))

    def today(self) -> str:
        """Today's ISO date in the budget time zone."""
        return self._days.of(self._clock.time())

    def seed(self, spend_by_key: Mapping[GuardKey, Decimal], *, day: str | None = None) -> None:
        """See `Guard.seed` (one pipelined round trip for all keys); marks them seeded.

        Raises:
            GuardUnavailable: Redis cannot be reached.
        """
        if not spend_by_key:
            return
        now = self._clock.time()
        day = day or self._days.of(now)
        commands = wire.seed_commands(self._state, spend_by_key, day, self._ledger_ttl(now), now)
        try:
            self.flush()  # this process's settlements first, as if delivered at once
            self._drive(exchange(commands))
        except store_errors() as exc:
            first = next(iter(spend_by_key))
            raise GuardUnavailable(
                first, f"state store {self._where} unavailable while seeding: {exc}"
            ) from exc

    def ledger(self, key: GuardKey, *, day: str | None = None) -> LedgerState:
        """See `Guard.ledger`: this key's queued settlements are delivered first, in the
        same round trip (on a cluster, a node that is down does not hide the other keys).

        Raises:
            GuardUnavailable: Redis cannot be reached.
        """
        day = day or self.today()
        state = self._state(key)
        commands = [wire.ledger_command(state, day, self._clock.time())]
        pending = self._pending.take(state.tag)
        if pending:
            commands.insert(0, wire.apply_command(pending, None, b""))
        try:
            (spent, reserved) = self._drive(exchange(commands))[-1]
        except store_errors() as exc:
            self._pending.requeue(pending, self._clock.monotonic())
            raise GuardUnavailable(key, f"state store {self._where} unavailable: {exc}") from exc
        except BaseException:
            self._pending.requeue(pending, self._clock.monotonic())
            raise
        return LedgerState(
            key=key,
            day=day,
            spent_usd=from_nanos(int(spent or 0)),
            reserved_usd=from_nanos(int(reserved or 0)),
        )

    def close(self) -> None:
        """Deliver the queued settlements, then close the sync connections (async: `aclose`).

        A failed delivery is logged; the undelivered reservations stay booked until their TTL.
        """
        self._flusher.stop()
        self._drive(self._quiet_flush_flow())
        if self._conns is not None:
            self._conns.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Deliver the queued settlements, then close the async client's connections."""
        if self._pending:
            await self._adrive(self._quiet_flush_flow())
        if self._cluster is not None:
            await self._cluster.aclose()
        if self._aclient is not None:
            await self._aclient.aclose()
