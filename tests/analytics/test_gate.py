"""The budget gate's unpriced and refused keys, and its agreement with `reprice`."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from usage_db import NOW, insert_usage, usage_row

from comptroller.analytics import DuckDBReader, apply_usage_batch, connect
from comptroller.analytics._gate import budgets_table, check_budgets
from comptroller.analytics._reprice import reprice
from comptroller.pricing import Pricer


@pytest.fixture
def mem() -> duckdb.DuckDBPyConnection:
    return connect(":memory:")


def land(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    apply_usage_batch(con, insert_usage(con, rows), timezone="UTC")


def _estimated(**kwargs: Any) -> dict[str, Any]:
    """A control-plane row charged its reservation for want of a price."""
    return usage_row(NOW, estimated=True, price_source="reservation", **kwargs)


def _mixed(con: duckdb.DuckDBPyConnection) -> None:
    land(
        con,
        [
            usage_row(NOW, tenant="priced", cap="10", cost="1"),
            usage_row(NOW, tenant="nulls", cap="10", cost="1"),
            usage_row(NOW, tenant="nulls", cap="10", cost=None, provider="acme", model="x-1"),
            usage_row(NOW, tenant="nulls", cap="10", cost=None, provider="acme", model="x-2"),
            _estimated(tenant="reserved", cap="10", cost="0.5", provider="acme", model="x-1"),
            usage_row(NOW, tenant="uncapped", cost=None, provider="acme", model="x-1"),
        ],
    )


def test_a_budgeted_key_with_unpriced_calls_fails_naming_the_keys_and_counts(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    _mixed(mem)
    result = check_budgets(DuckDBReader(mem), now=NOW)
    assert not result.passed
    assert result.failing == ()  # no key is over its cap: it is the unknown spend that fails
    message = result.failure_message()
    assert "2 budgets with unpriced calls" in message
    assert "nulls/ctx/chat 2 (x-1, x-2)" in message
    assert "reserved/ctx/chat 1 (x-1)" in message  # a reservation is not a price
    assert "uncapped" not in message  # no budget to misjudge
    assert "--allow-unpriced" in message
    assert result.unpriced_calls == 4

    allowed = check_budgets(DuckDBReader(mem), now=NOW, allow_unpriced=True)
    assert allowed.passed
    assert allowed.failure_message() == ""


def test_reprice_and_the_gate_count_the_same_unpriced_calls(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    _mixed(mem)
    gate = check_budgets(DuckDBReader(mem), now=NOW)
    dry = reprice(mem, pricer=Pricer(), dry_run=True, now=NOW)
    assert dry.old_unpriced == gate.unpriced_calls == 4
    assert dry.new_unpriced == 4  # acme's models have no price anywhere


def _refusal(con: duckdb.DuckDBPyConnection, tenant: str, spent: str, n: int = 1) -> None:
    for i in range(n):
        con.execute(
            "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
            "cap_usd, spent_usd, reserved_usd) VALUES "
            "(?, ?, ?, 'rejected', ?, 'ctx', 'chat', 10, ?, 3)",
            [f"{tenant}-{i}", NOW, NOW.date(), tenant, Decimal(spent)],
        )


def test_a_key_whose_calls_were_refused_is_not_ok(mem: duckdb.DuckDBPyConnection) -> None:
    land(mem, [usage_row(NOW, tenant="some-spend", cap="10", cost="8")])
    _refusal(mem, "some-spend", "8")  # 8 spent + 3 reserved > 10: refused, yet spent < cap
    _refusal(mem, "only-refused", "9.5", n=2)  # no call of it ran today
    # A refusal of another day does not count.
    mem.execute(
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, cap_usd, "
        "spent_usd) VALUES ('old', ?, ?, 'rejected', 'yesterday', 'ctx', 'chat', 10, 10)",
        [NOW - dt.timedelta(days=1), (NOW - dt.timedelta(days=1)).date()],
    )

    result = check_budgets(DuckDBReader(mem), now=NOW)

    assert {b.tenant: result.status(b) for b in result.budgets} == {
        "some-spend": "refused",
        "only-refused": "refused",
    }
    assert not result.passed
    assert result.refused == {("some-spend", "ctx", "chat"): 1, ("only-refused", "ctx", "chat"): 2}
    assert "2 budgets refused calls" in result.failure_message()
    assert result.summary().startswith("2 budgets on 2026-11-21: 2 refused, 0 exceeded")
    assert "REFUSED" in budgets_table(result)
    assert result.to_json()["budgets"][0]["refused_calls"] in (1, 2)
