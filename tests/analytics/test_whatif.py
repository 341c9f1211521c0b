"""What-if re-pricing: the selected past calls priced at another model, against what they cost."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from usage_db import fill, usage_row

from comptroller.analytics import DuckDBReader, WhatIf, connect, what_if
from comptroller.cli import main
from comptroller.errors import UsageError
from comptroller.pricing import Pricer

AT = dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC)
PRICER = Pricer()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `comptroller ARGS` in this process; (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def row(ts: dt.datetime, **kw: Any) -> dict[str, Any]:
    cache_read = kw.pop("cache_read", 0)
    out = usage_row(ts, **kw)
    out["cache_read_tokens"] = cache_read
    return out


def nano(r: dict[str, Any]) -> Decimal:
    """genai-prices' price of a ledger row's usage at gpt-4.1-nano, at the row's time."""
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cache_read_tokens=r["cache_read_tokens"],
        ),
        "gpt-4.1-nano",
        provider_id="openai",
        genai_request_timestamp=r["ts"],
    ).total_price
    return Decimal(price)


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = [
        row(
            AT,
            purpose="scoring",
            model="gpt-4o",
            input_tokens=12_000,
            output_tokens=800,
            cost="0.038",
        ),
        row(
            AT - dt.timedelta(days=2),
            purpose="scoring",
            model="gpt-4o",
            input_tokens=50_000,
            output_tokens=1_000,
            cache_read=20_000,
            cost="0.1025",
        ),
        row(
            AT,
            purpose="scoring",
            model="gpt-4o-mini",
            input_tokens=3_000,
            output_tokens=300,
            cost="0.00063",
        ),
        row(
            AT,
            purpose="chat",
            model="gpt-4o",
            input_tokens=1_000,
            output_tokens=1_000,
            cost="0.0125",
        ),
        row(AT, purpose="scoring", tenant="beta", model="gpt-4o", cost="0.002"),
        row(AT, purpose="scoring", provider="acme", model="x-1", cost=None),
    ]
    return fill(tmp_path / "u.duckdb", rows), rows


def run(db: Path, text: str, **kw: Any) -> Any:
    con = connect(db, read_only=True)
    try:
        return what_if(DuckDBReader(con), WhatIf.parse(text), PRICER, **kw)
    finally:
        con.close()


def test_what_if_prices_each_selected_call_at_the_target_like_genai_prices(
    ledger: tuple[Path, list[dict[str, Any]]],
) -> None:
    db, rows = ledger
    result = run(db, "purpose=scoring tenant=acme model=openai:gpt-4.1-nano")
    chosen = [r for r in rows if r["purpose"] == "scoring" and r["tenant"] == "acme"]
    priced = [r for r in chosen if r["cost_usd"] is not None]
    (line,) = result.lines
    assert line.purpose == "scoring"
    assert line.calls == len(priced) == 3
    assert line.actual_usd == sum(r["cost_usd"] for r in priced)
    assert line.what_if_usd == sum(nano(r) for r in priced)
    assert line.change_usd == line.what_if_usd - line.actual_usd
    assert line.change_usd < 0  # nano is cheaper than gpt-4o
    assert line.unpriced_calls == 1  # the acme:x-1 call: no actual cost, left out of both
    assert result.total.what_if_usd == line.what_if_usd


def test_actual_total_is_the_ledger_sum_over_the_same_calls(
    ledger: tuple[Path, list[dict[str, Any]]],
) -> None:
    db, _ = ledger
    result = run(db, "model=openai:gpt-4.1-nano")
    con = connect(db, read_only=True)
    try:
        ((expected,),) = con.execute("SELECT sum(cost_usd) FROM llm_usage").fetchall()
    finally:
        con.close()
    assert result.total.actual_usd == expected
    assert {line.purpose for line in result.lines} == {"scoring", "chat"}


def test_from_and_the_range_narrow_the_calls(ledger: tuple[Path, list[dict[str, Any]]]) -> None:
    db, rows = ledger
    result = run(db, "purpose=scoring from=openai:gpt-4o model=openai:gpt-4.1-nano")
    assert result.total.calls == 3  # acme's two and beta's one gpt-4o scoring calls
    today = run(
        db,
        "purpose=scoring from=gpt-4o model=openai:gpt-4.1-nano",
        since=AT.date(),
        until=AT.date(),
    )
    assert today.total.calls == 2
    expected = [
        r
        for r in rows
        if r["ts"] == AT and r["response_model"] == "gpt-4o" and r["purpose"] == "scoring"
    ]
    assert today.total.what_if_usd == sum(nano(r) for r in expected)


def test_filters_that_match_nothing_say_so(ledger: tuple[Path, list[dict[str, Any]]]) -> None:
    db, _ = ledger
    result = run(db, "purpose=nosuch model=openai:gpt-4.1-nano")
    assert not result.matched
    assert result.lines == ()


def test_an_unknown_target_is_refused_by_name(ledger: tuple[Path, list[dict[str, Any]]]) -> None:
    db, _ = ledger
    with pytest.raises(UsageError, match=r"openai:gpt-9-nosuch"):
        run(db, "model=openai:gpt-9-nosuch")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("purpose=scoring", "needs the model"),
        ("model=gpt-4o", "provider:model"),
        ("colour=red model=openai:gpt-4o", "unknown key 'colour'"),
        ("purpose model=openai:gpt-4o", "not key=value"),
        ("purpose=a purpose=b model=openai:gpt-4o", "given twice"),
    ],
)
def test_a_malformed_question_names_its_problem(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        WhatIf.parse(text)


def test_cli_what_if_markdown_and_json(
    capsys: pytest.CaptureFixture[str], ledger: tuple[Path, list[dict[str, Any]]]
) -> None:
    db, rows = ledger
    code, out, err = run_cli(
        capsys, "report", "--db", str(db), "--what-if", "purpose=chat model=openai:gpt-4.1-nano"
    )
    assert code == 0, err
    assert "## What if purpose=chat had run on openai:gpt-4.1-nano?" in out
    assert "| chat | 1 | $0.0125 |" in out
    code, out, err = run_cli(
        capsys,
        "report",
        "--db",
        str(db),
        "--json",
        "--what-if",
        "purpose=chat model=openai:gpt-4.1-nano",
    )
    assert code == 0, err
    payload = json.loads(out)
    (chat,) = [r for r in rows if r["purpose"] == "chat"]
    assert Decimal(payload["total"]["what_if_usd"]) == nano(chat)
    assert Decimal(payload["total"]["actual_usd"]) == Decimal("0.0125")
    assert payload["matched"] is True


def test_cli_what_if_that_matches_nothing_says_so_and_succeeds(
    capsys: pytest.CaptureFixture[str], ledger: tuple[Path, list[dict[str, Any]]]
) -> None:
    db, _ = ledger
    code, out, err = run_cli(
        capsys, "report", "--db", str(db), "--what-if", "purpose=nosuch model=openai:gpt-4.1-nano"
    )
    assert code == 0, err
    assert "No call matches purpose=nosuch" in out
