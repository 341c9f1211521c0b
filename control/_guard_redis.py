"""Rate limits and budgets shared by several processes or machines, in Redis.

One guarded call costs ONE round trip in steady state: the `admit` Lua script. `settle` and
`release` do not talk to Redis: they are applied to the ticket at once (the caller's view)
and queued; the queued settlements ride in the NEXT admit's script (the same EVALSHA), which
first applies them and then admits. So a call's settlement reaches Redis with the next call
of the process. A process that goes idle flushes its queue on a short timer
(`settle_flush_s`, one round trip for the whole queue); the queue is also flushed when it
reaches `max_pending_settles`, by `flush()`, before `ledger()` and `seed()`, at
`close`/`aclose`, and at interpreter exit.

The admit part refills and checks the token buckets, sweeps expired reservations, checks the
reservation against the day's cap and books it, and takes from the buckets — or refuses
having changed nothing (the settlements before it still apply). Redis runs a script
atomically, so concurrent admits from any number of processes cannot both fit into the room
of one.

Keys (all of one (tenant, context, purpose) share a hash tag)::

    <prefix>:{<tenant>|<context>|<purpose>}:rl          token buckets (expire when full)
    <prefix>:{<tenant>|<context>|<purpose>}:b:<day>     ledger: spent, reserved
    <prefix>:{<tenant>|<context>|<purpose>}:r:<day>     reservations: <ticket>:<nanos> by expiry

An admit that carries settlements of other keys touches several hash tags: the guard needs
one Redis server (a primary with replicas is fine; Redis Cluster is not supported).

Money is integer nano-dollars (exact in Lua's doubles up to $9 million a day); day keys
expire two days after their day ends.

Fail closed: when Redis cannot be reached or answers with an error, a budgeted admit raises
`BudgetUnverifiable` and a rate-limited one `GuardUnavailable`; nothing is let through.
Settlements that could not be delivered stay queued (ahead of newer ones) and are retried
with the next admit or flush. A delivery whose reply was lost (a read timeout, or an
`aadmit` cancelled while waiting for Redis) may have been applied already and is applied
again, which charges those calls twice: stricter, never looser.

Overshoot bound. Across every process sharing the server, the day's settled spend exceeds
the cap by at most Σ max(0, actual − reserved) (calls that cost more than the worst case
reserved for them: a reservation capped by `control.budget_max_reservation_usd`, or usage
above `max_tokens`) plus the reservations of calls still running after `reservation_ttl_s`
(their reservation is dropped; their spend still lands). With honest reservations and calls
shorter than the TTL, the bound is 0 — the concurrency test holds four processes to it.

Queued settlements add no overshoot while the process lives: until its settlement is
delivered, a call's full worst-case reservation stays booked, so the ledger counts at least
what the call cost (stricter: other calls may be refused up to `settle_flush_s` — or until
the process's next admit — earlier than necessary; the excess of a call that cost more than
its reservation is in the Σ term above). A settlement that stays queued longer than
`reservation_ttl_s` (Redis unreachable that long) counts as a call outliving the TTL. The token-bucket correction of a call
lags by as long: a call that used more tokens than estimated takes the excess then. A
process that dies with queued settlements leaves their reservations booked until
`reservation_ttl_s` passes; after that their spend is missing from the ledger until the
analytics reconciliation (`seed`) restores it, so for that reconciliation interval the bound
grows by at most the reservations that were queued at the crash (at most
`max_pending_settles` calls, or the calls of one `settle_flush_s`). Redis failover with
asynchronous replication can lose the last writes; the reconciliation restores them within
`reconcile_interval_s` too. Bucket refills use the callers' wall clocks: clock skew of δ
seconds between machines can over-admit by rate × δ.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from decimal import Decimal
from hashlib import sha1
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from comptroller.control._clock import SYSTEM_CLOCK, Clock
from comptroller.control._errors import (
    BudgetExceeded,
    BudgetUnverifiable,
    GuardUnavailable,
    RateLimited,
)
from comptroller.control._guard import (
    GuardKey,
    LedgerState,
    Ticket,
    _BudgetDay,
    _capacities,
    _TicketIds,
    from_nanos,
    to_nanos,
)
from comptroller.control._profile_types import BudgetSpec, RateLimitSpec

if TYPE_CHECKING:
    import redis
    import redis.asyncio

# Drops reservations whose expiry has passed (their process died). A reservation is the
# member `<ticket>:<nanos>` of the expiries' sorted set, so booking and settling it is one
# ZADD and one ZREM.
_SWEEP = """
local function sweep(bkey, rkey, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', rkey, '-inf', now, 'LIMIT', 0, limit)
  for _, old in ipairs(expired) do
    if redis.call('ZREM', rkey, old) == 1 then
      redis.call('HINCRBY', bkey, 'reserved', -tonumber(string.match(old, ':(%d+)$')))
    end
  end
end
"""

# Queued settlements, then (optionally) one admit.
# KEYS: 3 per settlement (bucket, ledger, expiries), then 3 for the admit.
# ARGV[1] = n settlements; then 6 per settlement: ticket id, charge nanos (-1: no ledger),
# token delta, token capacity, reserved nanos, ledger ttl; then, for an admit: now, tokens
# to take, longest wait, need nanos, ticket id, reservation expiry, ledger ttl, has budget
# ('1'/'0'), cap nanos, request capacity, request rate/s, token capacity, token rate/s,
# bucket ttl ms. Replies {0} (settlements only), {0, wait, spent, reserved} (admitted),
# {1, wait, bucket} (rate limited) or {2, spent, reserved} (budget exceeded).
# Day keys get their EXPIRE when created: their expiry (the day's end plus the grace) is the
# same whenever it is computed, so busy keys are not re-expired on every call. A token
# correction for the admit's own bucket is folded into the admit's one read and write of it.
_APPLY = (
    _SWEEP
    + """
local n = tonumber(ARGV[1])
local k = 3 * n
local a = 2 + 6 * n
local admit = #ARGV >= a
local rlkey = KEYS[k + 1]
local req_rate, tok_rate = 0, 0
if admit then req_rate, tok_rate = tonumber(ARGV[a + 10]), tonumber(ARGV[a + 12]) end
local limited = req_rate > 0 or tok_rate > 0
local rl, rt, tl, tt, has_tl
local loaded, dirty = false, false
local function load()
  if loaded then return end
  loaded = true
  local b = redis.call('HMGET', rlkey, 'rl', 'rt', 'tl', 'tt')
  rl, rt, tt = tonumber(b[1]), tonumber(b[2]), tonumber(b[4])
  tl = tonumber(b[3])
  has_tl = tl ~= nil
end
local s = 2
for i = 0, n - 1 do
  local rlk, bkey, rkey = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local charge, delta = tonumber(ARGV[s + 1]), tonumber(ARGV[s + 2])
  if charge >= 0 then
    if redis.call('ZREM', rkey, ARGV[s] .. ':' .. ARGV[s + 4]) == 1 then
      redis.call('HINCRBY', bkey, 'reserved', -tonumber(ARGV[s + 4]))
    end
    if charge > 0 and redis.call('HINCRBY', bkey, 'spent', charge) == charge then
      redis.call('EXPIRE', bkey, tonumber(ARGV[s + 5]))
    end
  end
  if delta ~= 0 then
    if limited and rlk == rlkey then
      load()
      if has_tl then
        tl = math.min(tonumber(ARGV[s + 3]), tl - delta)
        dirty = true
      end
    else
      local old = redis.call('HGET', rlk, 'tl')
      if old then
        redis.call('HSET', rlk, 'tl',
                   tostring(math.min(tonumber(ARGV[s + 3]), tonumber(old) - delta)))
      end
    end
  end
  s = s + 6
end
if not admit then return {0} end
local bkey, rkey = KEYS[k + 2], KEYS[k + 3]
local now, take, wait_max = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
local req_cap, tok_cap = tonumber(ARGV[a + 9]), tonumber(ARGV[a + 11])
local wait, short = 0, ''
if limited then
  load()
  rl = rl or req_cap
  rt = rt or now
  tl = tl or tok_cap
  tt = tt or now
  if req_rate > 0 then
    if now > rt then rl = math.min(req_cap, rl + (now - rt) * req_rate); rt = now end
    if rl < 1 then wait = (1 - rl) / req_rate; short = 'requests' end
  end
  if tok_rate > 0 then
    if now > tt then tl = math.min(tok_cap, tl + (now - tt) * tok_rate); tt = now end
    if tl < take then
      local w = (take - tl) / tok_rate
      if w > wait then wait = w; short = 'tokens' end
    end
  end
  if wait > wait_max then
    -- Refused: take nothing, but keep the settlements' token corrections.
    if dirty then redis.call('HSET', rlkey, 'tl', tostring(tl), 'tt', tostring(tt)) end
    return {1, tostring(wait), short}
  end
end
local spent, reserved = 0, 0
if ARGV[a + 7] == '1' then
  local need, cap = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 8])
  local id, ttl = ARGV[a + 4], tonumber(ARGV[a + 6])
  sweep(bkey, rkey, now, 64)
  local l = redis.call('HMGET', bkey, 'spent', 'reserved')
  spent = tonumber(l[1]) or 0
  reserved = tonumber(l[2]) or 0
  if spent + reserved + need > cap then
    if dirty then redis.call('HSET', rlkey, 'tl', tostring(tl), 'tt', tostring(tt)) end
    return {2, spent, reserved}
  end
  redis.call('HINCRBY', bkey, 'reserved', need)
  redis.call('ZADD', rkey, ARGV[a + 5], id .. ':' .. ARGV[a + 3])
  if not l[1] and not l[2] then redis.call('EXPIRE', bkey, ttl) end
  if reserved == 0 then redis.call('EXPIRE', rkey, ttl) end
end
if limited then
  if req_rate > 0 then rl = rl - 1 end
  if tok_rate > 0 then tl = tl - take end
  redis.call('HSET', rlkey, 'rl', tostring(rl), 'rt', tostring(rt),
             'tl', tostring(tl), 'tt', tostring(tt))
  redis.call('PEXPIRE', rlkey, tonumber(ARGV[a + 13]))
end
return {0, tostring(wait), spent, reserved}
"""
)
_APPLY_SHA = sha1(_APPLY.encode()).hexdigest()

# KEYS[1] ledger, KEYS[2] expiries; ARGV[1] now. Sweeps, then reads the ledger.
_LEDGER = (
    _SWEEP
    + """
sweep(KEYS[1], KEYS[2], tonumber(ARGV[1]), 100000)
local l = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
return {l[1] or '0', l[2] or '0'}
"""
)

# KEYS[1] ledger; ARGV: spent nanos, ttl. Raises the spend, never lowers it.
_SEED = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return tostring(math.max(cur, new))
"""

_DAY_KEY_GRACE_S = 2 * 86_400
_FLUSH_THREAD_IDLE_S = 30.0
_log = logging.getLogger("comptroller.control.guard")


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bulks(*values: bytes) -> bytes:
    return b"".join([b"$%d\r\n%b\r\n" % (len(v), v) for v in values])


_EVALSHA = _bulks(b"EVALSHA", _APPLY_SHA.encode())
_NO_BUDGET = _bulks(b"0", b"0")
_NO_LIMIT = _bulks(b"0", b"0", b"0", b"0", b"1")
_ZERO_SETTLES = _bulk(b"0")


def _where(url: str) -> str:
    # Never echo credentials: the URL may carry a password.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or parts.path}" + (
        f":{parts.port}" if parts.port else ""
    )


class _KeyState:
    """What one GuardKey's commands need, encoded once: its tag and one day's three keys."""

    __slots__ = ("cached", "tag")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        # (day, encoded keys) in one attribute, so threads never see a torn pair.
        self.cached: tuple[str, bytes] = ("", b"")

    def keys_of(self, day: str) -> bytes:
        cached = self.cached
        if day == cached[0]:
            return cached[1]
        tag = self.tag.encode()
        keys = _bulks(tag + b":rl", tag + b":b:" + day.encode(), tag + b":r:" + day.encode())
        self.cached = (day, keys)
        return keys


class _Settlement:
    """A settlement waiting to ride in the next script: its keys and arguments, encoded."""

    __slots__ = ("args", "keys", "ticket_id")

    def __init__(self, ticket_id: str, keys: bytes, args: bytes) -> None:
        self.ticket_id = ticket_id
        self.keys = keys
        self.args = args


class _Connections:
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


_LIVE: weakref.WeakSet[RedisGuard] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:  # pragma: no cover - runs at interpreter exit
    for guard in list(_LIVE):
        try:
            guard.flush()
        except Exception as exc:  # exiting: log and go on
            _log.warning("budget settlements not flushed at exit: %s", exc)


class RedisGuard:
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
        client: redis.Redis | None = None,
        aclient: redis.asyncio.Redis | None = None,
    ) -> None:
        """Build a Redis guard (no connection is made until the first call).

        Args:
            url: `redis://[[user]:password@]host:port/db`, `rediss://…` or `unix://…`.
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
            client: A ready `redis.Redis`; its connection class and settings are used.
            aclient: A ready `redis.asyncio.Redis` for the async methods.
        """
        self._url = url
        self._where = _where(url)
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
        self._client = client
        self._aclient = aclient
        self._conns: _Connections | None = None
        # The loop our own async client was opened on (None: a caller-provided client).
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._ids = _TicketIds()
        self._key_states: dict[GuardKey, _KeyState] = {}
        self._budget_args: dict[Decimal, bytes] = {}
        self._limit_args: dict[RateLimitSpec, tuple[bytes, float, float, int]] = {}
        self._lock = threading.Lock()
        # Settlements not yet in Redis, oldest first; `_oldest` is when the first was queued.
        self._pending: list[_Settlement] = []
        self._oldest = 0.0
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        _LIVE.add(self)

    # --- connections -----------------------------------------------------------------------

    def _connection_kwargs(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retry: a retried script may have run already, and a failed admit
        # must fail closed at once rather than after seconds of backoff.
        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    def _sync(self) -> Any:
        """The redis-py client (seed and ledger reads; not the hot path)."""
        if self._client is None:
            import redis

            with self._lock:
                if self._client is None:
                    pool = redis.BlockingConnectionPool.from_url(
                        self._url,
                        max_connections=self._max_connections,
                        timeout=self._pool_timeout,
                        **self._connection_kwargs(),
                    )
                    self._client = redis.Redis.from_pool(pool)
        if not self._scripts:
            client = self._client
            self._scripts = {
                "seed": client.register_script(_SEED),
                "ledger": client.register_script(_LEDGER),
            }
        return self._client

    def _connections(self) -> _Connections:
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
                            self._url, **self._connection_kwargs()
                        )
                        cls, kwargs = parsed.connection_class, dict(parsed.connection_kwargs)
                    self._conns = _Connections(
                        lambda: cls(**kwargs), self._max_connections, self._pool_timeout
                    )
                conns = self._conns
        return conns

    def _run(self, command: bytes) -> Any:
        """Send one packed EVALSHA of `_APPLY` and read its reply: one round trip."""
        import redis

        conns = self._connections()
        conn = conns.get()
        try:
            conn.send_packed_command([command], check_health=False)
            try:
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                # A restarted or flushed server: load the script, run the command again.
                conn.send_command("SCRIPT", "LOAD", _APPLY, check_health=False)
                conn.read_response()
                conn.send_packed_command([command], check_health=False)
                reply = conn.read_response()
        except BaseException:
            conns.discard(conn)
            raise
        conns.put(conn)
        return reply

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
                **self._connection_kwargs(),
            )
            self._aclient = redis.asyncio.Redis.from_pool(apool)
        return self._aclient

    async def _arun(self, command: bytes) -> Any:
        import redis

        pool = self._async().connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command([command], check_health=False)
            try:
                reply = await conn.read_response()
            except redis.exceptions.NoScriptError:
                await conn.send_command("SCRIPT", "LOAD", _APPLY, check_health=False)
                await conn.read_response()
                await conn.send_packed_command([command], check_health=False)
                reply = await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return reply

    # --- keys and arguments ----------------------------------------------------------------

    def _state(self, key: GuardKey) -> _KeyState:
        state = self._key_states.get(key)
        if state is None:
            enc = "|".join(quote(part, safe="") for part in (key.tenant, key.context, key.purpose))
            state = self._key_states[key] = _KeyState(f"{self._prefix}:{{{enc}}}")
        return state

    def _tag(self, key: GuardKey) -> str:
        return self._state(key).tag

    def _ledger_ttl(self, now: float) -> int:
        return int(self._days.seconds_left(now)) + _DAY_KEY_GRACE_S

    def _budget_of(self, cap: Decimal) -> bytes:
        args = self._budget_args.get(cap)
        if args is None:
            args = self._budget_args[cap] = _bulks(b"1", b"%d" % to_nanos(cap, up=False))
        return args

    def _limit_of(self, spec: RateLimitSpec) -> tuple[bytes, float, float, int]:
        """(encoded bucket arguments, token capacity, token rate, token capacity as int)."""
        found = self._limit_args.get(spec)
        if found is None:
            req_cap, req_rate, tok_cap, tok_rate = _capacities(spec)
            refill_s = max(
                req_cap / req_rate if req_rate else 0.0, tok_cap / tok_rate if tok_rate else 0.0
            )
            args = _bulks(
                repr(req_cap).encode(),
                repr(req_rate).encode(),
                repr(tok_cap).encode(),
                repr(tok_rate).encode(),
                b"%d" % (int(refill_s * 1000) + 1000),
            )
            found = self._limit_args[spec] = (args, tok_cap, tok_rate, int(tok_cap))
        return found

    def _admit_command(
        self,
        key: GuardKey,
        tokens: int,
        reserve_usd: Decimal | None,
        rate_limit: RateLimitSpec | None,
        budget: BudgetSpec | None,
        wait_s: float,
        pending: list[_Settlement],
    ) -> tuple[Ticket, bytes]:
        now = self._clock.time()
        day = self._days.of(now)
        tid = self._ids.next()
        ticket = Ticket(key=key, id=tid, rate_limit=rate_limit, budget=budget)
        take = 0
        if rate_limit is not None:
            limit_args, _, tok_rate, tok_cap_int = self._limit_of(rate_limit)
            if tok_rate:
                take = min(max(tokens, 0), tok_cap_int)
        else:
            limit_args = _NO_LIMIT
        need = 0
        if budget is not None:
            if reserve_usd is None:
                raise BudgetUnverifiable(key, "no price is known for the model")
            need = max(to_nanos(reserve_usd), 0)
            budget_args = self._budget_of(budget.daily_usd)
            ticket.reserved_nanos = need
            ticket.reserved_usd = reserve_usd
            ticket.cap_usd = budget.daily_usd
            ticket.day = day
        else:
            budget_args = _NO_BUDGET
        ticket.tokens = take
        wait = wait_s if wait_s < 1e9 else 1e9
        dynamic = b"$%d\r\n%b\r\n" % (len(tid), tid.encode())
        parts = [
            b"*%d\r\n" % (3 + 3 * (len(pending) + 1) + 1 + 6 * len(pending) + 14),
            _EVALSHA,
            _bulk(b"%d" % (3 * (len(pending) + 1))),
        ]
        parts.extend([s.keys for s in pending])
        parts.append(self._state(key).keys_of(day))
        parts.append(_bulk(b"%d" % len(pending)))
        parts.extend([s.args for s in pending])
        parts.append(
            _bulks(
                repr(now).encode(),
                b"%d" % take,
                repr(float(wait)).encode(),
                b"%d" % need,
            )
        )
        parts.append(dynamic)
        parts.append(_bulks(repr(now + self._ttl).encode(), b"%d" % self._ledger_ttl(now)))
        parts.append(budget_args)
        parts.append(limit_args)
        return ticket, b"".join(parts)

    def _flush_command(self, pending: list[_Settlement]) -> bytes:
        n = len(pending)
        return b"".join(
            [
                b"*%d\r\n" % (3 + 3 * n + 1 + 6 * n),
                _EVALSHA,
                _bulk(b"%d" % (3 * n)),
                *[s.keys for s in pending],
                _bulk(b"%d" % n),
                *[s.args for s in pending],
            ]
        )

    def _admitted(self, ticket: Ticket, reply: list[Any]) -> Ticket:
        status = int(reply[0])
        key = ticket.key
        if status == 1:
            raise RateLimited(key, float(reply[1]), bucket=_text(reply[2]))
        if status == 2:
            budget = ticket.budget
            assert budget is not None
            raise BudgetExceeded(
                key,
                budget.daily_usd,
                from_nanos(int(reply[1])),
                from_nanos(int(reply[2])),
                requested=ticket.reserved_usd,
                day=ticket.day,
            )
        wait = reply[1]
        ticket.wait_s = 0.0 if wait == b"0" else float(wait)
        if ticket.day is not None:
            ticket.spent_nanos = int(reply[2])
        return ticket

    def _unavailable(self, key: GuardKey, budget: BudgetSpec | None, exc: Exception) -> Exception:
        reason = f"state store {self._where} unavailable: {type(exc).__name__}: {exc}"
        if budget is not None:
            return BudgetUnverifiable(key, reason)
        return GuardUnavailable(key, reason)

    # --- the queue of settlements ----------------------------------------------------------

    def _take_pending(self) -> list[_Settlement]:
        if not self._pending:
            return []
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _requeue(self, pending: list[_Settlement]) -> None:
        if pending:
            with self._lock:
                if not self._pending:
                    self._oldest = self._clock.monotonic()
                self._pending[:0] = pending

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
        tid = ticket.id
        keys = state.keys_of(day)
        settlement = _Settlement(
            tid,
            keys,
            b"$%d\r\n%b\r\n" % (len(tid), tid.encode())
            + _bulks(
                b"%d" % charge,
                b"%d" % delta,
                b"%d" % tok_cap,
                b"%d" % ticket.reserved_nanos,
                b"%d" % self._ledger_ttl(self._clock.time()),
            ),
        )
        now = self._clock.monotonic()
        with self._lock:
            if not self._pending:
                self._oldest = now
            self._pending.append(settlement)
            full = len(self._pending) >= self._max_pending
        if self._background and self._flusher is None:
            self._start_flusher()
        return full

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._stop.clear()
            self._flusher = threading.Thread(
                target=self._flush_loop, name="comptroller-settle-flush", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        # Real time paces the loop; `flush_due` decides on the guard's clock. The thread
        # ends after a long idle spell; the next settlement starts a new one.
        interval = max(self._flush_s / 2, 0.001)
        idle_wakes = 0
        while not self._stop.wait(interval):
            try:
                self.flush_due()
            except Exception as exc:  # kept for the next admit or flush
                _log.warning("budget settlements not flushed, state store %s: %s", self._where, exc)
            idle_wakes = 0 if self._pending else idle_wakes + 1
            if idle_wakes * interval >= _FLUSH_THREAD_IDLE_S:
                with self._lock:
                    if not self._pending:
                        self._flusher = None
                        return
                idle_wakes = 0
        with self._lock:
            self._flusher = None

    def flush_due(self) -> int:
        """Flush the queued settlements if the oldest has waited `settle_flush_s`.

        Returns:
            The number of settlements delivered.

        Raises:
            redis.RedisError: Redis could not be reached (the queue is kept).
        """
        if self._pending and self._clock.monotonic() - self._oldest >= self._flush_s:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Deliver every queued settlement now (one round trip); returns how many.

        Raises:
            redis.RedisError: Redis could not be reached (the queue is kept).
        """
        pending = self._take_pending()
        if not pending:
            return 0
        try:
            self._run(self._flush_command(pending))
        except BaseException:
            self._requeue(pending)
            raise
        return len(pending)

    async def aflush(self) -> int:
        """Async `flush`, on the async connections."""
        pending = self._take_pending()
        if not pending:
            return 0
        try:
            await self._arun(self._flush_command(pending))
        except BaseException:
            self._requeue(pending)
            raise
        return len(pending)

    @property
    def pending_settlements(self) -> int:
        """Settlements queued for Redis (the next admit or flush delivers them)."""
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
        """See `Guard.admit`: one round trip, carrying the queued settlements."""
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        pending = self._take_pending()
        try:
            ticket, command = self._admit_command(
                key, tokens, reserve_usd, rate_limit, budget, wait_s, pending
            )
        except BaseException:
            self._requeue(pending)
            raise
        import redis

        try:
            reply = self._run(command)
        except (redis.RedisError, OSError, RuntimeError) as exc:
            self._requeue(pending)
            raise self._unavailable(key, budget, exc) from exc
        except BaseException:
            self._requeue(pending)
            raise
        self._admitted(ticket, reply)
        if ticket.wait_s > 0:
            try:
                self._clock.sleep(ticket.wait_s)
            except BaseException:
                self.release(ticket)
                raise
        return ticket

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
        """See `Guard.aadmit`: one round trip, carrying the queued settlements."""
        if rate_limit is None and budget is None:
            return Ticket(key=key, id=self._ids.next())
        pending = self._take_pending()
        try:
            ticket, command = self._admit_command(
                key, tokens, reserve_usd, rate_limit, budget, wait_s, pending
            )
        except BaseException:
            self._requeue(pending)
            raise
        import redis

        try:
            reply = await self._arun(command)
        except (redis.RedisError, OSError, RuntimeError) as exc:
            self._requeue(pending)
            raise self._unavailable(key, budget, exc) from exc
        except BaseException:
            self._requeue(pending)
            raise
        self._admitted(ticket, reply)
        if ticket.wait_s > 0:
            try:
                await self._clock.asleep(ticket.wait_s)
            except BaseException:
                await self.arelease(ticket)
                raise
        return ticket

    def _settle_local(self, ticket: Ticket, cost_usd: Decimal | None) -> int:
        charge = ticket.reserved_nanos if cost_usd is None else max(to_nanos(cost_usd), 0)
        if ticket.day is not None:
            # The caller's view: spend seen at admission plus this call (other processes'
            # spend since is in Redis, not here).
            ticket.spent_nanos = (ticket.spent_nanos or 0) + charge
        return charge

    def settle(self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None) -> None:
        """See `Guard.settle`: applied to the ticket now, delivered with the next admit."""
        if ticket.state != "open":
            return
        ticket.state = "settled"
        if self._queue(ticket, self._settle_local(ticket, cost_usd), tokens):
            self._flush_quietly()

    def release(self, ticket: Ticket) -> None:
        """See `Guard.release`: delivered with the next admit (until then, still booked)."""
        if ticket.state != "open":
            return
        ticket.state = "released"
        if self._queue(ticket, 0, None):
            self._flush_quietly()

    async def asettle(
        self, ticket: Ticket, *, cost_usd: Decimal | None, tokens: int | None
    ) -> None:
        """See `Guard.asettle`."""
        if ticket.state != "open":
            return
        ticket.state = "settled"
        if self._queue(ticket, self._settle_local(ticket, cost_usd), tokens):
            await self._aflush_quietly()

    async def arelease(self, ticket: Ticket) -> None:
        """See `Guard.arelease`."""
        if ticket.state != "open":
            return
        ticket.state = "released"
        if self._queue(ticket, 0, None):
            await self._aflush_quietly()

    def _flush_quietly(self) -> None:
        # The call already succeeded: never fail it for the ledger. The queue is kept (its
        # reservations stay booked, or expire after the TTL) until a later delivery.
        import redis

        try:
            self.flush()
        except (redis.RedisError, OSError, RuntimeError) as exc:
            _log.warning(
                "budget settlements kept, state store %s unavailable: %s", self._where, exc
            )

    async def _aflush_quietly(self) -> None:
        import redis

        try:
            await self.aflush()
        except (redis.RedisError, OSError, RuntimeError) as exc:
            _log.warning(
                "budget settlements kept, state store %s unavailable: %s", self._where, exc
            )

    def today(self) -> str:
        """Today's ISO date in the budget time zone."""
        return self._days.of(self._clock.time())

    def seed(self, spend_by_key: Mapping[GuardKey, Decimal], *, day: str | None = None) -> None:
        """See `Guard.seed` (one pipelined round trip for all keys).

        Raises:
            GuardUnavailable: Redis cannot be reached.
        """
        if not spend_by_key:
            return
        now = self._clock.time()
        day = day or self._days.of(now)
        ttl = str(self._ledger_ttl(now))
        import redis

        try:
            self.flush()  # this process's settlements first, as if delivered at once
            client = self._sync()
            seed = self._scripts["seed"]
            pipe = client.pipeline(transaction=False)
            for key, spent in spend_by_key.items():
                ledger_key = f"{self._tag(key)}:b:{day}"
                seed(keys=[ledger_key], args=[str(to_nanos(spent)), ttl], client=pipe)
            pipe.execute()
        except redis.RedisError as exc:
            first = next(iter(spend_by_key))
            raise GuardUnavailable(
                first, f"state store {self._where} unavailable while seeding: {exc}"
            ) from exc

    def ledger(self, key: GuardKey, *, day: str | None = None) -> LedgerState:
        """See `Guard.ledger` (delivers the queued settlements first).

        Raises:
            GuardUnavailable: Redis cannot be reached.
        """
        day = day or self.today()
        import redis

        try:
            self.flush()
            client = self._sync()
            read = self._scripts["ledger"]
            tag = self._tag(key)
            spent, reserved = read(
                keys=[f"{tag}:b:{day}", f"{tag}:r:{day}"],
                args=[repr(self._clock.time())],
                client=client,
            )
        except redis.RedisError as exc:
            raise GuardUnavailable(key, f"state store {self._where} unavailable: {exc}") from exc
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
        self._stop.set()
        self._flush_quietly()
        if self._conns is not None:
            self._conns.close()
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Deliver the queued settlements, then close the async client's connections."""
        if self._pending:
            await self._aflush_quietly()
        if self._aclient is not None:
            await self._aclient.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
