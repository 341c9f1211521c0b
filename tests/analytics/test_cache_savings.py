"""Prompt-cache savings: cached reads priced as plain input minus their price as cache reads."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from usage_db import fill, usage_row

from comptroller.analytics import DuckDBReader, builtin_panels, cache_savings, connect, run_panel
from comptroller.money import usd
from comptroller.pricing import Pricer

AT = dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC)
PRICER = Pricer()


def cached(ts: dt.datetime, *, cache_read: int, input_tokens: int, **kw: Any) -> dict[str, Any]:
    row = usage_row(ts, input_tokens=input_tokens, **kw)
    row["cache_read_tokens"] = cache_read
    return row


def reference_saving(provider_id: str, model: str, n: int, at: dt.datetime) -> Decimal:
    """genai-prices' own answer: N input tokens uncached, minus the same N read from cache."""
    plain = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=n),
        model,
        provider_id=provider_id,
        genai_request_timestamp=at,
    ).total_price
    from_cache = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=n, cache_read_tokens=n),
        model,
        provider_id=provider_id,
        genai_request_timestamp=at,
    ).total_price
    return Decimal(plain) - Decimal(from_cache)


def test_saving_equals_genai_prices_input_minus_cache_read_price(tmp_path: Path) -> None:
    db = fill(
        tmp_path / "u.duckdb",
        [
            # Only cached tokens in each call: the call's saving is exactly the reference's.
            cached(AT, cache_read=40_000, input_tokens=40_000, purpose="scoring", model="gpt-4o"),
            cached(AT, cache_read=2_000, input_tokens=2_000, purpose="scoring", model="gpt-4o"),
            cached(
                AT,
                cache_read=30_000,
                input_tokens=30_000,
                purpose="chat",
                provider="anthropic",
                model="claude-sonnet-4-5",
            ),
            # No cache reads: not part of the answer.
            usage_row(AT, purpose="scoring", model="gpt-4o"),
        ],
    )
    con = connect(db, read_only=True)
    try:
        found = cache_savings(DuckDBReader(con), PRICER)
    finally:
        con.close()
    by = {(s.purpose, s.provider, s.model): s for s in found}
    scoring = by[("scoring", "openai", "gpt-4o")]
    assert scoring.calls == 2
    assert scoring.cache_read_tokens == 42_000
    assert scoring.unpriced_calls == 0
    assert scoring.saved_usd == reference_saving("openai", "gpt-4o", 42_000, AT)
    assert scoring.saved_usd > 0
    chat = by[("chat", "anthropic", "claude-sonnet-4-5")]
    assert chat.saved_usd == reference_saving("anthropic", "claude-sonnet-4-5", 30_000, AT)
    # Largest saving first.
    assert [s.saved_usd for s in found] == sorted((s.saved_usd for s in found), reverse=True)


def test_the_saving_of_a_call_is_in_its_own_price_tier(tmp_path: Path) -> None:
    # gemini-2.5-pro charges more above 200k input tokens, cache reads included.
    db = fill(
        tmp_path / "u.duckdb",
        [
            cached(
                AT,
                cache_read=250_000,
                input_tokens=250_000,
                provider="gcp.gemini",
                model="gemini-2.5-pro",
            ),
            cached(
                AT,
                cache_read=100_000,
                input_tokens=100_000,
                provider="gcp.gemini",
                model="gemini-2.5-pro",
            ),
        ],
    )
    con = connect(db, read_only=True)
    try:
        (found,) = cache_savings(DuckDBReader(con), PRICER)
    finally:
        con.close()
    expected = reference_saving("google", "gemini-2.5-pro", 250_000, AT) + reference_saving(
        "google", "gemini-2.5-pro", 100_000, AT
    )
    assert found.saved_usd == expected
    # Not the same as one tier for both: the tiers were applied.
    assert expected != reference_saving("google", "gemini-2.5-pro", 350_000, AT)


def test_a_price_change_between_calls_applies_to_each_call_by_its_date(tmp_path: Path) -> None:
    # claude-opus-4-6's long-context tier ends on 2026-03-13 (UTC): same usage, other saving.
    before = dt.datetime(2026, 3, 12, 18, 0, tzinfo=dt.UTC)
    after = dt.datetime(2026, 3, 14, 6, 0, tzinfo=dt.UTC)
    opus: dict[str, Any] = {"provider": "anthropic", "model": "claude-opus-4-6"}
    db = fill(
        tmp_path / "u.duckdb",
        [
            cached(before, cache_read=250_000, input_tokens=250_000, **opus),
            cached(after, cache_read=250_000, input_tokens=250_000, **opus),
        ],
    )
    con = connect(db, read_only=True)
    try:
        (found,) = cache_savings(DuckDBReader(con), PRICER)
    finally:
        con.close()
    first = reference_saving("anthropic", "claude-opus-4-6", 250_000, before)
    second = reference_saving("anthropic", "claude-opus-4-6", 250_000, after)
    assert first != second
    assert found.saved_usd == first + second


def test_an_unknown_model_saving_is_unknown_not_zero(tmp_path: Path) -> None:
    db = fill(
        tmp_path / "u.duckdb",
        [cached(AT, cache_read=500, input_tokens=900, provider="acme", model="x-1", cost=None)],
    )
    con = connect(db, read_only=True)
    try:
        (found,) = cache_savings(DuckDBReader(con), PRICER)
    finally:
        con.close()
    assert found.saved_usd is None
    assert found.unpriced_calls == 1
    assert found.cache_read_tokens == 500


def test_the_panel_without_prices_finds_the_calls_and_knows_no_saving(tmp_path: Path) -> None:
    # What the dashboard's first refresh shows before it has priced the models it found.
    db = fill(
        tmp_path / "u.duckdb",
        [cached(AT, cache_read=1_000, input_tokens=1_000, model="gpt-4o")],
    )
    con = connect(db, read_only=True)
    try:
        rows = run_panel(
            DuckDBReader(con), builtin_panels()["cache_savings"], now=AT, prices=None
        ).to_pylist()
    finally:
        con.close()
    assert [(r["model"], r["calls"], r["saved_usd"], r["unpriced_calls"]) for r in rows] == [
        ("gpt-4o", 1, None, 1)
    ]


def test_range_and_filters_select_the_calls(tmp_path: Path) -> None:
    db = fill(
        tmp_path / "u.duckdb",
        [
            cached(AT, cache_read=1_000, input_tokens=1_000, model="gpt-4o", tenant="a"),
            cached(
                AT - dt.timedelta(days=3),
                cache_read=1_000,
                input_tokens=1_000,
                model="gpt-4o",
                tenant="a",
            ),
            cached(AT, cache_read=1_000, input_tokens=1_000, model="gpt-4o", tenant="b"),
        ],
    )
    con = connect(db, read_only=True)
    try:
        reader = DuckDBReader(con)
        (one_day,) = cache_savings(reader, PRICER, since=AT.date(), until=AT.date(), tenant="a")
        (every_day,) = cache_savings(reader, PRICER, tenant="a")
    finally:
        con.close()
    assert one_day.calls == 1
    assert every_day.calls == 2
    assert every_day.saved_usd == 2 * one_day.saved_usd  # type: ignore[operator]


async def test_the_dashboard_spend_view_shows_the_savings_of_the_report(tmp_path: Path) -> None:
    from comptroller.tui import AppOptions, ComptrollerApp, DuckDBSource
    from comptroller.tui._views_money import SpendView
    from comptroller.tui._widgets import DataGrid

    now = AT + dt.timedelta(hours=1)
    db = fill(
        tmp_path / "u.duckdb",
        [
            cached(AT, cache_read=40_000, input_tokens=50_000, purpose="scoring", model="gpt-4o"),
            usage_row(AT, purpose="chat", model="gpt-4o"),
        ],
    )
    con = connect(db, read_only=True)
    try:
        (expected,) = cache_savings(DuckDBReader(con), PRICER)
    finally:
        con.close()
    source = DuckDBSource.open(db)
    try:
        app = ComptrollerApp(source, options=AppOptions(timezone="UTC"), clock=lambda: now)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("2")
            grid = app.query_one(SpendView).query_one("#spend-cache-savings", DataGrid)
            for _ in range(1000):  # the second refresh brings the prices the first found
                await pilot.pause(0.01)
                if grid.rows and grid.rows[0].get("saved_usd") is not None:
                    break
            assert grid.display
            assert [(r["purpose"], r["model"], r["saved_usd"]) for r in grid.rows] == [
                ("scoring", "gpt-4o", expected.saved_usd)
            ]
    finally:
        source.close()


def test_cli_report_alone_prints_the_savings_in_markdown_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from comptroller.cli import main

    db = fill(
        tmp_path / "u.duckdb",
        [cached(AT, cache_read=8_000, input_tokens=10_000, purpose="scoring", model="gpt-4o")],
    )
    expected = reference_saving("openai", "gpt-4o", 8_000, AT)
    for args in (["report", "--db", str(db)], ["report", "--db", str(db), "--json"]):
        code = 0
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        assert code == 0, err
        if "--json" in args:
            payload = json.loads(out)["cache_savings"]
            assert Decimal(payload["saved_usd"]) == expected
            assert payload["lines"][0]["cache_read_tokens"] == 8_000
        else:
            assert "## 💾 Prompt-cache savings" in out
            assert f"| scoring | openai:gpt-4o | 1 | 8,000 | 80% | {usd(expected)} |" in out
