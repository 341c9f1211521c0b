"""`reprice` applies price overrides by each row's UTC day and org, as the pricer does, and
`comptroller sql` sees the same totals."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from usage_db import fill, insert_usage, usage_row

from comptroller.analytics import connect, rebuild_rollup
from comptroller.analytics._reprice import overrides_version, reprice
from comptroller.cli import main
from comptroller.config._prices import PriceOverride
from comptroller.pricing import GENAI_PRICES_SOURCE, Pricer, Usage

JULY = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
OVERRIDES = [
    PriceOverride(model="openai:gpt-4o-mini", discount=Decimal("0.2"), effective_from=JULY.date()),
    PriceOverride(
        model="anthropic:*",
        org="acme",
        input_mtok=Decimal("1"),
        output_mtok=Decimal("5"),
        effective_from=JULY.date(),
        effective_until=dt.date(2026, 7, 2),
    ),
    # DeepSeek's price changes with the time of day: those rows are repriced one by one.
    PriceOverride(
        model="deepseek:deepseek-chat", discount=Decimal("0.1"), effective_from=JULY.date()
    ),
]
PRICER = Pricer(overrides=OVERRIDES)
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("deepseek", "deepseek-chat"),
    ("google", "gemini-2.5-pro"),
]


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        row = usage_row(
            # Two days before the window to two days into it, the UTC midnights included.
            JULY + dt.timedelta(seconds=rnd.randrange(-2 * 86_400, 2 * 86_400)),
            provider=provider,
            model=model,
            org=rnd.choice(["acme", "other", None]),
            input_tokens=rnd.choice([0, 1_000, 250_000, rnd.randrange(0, 300_000)]),
            output_tokens=rnd.randrange(0, 5_000),
            cost="9",
        )
        row["cache_read_tokens"] = rnd.randrange(0, row["input_tokens"] + 1)
        rows.append(row)
    return rows


def _expected(row: dict[str, Any]) -> tuple[Decimal | None, str]:
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
    )
    price = PRICER.price(row["provider"], row["response_model"], usage, row["ts"], row["org"])
    assert price.cost_usd is not None
    return price.cost_usd.quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP), price.source


def _stored(con: Any) -> dict[str, tuple[Decimal | None, str]]:
    rows = con.execute("SELECT usage_id, cost_usd, price_source FROM llm_usage").fetchall()
    return {usage_id: (cost, source) for usage_id, cost, source in rows}


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo"])
def test_every_row_gets_the_override_in_force_on_its_utc_day_for_its_org(
    con: Any, zone: str
) -> None:
    rows = _rows(240, seed=11)
    insert_usage(con, rows)

    reprice(con, pricer=PRICER, timezone=zone)

    stored = _stored(con)
    assert stored == {row["usage_id"]: _expected(row) for row in rows}
    sources = {source.split("@")[0] for _, source in stored.values()}
    assert sources == {
        "genai-prices",
        "override:openai:gpt-4o-mini",
        "override:anthropic:*/acme",
        "override:deepseek:deepseek-chat",
    }
    again = reprice(con, pricer=PRICER, timezone=zone)
    assert again.changed == 0


def test_a_discount_cuts_the_landed_total_exactly_and_keeps_the_cost_before(con: Any) -> None:
    # gpt-4o-mini: $0.15 and $0.60 per million tokens, so every cost is exact at 10 places and
    # 20 % off the total is 20 % off each row.
    rows = [
        usage_row(
            JULY + dt.timedelta(hours=h),
            model="gpt-4o-mini",
            org=org,
            input_tokens=1_000 + 37 * h,
            output_tokens=200 + h,
            cost="1",
        )
        for h in range(48)
        for org in ("acme", "other")
    ]
    insert_usage(con, rows)
    stamp = JULY + dt.timedelta(days=3)
    listed = reprice(con, pricer=Pricer())
    before = con.execute("SELECT sum(cost_usd) FROM llm_usage").fetchone()[0]
    assert listed.new_total_usd == before

    result = reprice(con, price_overrides=OVERRIDES, now=stamp)

    after = con.execute("SELECT sum(cost_usd) FROM llm_usage").fetchone()[0]
    assert after == before * Decimal("0.8")
    assert result.old_total_usd == before
    assert result.new_total_usd == after
    assert result.changed == len(rows)
    assert result.lines[0].source == f"override:openai:gpt-4o-mini@{GENAI_PRICES_SOURCE}"
    provenance = con.execute(
        """
        SELECT DISTINCT repriced_from_source, price_version, repriced_at = $stamp,
               repriced_from_usd * 0.8 = cost_usd
        FROM llm_usage
        """,
        {"stamp": stamp},
    ).fetchall()
    assert provenance == [(GENAI_PRICES_SOURCE, overrides_version(OVERRIDES), True, True)]


def test_the_rollup_after_an_override_equals_a_full_recompute(db_path: Path) -> None:
    fill(db_path, _rows(120, seed=5))
    con = connect(db_path)
    try:
        reprice(con, pricer=PRICER)
        query = "SELECT * FROM llm_usage_daily ORDER BY ALL"
        incremental = con.sql(query).to_arrow_table()
        rebuild_rollup(con, timezone="UTC")
        assert incremental.equals(con.sql(query).to_arrow_table())
    finally:
        con.close()


def test_cli_reprice_applies_the_configured_override_and_sql_agrees(
    tmp_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        usage_row(
            JULY + dt.timedelta(hours=h), model="gpt-4o-mini", org=org, input_tokens=2_000, cost="1"
        )
        for h in (-5, -1, 0, 3, 30)
        for org in ("acme", "other")
    ]
    fill(db_path, rows)
    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[[control.price_overrides]]\n"
        'model = "openai:gpt-4o-mini"\n'
        'org = "acme"\n'
        'id = "acme-contract"\n'
        "discount = 0.5\n"
        "effective_from = 2026-07-01\n"
    )

    main(["--config", str(config), "reprice", "--db", str(db_path)])
    out = capsys.readouterr().out
    main(
        [
            "sql",
            "--db",
            str(db_path),
            "--format",
            "json",
            "SELECT price_source, count(*) AS n, sum(cost_usd) AS usd FROM llm_usage "
            "GROUP BY ALL ORDER BY 1",
        ]
    )
    by_source = {r["price_source"]: r for r in json.loads(capsys.readouterr().out)}

    # 2,000 input and 20 output tokens: $0.000312 listed, half for acme from July 1st.
    assert by_source == {
        GENAI_PRICES_SOURCE: {"price_source": GENAI_PRICES_SOURCE, "n": 7, "usd": "0.002184"},
        f"override:acme-contract@{GENAI_PRICES_SOURCE}": {
            "price_source": f"override:acme-contract@{GENAI_PRICES_SOURCE}",
            "n": 3,
            "usd": "0.000468",
        },
    }
    assert "total: $10.00000 -> $0.00265" in out
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        daily = con.execute("SELECT sum(cost_usd) FROM llm_usage_daily").fetchone()
    finally:
        con.close()
    assert daily == (Decimal("0.002652"),)
