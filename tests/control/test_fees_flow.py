"""Non-token fees through the guarded call: a response reporting web searches is charged for
them on top of its tokens (the budget sees the total), and the usage row keeps the fees'
share and counts apart, landed in DuckDB and shown separately by the report.

The model boundary is the fake Anthropic Messages API server (the real anthropic SDK over
HTTP); the ledger is a real DuckDB file written by the embedded collector.
"""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    ControlPlane,
    GuardKey,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    StaticProfiles,
)
from comptroller.control.testing import (
    AnthropicBehaviour,
    FakeAnthropicServer,
    FakeClock,
    InMemorySink,
)

CLAUDE = "claude-sonnet-4-5"
SEARCHING = AnthropicBehaviour(content="found", input_tokens=500, output_tokens=40)


def token_cost() -> Decimal:
    price = calc_price(
        GPUsage(input_tokens=500, output_tokens=40), model_ref=CLAUDE, provider_id="anthropic"
    )
    return Decimal(price.total_price)


def search_fee(searches: int) -> Decimal:
    price = calc_price(GPUsage(web_searches=searches), model_ref=CLAUDE, provider_id="anthropic")
    return Decimal(price.total_price)


def profiles(server: FakeAnthropicServer, **kw: object) -> StaticProfiles:
    return StaticProfiles(
        {
            "reasoning": ResolvedProfile(
                purpose="reasoning",
                model=ModelRef(provider="anthropic", model=CLAUDE),
                base_url=server.base_url,
                **kw,  # type: ignore[arg-type]
            )
        }
    )


def test_web_searches_are_charged_on_top_of_the_tokens_and_kept_apart() -> None:
    assert search_fee(3) > 0  # genai-prices knows the price: otherwise this proves nothing
    clock = FakeClock()
    sink = InMemorySink()
    guard = MemoryGuard(clock=clock)
    with FakeAnthropicServer() as server:
        server.behave(CLAUDE, replace(SEARCHING, web_search_requests=3))
        plane = ControlPlane(
            load_settings(telemetry="none"),
            resolver=profiles(server, budget=BudgetSpec(daily_usd=Decimal(5))),
            guard=guard,
            sink=sink,
            clock=clock,
        )
        with plane:
            plane.chat_model("reasoning", domain="acme-eu", context="docs").invoke("look it up")
            plane.flush()
    row = sink.usage_rows()[0]
    fee = search_fee(3)
    assert Decimal(row[semconv.COST_USD]) == token_cost() + fee
    assert Decimal(row[semconv.COST_FEES_USD]) == fee
    assert json.loads(row[semconv.FEES]) == {"web_searches": 3}
    # The budget is charged the whole of it.
    spent = guard.ledger(GuardKey("acme-eu", "docs", "reasoning")).spent_usd
    assert spent == token_cost() + fee


def test_fees_land_in_their_own_column_of_the_ledger(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.duckdb"
    settings = load_settings(telemetry="embedded", data_dir=str(tmp_path), db=str(db))
    with FakeAnthropicServer() as server:
        server.behave(CLAUDE, replace(SEARCHING, web_search_requests=2))
        with ControlPlane(settings, resolver=profiles(server)) as plane:
            plane.chat_model("reasoning", domain="acme-eu").invoke("look it up")
            assert plane.flush()
    con = duckdb.connect(str(db), read_only=True)
    try:
        got = con.execute(
            "SELECT cost_usd, fee_cost_usd, fees->>'$.web_searches' FROM llm_usage"
        ).fetchall()
    finally:
        con.close()
    assert got == [(token_cost() + search_fee(2), search_fee(2), "2")]


def test_the_report_shows_the_fees_apart_and_the_spend_by_end_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comptroller.cli import main
    from comptroller.control import attribution

    db = tmp_path / "ledger.duckdb"
    settings = load_settings(telemetry="embedded", data_dir=str(tmp_path), db=str(db))
    with FakeAnthropicServer() as server:
        server.behave(CLAUDE, replace(SEARCHING, web_search_requests=2))
        with ControlPlane(settings, resolver=profiles(server)) as plane:
            model = plane.chat_model("reasoning", domain="acme-eu")
            with attribution(user="alice", feature="research"):
                model.invoke("look it up")
                model.invoke("and again")
            with attribution(user="bob"):
                model.invoke("look it up")
            assert plane.flush()

    def report(*args: str) -> Any:
        code = 0
        try:
            main(["--data-dir", str(tmp_path), "report", "--db", str(db), *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    doc = json.loads(report("--json", "--by", "user"))
    fee = search_fee(2)
    [line] = doc["fees"]
    assert (line["purpose"], line["model"], line["calls"], line["web_searches"]) == (
        "reasoning",
        CLAUDE,
        3,
        6,
    )
    assert Decimal(line["fees_usd"]) == 3 * fee
    users = {u["value"]: (Decimal(u["cost_usd"]), u["calls"]) for u in doc["by_attribution"]}
    each = token_cost() + fee
    assert users == {"alice": (2 * each, 2), "bob": (each, 1)}
    text = report("--by", "all")
    assert "Non-token fees" in text
    assert "| reasoning | anthropic:" in text
    assert "| feature | research |" in text
    assert "| user | alice |" in text
    with pytest.raises(SystemExit) as refused:
        main(["--data-dir", str(tmp_path), "report", "--db", str(db), "--by", "team"])
    assert refused.value.code == 2
    assert "--by must be user, session, feature, tag.<name> or all" in capsys.readouterr().err


def test_fees_of_a_model_genai_prices_does_not_know_come_from_the_settings() -> None:
    sink = InMemorySink()
    settings = load_settings(
        telemetry="none",
        control={
            "prices": {"anthropic:claude-house": {"input_mtok": 1, "output_mtok": 2}},
            "fee_prices": {"anthropic:*": {"web_searches": "0.05"}},
        },
    )
    with FakeAnthropicServer() as server:
        server.behave("claude-house", replace(SEARCHING, web_search_requests=2))
        profile = StaticProfiles(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning",
                    model=ModelRef(provider="anthropic", model="claude-house"),
                    base_url=server.base_url,
                )
            }
        )
        with ControlPlane(settings, resolver=profile, sink=sink) as plane:
            plane.chat_model("reasoning", domain="t").invoke("q")
            plane.flush()
    row = sink.usage_rows()[0]
    tokens = (Decimal(500) * 1 + Decimal(40) * 2) / 1_000_000
    assert Decimal(row[semconv.COST_FEES_USD]) == Decimal("0.10")
    assert Decimal(row[semconv.COST_USD]) == tokens + Decimal("0.10")
    assert row[semconv.PRICE_SOURCE] == "fallback"
