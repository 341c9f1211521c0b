from __future__ import annotations

import asyncio
import json
import pickle
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from comptroller.config import load_settings
from comptroller.control import (
    BudgetError,
    BudgetExceeded,
    BudgetSpec,
    BudgetUnverifiable,
    ControlError,
    ExhaustedFallbacks,
    GuardKey,
    MemoryGuard,
    ProviderError,
    RateLimited,
    RateLimitSpec,
    RedisGuard,
)
from comptroller.control._guard import BudgetReconciler, Ticket, make_guard, make_reconciler
from comptroller.control.testing import FakeClock
from comptroller.errors import ConfigError

KEY = GuardKey("acme-eu", "support", "reasoning")
CAP = BudgetSpec(daily_usd=Decimal("1.00"))
# 2026-01-01T12:00:00Z
NOON_UTC = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=NOON_UTC)


@pytest.fixture
def guard(clock: FakeClock) -> MemoryGuard:
    return MemoryGuard(clock=clock)


def reserve(guard: MemoryGuard, usd: str, key: GuardKey = KEY, budget: BudgetSpec = CAP) -> Ticket:
    return guard.admit(key, tokens=0, reserve_usd=Decimal(usd), rate_limit=None, budget=budget)


# --- budgets -------------------------------------------------------------------------------


def test_reservations_admitted_until_the_cap_then_budget_exceeded(guard: MemoryGuard) -> None:
    first = reserve(guard, "0.40")
    second = reserve(guard, "0.40")

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.30")

    err = caught.value
    assert (err.key, err.cap, err.spent, err.reserved) == (
        KEY,
        Decimal("1.00"),
        Decimal(0),
        Decimal("0.8"),
    )
    assert err.requested == Decimal("0.30")
    assert err.day == "2026-01-01"
    message = str(err)
    for fragment in ("acme-eu", "support", "reasoning", "$1", "$0.8", "$0.3", "2026-01-01"):
        assert fragment in message
    assert first.reserved_usd == second.reserved_usd == Decimal("0.40")


def test_budget_exceeded_counts_settled_spend(guard: MemoryGuard) -> None:
    ticket = reserve(guard, "0.90")
    guard.settle(ticket, cost_usd=Decimal("0.75"), tokens=None)

    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.30")

    assert caught.value.spent == Decimal("0.75")
    assert caught.value.reserved == Decimal(0)
    assert reserve(guard, "0.25").reserved_usd == Decimal("0.25")


def test_budget_errors_pickle_with_their_numbers(guard: MemoryGuard) -> None:
    reserve(guard, "0.90")
    with pytest.raises(BudgetExceeded) as caught:
        reserve(guard, "0.30")

    clone = pickle.loads(pickle.dumps(caught.value))

    assert (clone.key, clone.cap, clone.reserved, clone.requested) == (
        KEY,
        Decimal("1.00"),
        Decimal("0.9"),
        Decimal("0.30"),
    )
    assert str(clone) == str(caught.value)


def test_exhausting_one_context_leaves_another_context_untouched(guard: MemoryGuard) -> None:
    context_a = GuardKey("acme-eu", "platform", "reasoning")
    context_b = GuardKey("acme-eu", "worlds", "reasoning")
    ticket = reserve(guard, "1.00", key=context_a)
    guard.settle(ticket, cost_usd=Decimal("1.00"), tokens=None)
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.01", key=context_a)

    other = reserve(guard, "1.00", key=context_b)

    assert other.spent_usd == Decimal(0)
    assert guard.ledger(context_b).reserved_usd == Decimal("1.00")
    assert guard.ledger(context_a).spent_usd == Decimal("1.00")


def test_exhausting_one_purpose_leaves_another_purpose_and_tenant_untouched(
    guard: MemoryGuard,
) -> None:
    guard.settle(reserve(guard, "1.00"), cost_usd=Decimal("1.00"), tokens=None)

    reserve(guard, "1.00", key=GuardKey("acme-eu", "support", "scoring"))
    reserve(guard, "1.00", key=GuardKey("globex", "support", "reasoning"))


def test_day_rolls_over_at_local_midnight_of_the_budget_time_zone() -> None:
    # 10:30 UTC on 1 January is 23:30 in Auckland (UTC+13): the local day ends in 30 minutes
    # while the UTC day has 13.5 hours to go.
    clock = FakeClock(start=datetime(2026, 1, 1, 10, 30, tzinfo=UTC).timestamp())
    auckland = MemoryGuard(clock=clock, timezone="Pacific/Auckland")
    utc = MemoryGuard(clock=clock, timezone="UTC")
    for guard in (auckland, utc):
        guard.settle(reserve(guard, "1.00"), cost_usd=Decimal("1.00"), tokens=None)
        with pytest.raises(BudgetExceeded):
            reserve(guard, "0.01")

    clock.advance(3600)

    ticket = reserve(auckland, "1.00")
    assert ticket.day == "2026-01-02"
    assert auckland.ledger(KEY, day="2026-01-01").spent_usd == Decimal("1.00")
    with pytest.raises(BudgetExceeded) as caught:
        reserve(utc, "0.01")
    assert caught.value.day == "2026-01-01"


def test_settle_after_midnight_charges_the_day_of_the_reservation(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    ticket = reserve(guard, "0.50")
    clock.advance(13 * 3600)  # past midnight UTC

    guard.settle(ticket, cost_usd=Decimal("0.20"), tokens=None)

    assert guard.ledger(KEY, day="2026-01-01").spent_usd == Decimal("0.20")
    assert guard.ledger(KEY).spent_usd == Decimal(0)


def test_settling_yesterdays_ticket_keeps_todays_ledger(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    late = reserve(guard, "0.50")
    clock.advance(13 * 3600)  # past midnight UTC
    today = reserve(guard, "0.40")
    guard.settle(today, cost_usd=Decimal("0.30"), tokens=None)

    guard.settle(late, cost_usd=Decimal("0.20"), tokens=None)

    assert guard.ledger(KEY).spent_usd == Decimal("0.3")
    assert guard.ledger(KEY, day="2026-01-01").spent_usd == Decimal("0.2")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.71")


def test_release_on_error_frees_the_reservation_and_charges_nothing(guard: MemoryGuard) -> None:
    ticket = reserve(guard, "0.80")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.80")

    guard.release(ticket)

    assert guard.ledger(KEY).reserved_usd == Decimal(0)
    assert guard.ledger(KEY).spent_usd == Decimal(0)
    assert ticket.state == "released"
    reserve(guard, "0.80")


def test_settle_without_known_cost_charges_the_reservation(guard: MemoryGuard) -> None:
    ticket = reserve(guard, "0.30")

    guard.settle(ticket, cost_usd=None, tokens=None)

    assert guard.ledger(KEY).spent_usd == Decimal("0.30")
    assert ticket.spent_usd == Decimal("0.30")


def test_ticket_spend_is_the_ledgers_at_admission_then_after_settle(
    guard: MemoryGuard,
) -> None:
    guard.settle(reserve(guard, "0.30"), cost_usd=Decimal("0.25"), tokens=None)
    ticket = reserve(guard, "0.30")
    unbudgeted = guard.admit(
        KEY,
        tokens=0,
        reserve_usd=None,
        rate_limit=RateLimitSpec(requests_per_interval=60),
        budget=None,
    )

    assert ticket.spent_usd == Decimal("0.25")
    guard.settle(ticket, cost_usd=Decimal("0.5"), tokens=None)
    assert ticket.spent_usd == Decimal("0.75")
    assert unbudgeted.spent_usd is None


def test_keys_that_compare_equal_share_one_ledger(guard: MemoryGuard) -> None:
    guard.settle(reserve(guard, "0.60"), cost_usd=Decimal("0.60"), tokens=None)

    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.60", key=GuardKey("acme-eu", "support", "reasoning"))


def test_second_settle_or_release_of_a_ticket_is_ignored(guard: MemoryGuard) -> None:
    ticket = reserve(guard, "0.30")
    guard.settle(ticket, cost_usd=Decimal("0.10"), tokens=None)

    guard.settle(ticket, cost_usd=Decimal("0.10"), tokens=None)
    guard.release(ticket)

    assert guard.ledger(KEY).spent_usd == Decimal("0.10")
    assert guard.ledger(KEY).reserved_usd == Decimal(0)


def test_unsettled_reservation_expires_after_its_ttl(clock: FakeClock) -> None:
    guard = MemoryGuard(clock=clock, reservation_ttl_s=60)
    reserve(guard, "1.00")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.10")

    clock.advance(61)

    reserve(guard, "0.10")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")


def test_settle_after_expiry_still_charges_the_spend(clock: FakeClock) -> None:
    guard = MemoryGuard(clock=clock, reservation_ttl_s=60)
    late = reserve(guard, "0.50")
    clock.advance(61)
    reserve(guard, "0.10")  # sweeps the expired reservation

    guard.settle(late, cost_usd=Decimal("0.40"), tokens=None)

    assert guard.ledger(KEY).spent_usd == Decimal("0.4")
    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")


def test_budgeted_call_without_a_price_is_unverifiable_never_admitted(
    guard: MemoryGuard,
) -> None:
    with pytest.raises(BudgetUnverifiable, match="no price"):
        guard.admit(KEY, tokens=10, reserve_usd=None, rate_limit=None, budget=CAP)

    assert guard.ledger(KEY).reserved_usd == Decimal(0)


def test_unbudgeted_call_without_a_price_is_admitted(guard: MemoryGuard) -> None:
    ticket = guard.admit(KEY, tokens=10, reserve_usd=None, rate_limit=None, budget=None)

    guard.settle(ticket, cost_usd=None, tokens=10)
    assert ticket.state == "settled"


def test_rounding_never_lets_spend_exceed_the_cap(guard: MemoryGuard) -> None:
    cap = BudgetSpec(daily_usd=Decimal("0.0000000035"))  # 3.5 nano-dollars

    # The reservation rounds up to 2 nano-dollars and the cap down to 3: only one fits.
    reserve(guard, "0.0000000011", budget=cap)
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.0000000011", budget=cap)


def test_seed_raises_spend_and_never_lowers_it(guard: MemoryGuard) -> None:
    guard.settle(reserve(guard, "0.50"), cost_usd=Decimal("0.30"), tokens=None)

    guard.seed({KEY: Decimal("0.70")})
    assert guard.ledger(KEY).spent_usd == Decimal("0.7")
    guard.seed({KEY: Decimal("0.10")})
    assert guard.ledger(KEY).spent_usd == Decimal("0.7")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.40")


# --- rate limits ---------------------------------------------------------------------------


def limit(
    requests: int | None = None,
    tokens: int | None = None,
    burst: int | None = None,
    interval_s: float = 60.0,
) -> RateLimitSpec:
    return RateLimitSpec(
        requests_per_interval=requests,
        tokens_per_interval=tokens,
        burst=burst,
        interval_s=interval_s,
    )


def call(guard: MemoryGuard, spec: RateLimitSpec, tokens: int = 0, wait_s: float = 0.0) -> Ticket:
    return guard.admit(
        KEY, tokens=tokens, reserve_usd=None, rate_limit=spec, budget=None, wait_s=wait_s
    )


def test_request_bucket_admits_its_burst_then_refuses_at_once(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(requests=60, burst=5)  # one per second, bursts of five
    for _ in range(5):
        call(guard, spec)

    with pytest.raises(RateLimited) as caught:
        call(guard, spec)

    assert caught.value.bucket == "requests"
    assert caught.value.retry_after_s == pytest.approx(1.0)
    assert clock.sleeps == []
    clock.advance(1.0)
    call(guard, spec)


def test_request_bucket_refills_at_its_rate_up_to_its_burst(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(requests=60, burst=2)
    call(guard, spec)
    call(guard, spec)
    clock.advance(3600)  # long idle: refills to the burst, not beyond

    call(guard, spec)
    call(guard, spec)
    with pytest.raises(RateLimited):
        call(guard, spec)


def test_tokens_bucket_refuses_a_call_whose_estimate_does_not_fit(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(tokens=6_000)  # 100 tokens per second
    call(guard, spec, tokens=5_000)

    with pytest.raises(RateLimited) as caught:
        call(guard, spec, tokens=2_000)

    assert caught.value.bucket == "tokens"
    assert caught.value.retry_after_s == pytest.approx(10.0)
    call(guard, spec, tokens=1_000)


def test_bounded_wait_sleeps_for_room_and_reports_the_wait(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(requests=60, burst=1)
    call(guard, spec)

    ticket = call(guard, spec, wait_s=2.0)

    assert ticket.wait_s == pytest.approx(1.0)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_wait_longer_than_allowed_raises_at_once_and_takes_nothing(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(requests=60, burst=1)
    call(guard, spec)

    with pytest.raises(RateLimited) as caught:
        call(guard, spec, wait_s=0.5)

    assert caught.value.retry_after_s == pytest.approx(1.0)
    assert clock.sleeps == []
    clock.advance(1.0)
    assert call(guard, spec).wait_s == 0.0


class _FrozenClock(FakeClock):
    """Sleeping records the wait but time stands still (the sleepers wait concurrently)."""

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_concurrent_waiters_queue_behind_each_other() -> None:
    clock = _FrozenClock(start=NOON_UTC)
    guard = MemoryGuard(clock=clock)
    spec = limit(requests=60, burst=1)
    call(guard, spec)

    waits = [call(guard, spec, wait_s=10).wait_s for _ in range(3)]

    assert waits == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    with pytest.raises(RateLimited):
        call(guard, spec, wait_s=3.5)


def test_token_estimate_is_corrected_after_the_call(guard: MemoryGuard) -> None:
    spec = limit(tokens=6_000)
    ticket = call(guard, spec, tokens=5_000)
    with pytest.raises(RateLimited):
        call(guard, spec, tokens=4_000)

    guard.settle(ticket, cost_usd=None, tokens=1_500)  # 3,500 tokens come back

    call(guard, spec, tokens=4_000)


def test_tokens_above_the_estimate_are_taken_after_the_call(guard: MemoryGuard) -> None:
    spec = limit(tokens=6_000)
    ticket = call(guard, spec, tokens=1_000)
    guard.settle(ticket, cost_usd=None, tokens=5_500)

    with pytest.raises(RateLimited):
        call(guard, spec, tokens=1_000)


def test_call_larger_than_the_bucket_waits_for_a_full_bucket(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(tokens=600)
    call(guard, spec, tokens=100)

    with pytest.raises(RateLimited) as caught:
        call(guard, spec, tokens=10_000)

    assert caught.value.retry_after_s == pytest.approx(10.0)
    clock.advance(10)
    call(guard, spec, tokens=10_000)


def test_rate_limited_call_reserves_no_budget(guard: MemoryGuard) -> None:
    spec = limit(requests=60, burst=1)
    guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    with pytest.raises(RateLimited):
        guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")


def test_budget_refusal_takes_nothing_from_the_buckets(guard: MemoryGuard) -> None:
    spec = limit(requests=60, burst=1)
    with pytest.raises(BudgetExceeded):
        guard.admit(KEY, tokens=0, reserve_usd=Decimal("5"), rate_limit=spec, budget=CAP)

    guard.admit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)


async def test_async_admit_waits_on_the_clock_and_settles(
    guard: MemoryGuard, clock: FakeClock
) -> None:
    spec = limit(requests=60, burst=1)
    await guard.aadmit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    ticket = await guard.aadmit(
        KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP, wait_s=5
    )
    await guard.asettle(ticket, cost_usd=Decimal("0.05"), tokens=0)

    assert ticket.wait_s == pytest.approx(1.0)
    assert clock.sleeps == [pytest.approx(1.0)]
    assert guard.ledger(KEY).spent_usd == Decimal("0.05")


class _StallingClock(FakeClock):
    """A clock whose async sleep never ends (until the task is cancelled)."""

    async def asleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


async def test_cancelled_wait_releases_the_reservation() -> None:
    guard = MemoryGuard(clock=_StallingClock(start=NOON_UTC))
    spec = limit(requests=60, burst=1)
    await guard.aadmit(KEY, tokens=0, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)
    waiting = asyncio.create_task(
        guard.aadmit(
            KEY, tokens=0, reserve_usd=Decimal("0.5"), rate_limit=spec, budget=CAP, wait_s=5
        )
    )
    for _ in range(3):
        await asyncio.sleep(0)
    assert guard.ledger(KEY).reserved_usd == Decimal("0.6")

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert guard.ledger(KEY).reserved_usd == Decimal("0.1")


# --- factory and reconciliation --------------------------------------------------------------


def test_make_guard_builds_the_configured_backend(tmp_path: Path) -> None:
    memory = make_guard(load_settings(timezone="Europe/Paris"))
    redis_guard = make_guard(
        load_settings(control={"state_backend": "redis://127.0.0.1:1/0", "state_prefix": "x"})
    )

    assert isinstance(memory, MemoryGuard)
    assert memory.timezone == "Europe/Paris"
    assert isinstance(redis_guard, RedisGuard)


def test_make_guard_rejects_an_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="state_backend"):
        make_guard(load_settings(control={"state_backend": "memcached://x"}))


def test_reconciler_seeds_today_from_budget_state_rows(guard: MemoryGuard) -> None:
    rows = [
        {"tenant": "acme-eu", "context": "support", "purpose": "reasoning",
         "day": "2026-01-01", "spent_usd": "0.95", "cap_usd": "1"},
        {"tenant": "globex", "context": "", "purpose": "scoring",
         "day": "2026-01-01", "spent_usd": 0.25},
    ]  # fmt: skip

    seeded = BudgetReconciler(guard, lambda: rows).run_once()

    assert seeded == 2
    assert guard.ledger(KEY).spent_usd == Decimal("0.95")
    assert guard.ledger(GuardKey("globex", "", "scoring")).spent_usd == Decimal("0.25")
    with pytest.raises(BudgetExceeded):
        reserve(guard, "0.10")


@pytest.fixture
def budget_state_server() -> Iterator[tuple[str, list[str]]]:
    seen_auth: list[str] = []
    body = json.dumps(
        [{"tenant": "acme-eu", "context": "support", "purpose": "reasoning",
          "day": "2026-01-01", "spent_usd": "0.6"}]
    ).encode()  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_auth.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api/budget-state", seen_auth
    finally:
        server.shutdown()
        server.server_close()


def test_reconciler_reads_the_collector_budget_state_url(
    guard: MemoryGuard, budget_state_server: tuple[str, list[str]]
) -> None:
    url, seen_auth = budget_state_server

    BudgetReconciler(guard, url, token="s3cret").run_once()

    assert guard.ledger(KEY).spent_usd == Decimal("0.6")
    assert seen_auth == ["Bearer s3cret"]


def test_make_reconciler_only_with_a_configured_url(guard: MemoryGuard) -> None:
    assert make_reconciler(load_settings(), guard) is None
    reconciler = make_reconciler(
        load_settings(control={"budget_state_url": "http://127.0.0.1:1/api/budget-state"}), guard
    )
    assert isinstance(reconciler, BudgetReconciler)


# --- the error tree ------------------------------------------------------------------------


def test_exhausted_fallbacks_is_an_exception_group_and_a_control_error() -> None:
    attempts: list[Exception] = [
        RateLimited(KEY, 1.5, bucket="tokens"),
        ProviderError("openai", "gpt-4o", "upstream 503", status=503, retryable=True),
    ]
    caught: dict[str, BaseExceptionGroup[BaseException]] = {}

    try:
        raise ExhaustedFallbacks("every model of reasoning failed", attempts)
    except* RateLimited as group:
        caught["rate"] = group
    except* ProviderError as group:
        caught["provider"] = group

    assert [type(e) for e in caught["rate"].exceptions] == [RateLimited]
    assert isinstance(caught["provider"], ExhaustedFallbacks)
    assert isinstance(caught["provider"], ControlError)
    clone = pickle.loads(pickle.dumps(ExhaustedFallbacks("all failed", attempts)))
    assert [str(e) for e in clone.exceptions] == [str(e) for e in attempts]


def test_unverifiable_is_a_budget_error_but_not_exceeded() -> None:
    err = BudgetUnverifiable(KEY, "state store down")

    assert isinstance(err, BudgetError)
    assert not isinstance(err, BudgetExceeded)
    assert "fail closed" in str(err)
    assert pickle.loads(pickle.dumps(err)).reason == "state store down"


def test_rate_limited_pickles_with_its_retry_after() -> None:
    clone = pickle.loads(pickle.dumps(RateLimited(KEY, 2.25, bucket="tokens")))

    assert (clone.key, clone.retry_after_s, clone.bucket) == (KEY, 2.25, "tokens")
    assert "2.250 s" in str(clone)


# --- model-based: any interleaving keeps the ledger exact and under the cap -------------------


class LedgerMachine(RuleBasedStateMachine):
    """Random admits, settles, releases, expiries and day changes against a reference."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=NOON_UTC)
        self.guard = MemoryGuard(clock=self.clock, reservation_ttl_s=600)
        self.open: list[Ticket] = []
        self.admitted_at: dict[str, float] = {}
        self.spent: dict[str, Decimal] = {}

    @rule(cents=st.integers(1, 60))
    def admit(self, cents: int) -> None:
        ledger = self.guard.ledger(KEY)
        need = Decimal(cents) / 100
        fits = ledger.spent_usd + ledger.reserved_usd + need <= CAP.daily_usd
        refused = False
        try:
            ticket = reserve(self.guard, str(need))
        except BudgetExceeded:
            refused = True
        assert refused is not fits
        if not refused:
            self.open.append(ticket)
            self.admitted_at[ticket.id] = self.clock.time()

    @precondition(lambda self: self.open)
    @rule(index=st.integers(0, 10), share=st.integers(0, 100), unknown=st.booleans())
    def settle(self, index: int, share: int, unknown: bool) -> None:
        ticket = self.open.pop(index % len(self.open))
        cost = None if unknown else ticket.reserved_usd * share / 100
        self.guard.settle(ticket, cost_usd=cost, tokens=None)
        assert ticket.day is not None
        charged = ticket.reserved_usd if cost is None else cost
        self.spent[ticket.day] = self.spent.get(ticket.day, Decimal(0)) + charged

    @precondition(lambda self: self.open)
    @rule(index=st.integers(0, 10))
    def release(self, index: int) -> None:
        self.guard.release(self.open.pop(index % len(self.open)))

    @rule(seconds=st.sampled_from([1, 300, 700, 6 * 3600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        # A call older than the reservation TTL is a dead process's: it never settles (one
        # that did would be the documented overshoot, tested on its own above).
        now = self.clock.time()
        self.open = [t for t in self.open if self.admitted_at[t.id] + 600 > now]

    @invariant()
    def ledger_is_exact_and_under_the_cap(self) -> None:
        today = self.guard.ledger(KEY)
        # Nano-dollar rounding is exact for whole-cent shares of whole-cent reservations.
        assert today.spent_usd == self.spent.get(today.day, Decimal(0))
        assert today.spent_usd + today.reserved_usd <= CAP.daily_usd


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize(
    "zone", ["Europe/Paris", "America/Santiago", "America/Havana", "Pacific/Auckland", "UTC"]
)
@settings(max_examples=30, deadline=None)
@given(
    instants=st.lists(
        st.floats(min_value=1_767_225_600.0, max_value=1_798_761_600.0), min_size=1, max_size=50
    )
)
def test_budget_day_is_the_local_date_across_dst_changes(zone: str, instants: list[float]) -> None:
    from zoneinfo import ZoneInfo

    from comptroller.control._guard import _BudgetDay

    days = _BudgetDay(zone)
    # Sorted, then shuffled back and forth, so the cached day bounds are exercised both ways.
    for t in sorted(instants) + sorted(instants, reverse=True):
        # The oracle floors to whole seconds (local midnights are whole seconds):
        # fromtimestamp(t) rounds to the microsecond, and 0.2 µs before midnight is not
        # the next day.
        assert days.of(t) == datetime.fromtimestamp(int(t), ZoneInfo(zone)).date().isoformat()


@pytest.mark.parametrize("zone", ["America/Santiago", "America/Havana", "Europe/Paris"])
def test_budget_day_flips_exactly_at_local_midnight_all_year(zone: str) -> None:
    from zoneinfo import ZoneInfo

    from comptroller.control._guard import _BudgetDay

    days = _BudgetDay(zone)
    tz = ZoneInfo(zone)
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    end = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    while t < end:  # every 15 minutes of the year, in order
        assert days.of(t) == datetime.fromtimestamp(t, tz).date().isoformat()
        t += 900


def test_ledger_amounts_print_as_plain_decimals(clock: FakeClock) -> None:
    guard = MemoryGuard(clock=clock)
    big = BudgetSpec(daily_usd=Decimal(100))
    ticket = guard.admit(KEY, tokens=0, reserve_usd=Decimal(20), rate_limit=None, budget=big)

    guard.settle(ticket, cost_usd=Decimal("10.000"), tokens=None)

    assert str(guard.ledger(KEY).spent_usd) == "10"
    assert str(ticket.spent_usd) == "10"
