"""The budget gate's unpriced and refused keys, and its agreement with `reprice`."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from usage_db import NOW, insert_usage, usage_row

from comptroller.analytics import DuckDBReader, apply_usage_batch, connect
from comptroller.analytics._gate import (
    EXIT_OVER,
    EXIT_REFUSED,
    budgets_table,
    check_budgets,
    junit_xml,
    markdown_summary,
)
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
    assert result.exit_code == EXIT_REFUSED


def test_a_refused_key_says_why_everywhere_the_gate_reports(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(mem, [usage_row(NOW, tenant="some-spend", cap="10", cost="8")])
    _refusal(mem, "some-spend", "8")  # 10 - 8 - 3 reserved: nothing left

    result = check_budgets(DuckDBReader(mem), now=NOW)

    why = (
        "1 call refused: the last needed more (its worst-case reservation was not recorded) "
        "but only $0.00 of the $10.00 cap was left (spent $8.00, reserved in flight $3.00)"
    )
    assert f"some-spend/ctx/chat: {why}" in budgets_table(result)
    assert "some-spend/ctx/chat (1 call refused, $0.00 left of the cap)" in (
        result.failure_message()
    )
    assert why in markdown_summary(result)
    assert 'type="budget.refused"' in junit_xml(result)
    assert why in junit_xml(result)
    [budget] = result.to_json()["budgets"]
    assert isinstance(budget, dict)
    assert budget["status"] == "refused"
    assert budget["refused_why"] == why
    assert budget["refusals"]["left_usd"] == "0"  # 10 - 8 - 3 is below zero: nothing left
    assert budget["refusals"]["reserved_usd"] == "3.0000000000"


def test_refused_wins_the_exit_code_over_a_budget_over_its_cap(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    land(mem, [usage_row(NOW, tenant="over", cap="1", cost="2")])
    assert check_budgets(DuckDBReader(mem), now=NOW).exit_code == EXIT_OVER
    _refusal(mem, "only-refused", "9.5")
    assert check_budgets(DuckDBReader(mem), now=NOW).exit_code == EXIT_REFUSED


def test_small_amounts_in_the_table_share_a_precision_and_never_read_as_zero(
    mem: duckdb.DuckDBPyConnection,
) -> None:
    # The demo's case: "spent $0.0000 of $0.0002" hid a key 17% into its cap.
    land(
        mem,
        [
            usage_row(NOW, tenant="tiny", cap="0.0002", cost="0.0000342"),
            usage_row(NOW, tenant="big", cap="5", cost="1234.5"),
        ],
    )
    table = budgets_table(check_budgets(DuckDBReader(mem), now=NOW, fail_on="exceeded"))
    assert "$0.0000342" in table
    assert "$1,234.5000000" in table  # one precision for the spent column
    assert "$0.0002" in table
    assert "$5.0000" in table
    assert "$0.0000 " not in table
