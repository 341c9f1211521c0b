"""The Redis backend's wire format, without I/O: scripts, keys, commands and replies.

Commands are packed RESP bytes built once per key and day and per spec (the hot path
concatenates bytes); the drivers in `_redis.py` send them and hand the replies back.

Keys (all of one (tenant, context, purpose[, attribute]) share a hash tag, so a script that
touches one key's state runs in one Redis Cluster slot; `<tag>` is
`<tenant>|<context>|<purpose>`, then `|<attribute>` for a budget by attribution, each part
percent-encoded)::

    <prefix>:{<tag>}:rl          token buckets (expire when full)
    <prefix>:{<tag>}:b:<day>     ledger: spent, reserved, seeding marker
    <prefix>:{<tag>}:r:<day>     reservations: <ticket>:<nanos> by expiry
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from hashlib import sha1
from importlib import resources
from typing import Any
from urllib.parse import quote

from comptroller.control._errors import BudgetUnverifiable, RateLimited
from comptroller.control._guard._kernel import GuardKey, Ticket, _capacities, _exceeded, to_nanos
from comptroller.control._profile_types import RateLimitSpec


def _script(name: str) -> str:
    # The shared functions are prepended: each script is self-contained on the server.
    here = resources.files("comptroller.control._guard")
    return (here / "_common.lua").read_text() + (here / name).read_text()


APPLY = _script("_apply.lua")
SEED = _script("_seed.lua")
LEDGER = _script("_ledger.lua")
SCRIPTS = (APPLY, SEED, LEDGER)

# Reply statuses of the apply script.
ADMITTED, RATE_LIMITED, EXCEEDED, UNSEEDED = 0, 1, 2, 3

# Budget modes of an admit: none, the ledger must have been seeded, or adopt an unseeded one.
MODE_REQUIRE_SEEDED, MODE_ADOPT = b"1", b"2"


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def bulks(*values: bytes) -> bytes:
    return b"".join([b"$%d\r\n%b\r\n" % (len(v), v) for v in values])


def _evalsha(script: str) -> bytes:
    return bulks(b"EVALSHA", sha1(script.encode()).hexdigest().encode())


_SIX = b"$%d\r\n%b\r\n" * 6
_SEVEN = b"$%d\r\n%b\r\n" * 7 + b"%b%b"  # then the encoded budget and limit arguments
EVALSHA_APPLY = _evalsha(APPLY)
_EVALSHA_SEED = _evalsha(SEED)
_EVALSHA_LEDGER = _evalsha(LEDGER)
NO_BUDGET = bulks(b"0", b"0")
NO_LIMIT = bulks(b"0", b"0", b"0", b"0", b"1")


def tag_of(prefix: str, key: GuardKey) -> str:
    """The hash-tagged stem of a key's Redis keys (separators in the parts are escaped)."""
    enc = "|".join(quote(part, safe="") for part in (key.tenant, key.context, key.purpose))
    if key.attribute:
        enc += "|" + quote(key.attribute, safe="")
    return f"{prefix}:{{{enc}}}"


class KeyState:
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
        keys = bulks(tag + b":rl", tag + b":b:" + day.encode(), tag + b":r:" + day.encode())
        self.cached = (day, keys)
        return keys

    def ledger_keys(self, day: str) -> bytes:
        tag = self.tag.encode()
        return bulks(tag + b":b:" + day.encode(), tag + b":r:" + day.encode())


class Settlement:
    """A settlement waiting to ride in the next script of its key: keys and arguments."""

    __slots__ = ("args", "keys", "tag")

    def __init__(self, tag: str, keys: bytes, args: bytes) -> None:
        self.tag = tag
        self.keys = keys
        self.args = args


def settlement_args(
    ticket_id: str, charge: int, delta: int, tok_cap: int, reserved: int, ttl: bytes
) -> bytes:
    tid = ticket_id.encode()
    charge_b, delta_b, cap_b, reserved_b = (
        b"%d" % charge,
        b"%d" % delta,
        b"%d" % tok_cap,
        b"%d" % reserved,
    )
    return _SIX % (
        len(tid),
        tid,
        len(charge_b),
        charge_b,
        len(delta_b),
        delta_b,
        len(cap_b),
        cap_b,
        len(reserved_b),
        reserved_b,
        len(ttl),
        ttl,
    )


def apply_command(pending: list[Settlement], admit: bytes | None, admit_keys: bytes) -> bytes:
    """One EVALSHA of the apply script: `pending` settlements (all of one tag), then the
    admit whose 14 encoded arguments are `admit` (None: settlements only)."""
    n = len(pending)
    n_keys = 3 * n + (3 if admit is not None else 0)
    parts = [
        b"*%d\r\n" % (3 + n_keys + 1 + 6 * n + (14 if admit is not None else 0)),
        EVALSHA_APPLY,
        bulk(b"%d" % n_keys),
    ]
    parts.extend([s.keys for s in pending])
    if admit is not None:
        parts.append(admit_keys)
    parts.append(bulk(b"%d" % n))
    parts.extend([s.args for s in pending])
    if admit is not None:
        parts.append(admit)
    return b"".join(parts)


def by_tag(pending: list[Settlement]) -> list[list[Settlement]]:
    """`pending` grouped by hash tag (one slot each), in queue order within each tag."""
    groups: dict[str, list[Settlement]] = {}
    for settlement in pending:
        groups.setdefault(settlement.tag, []).append(settlement)
    return list(groups.values())


def flush_commands(pending: list[Settlement]) -> list[bytes]:
    """One apply script per hash tag, in queue order within each tag (one pipeline)."""
    return [apply_command(group, None, b"") for group in by_tag(pending)]


def seed_commands(
    state_of: Callable[[GuardKey], KeyState],
    spend: Mapping[GuardKey, Decimal],
    day: str,
    ttl: int,
    now: float,
) -> list[bytes]:
    """One seed script per key (one slot each), to send as one pipeline."""
    tail = bulks(b"%d" % ttl, repr(now).encode())
    return [
        b"*8\r\n"
        + _EVALSHA_SEED
        + bulk(b"2")
        + state_of(key).ledger_keys(day)
        + bulk(b"%d" % max(to_nanos(spent), 0))
        + tail
        for key, spent in spend.items()
    ]


def ledger_command(state: KeyState, day: str, now: float) -> bytes:
    return (
        b"*6\r\n" + _EVALSHA_LEDGER + bulk(b"2") + state.ledger_keys(day) + bulk(repr(now).encode())
    )


def encode_budget(cap: Decimal, mode: bytes) -> bytes:
    return bulks(mode, b"%d" % to_nanos(cap, up=False))


def encode_limit(spec: RateLimitSpec) -> tuple[bytes, float, int]:
    """(encoded bucket arguments, token rate, token capacity as int)."""
    req_cap, req_rate, tok_cap, tok_rate = _capacities(spec)
    refill_s = max(req_cap / req_rate if req_rate else 0.0, tok_cap / tok_rate if tok_rate else 0.0)
    args = bulks(
        repr(req_cap).encode(),
        repr(req_rate).encode(),
        repr(tok_cap).encode(),
        repr(tok_rate).encode(),
        b"%d" % (int(refill_s * 1000) + 1000),
    )
    return args, tok_rate, int(tok_cap)


def admitted(ticket: Ticket, reply: list[Any]) -> Ticket:
    """The admit's reply applied to `ticket`, or the refusal it means raised."""
    status = reply[0]
    if status == RATE_LIMITED:
        bucket = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        raise RateLimited(ticket.key, float(reply[1]), bucket=bucket)
    if status == EXCEEDED:
        assert ticket.budget is not None
        raise _exceeded(ticket, ticket.budget, int(reply[1]), int(reply[2]))
    wait = reply[1]
    ticket.wait_s = 0.0 if wait == b"0" else float(wait)
    if ticket.day is not None:
        ticket.spent_nanos = int(reply[2])
    return ticket


class AdmitArgs:
    """The admit's 14 script arguments, the parts of each spec encoded once."""

    def __init__(self, reservation_ttl_s: float) -> None:
        self._reservation_ttl = reservation_ttl_s
        self.mode = MODE_ADOPT
        self._budgets: dict[Decimal, bytes] = {}
        self._limits: dict[RateLimitSpec, tuple[bytes, float, int]] = {}

    def require_seeded(self) -> None:
        """Budgeted admits refuse an unseeded ledger from now on (a ledger source exists)."""
        self.mode = MODE_REQUIRE_SEEDED
        self._budgets = {}

    def encode(
        self,
        ticket: Ticket,
        tokens: int,
        reserve_usd: Decimal | None,
        wait_s: float,
        now: float,
        ledger_ttl: bytes,
    ) -> bytes:
        """The admit's 14 script arguments; fills in what the ticket takes."""
        take = 0
        rate_limit, budget = ticket.rate_limit, ticket.budget
        if rate_limit is not None:
            found = self._limits.get(rate_limit)
            if found is None:
                found = self._limits[rate_limit] = encode_limit(rate_limit)
            limit_args, tok_rate, tok_cap = found
            if tok_rate:
                take = min(max(tokens, 0), tok_cap)
        else:
            limit_args = NO_LIMIT
        need = 0
        if budget is not None:
            if reserve_usd is None:
                raise BudgetUnverifiable(ticket.key, "no price is known for the model")
            need = max(to_nanos(reserve_usd), 0)
            budget_args = self._budgets.get(budget.daily_usd)
            if budget_args is None:
                budget_args = encode_budget(budget.daily_usd, self.mode)
                self._budgets[budget.daily_usd] = budget_args
            ticket.reserved_nanos = need
            ticket.reserved_usd = reserve_usd
            ticket.cap_usd = budget.daily_usd
        else:
            budget_args = NO_BUDGET
        ticket.tokens = take
        # One formatting of the per-call arguments (the hot path): now, take, longest wait,
        # need, ticket id, reservation expiry, ledger ttl.
        now_b = repr(now).encode()
        take_b = b"%d" % take
        wait_b = repr(float(wait_s if wait_s < 1e9 else 1e9)).encode()
        need_b = b"%d" % need
        tid_b = ticket.id.encode()
        expiry_b = repr(now + self._reservation_ttl).encode()
        return _SEVEN % (
            len(now_b),
            now_b,
            len(take_b),
            take_b,
            len(wait_b),
            wait_b,
            len(need_b),
            need_b,
            len(tid_b),
            tid_b,
            len(expiry_b),
            expiry_b,
            len(ledger_ttl),
            ledger_ttl,
            budget_args,
            limit_args,
        )
