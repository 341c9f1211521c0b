from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from _usage_db import NOW, fill, run_cli, usage_row
from genai_prices import Usage, calc_price

from comptroller.analytics import connect, rebuild_rollup


def genai(model: str, provider: str, **tokens: int) -> Decimal:
    return Decimal(
        calc_price(
            Usage(**tokens), model_ref=model, provider_id=provider, genai_request_timestamp=NOW
        ).total_price
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return fill(
        tmp_path / "u.duckdb",
        [
            # Priced wrongly (an old price): corrected from genai-prices.
            usage_row(
                NOW,
                usage_id="wrong",
                model="gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
                cost="1",
            ),
            # Unpriced, and the config now has a fallback price for it.
            usage_row(
                NOW,
                usage_id="local",
                provider="ollama",
                model="llama3",
                input_tokens=2_000_000,
                output_tokens=1_000_000,
                cost=None,
            ),
            # Unknown to both: stays unpriced, never zero.
            usage_row(NOW, usage_id="mystery", provider="acme", model="x-1", cost=None),
            # Above a tier threshold: priced row by row, as genai-prices does.
            usage_row(
                NOW,
                usage_id="tier",
                provider="google",
                model="gemini-2.5-pro",
                input_tokens=300_000,
                output_tokens=10,
                cost="0.01",
            ),
            usage_row(
                NOW,
                usage_id="tier-small",
                provider="google",
                model="gemini-2.5-pro",
                input_tokens=1000,
                output_tokens=10,
                cost="0.01",
            ),
            # Provider-reported cost: kept.
            usage_row(
                NOW, usage_id="provider", model="gpt-4o-mini", cost="7", price_source="provider"
            ),
        ],
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "comptroller.toml"
    path.write_text('[control.prices."ollama:llama3"]\ninput_mtok = 0.5\noutput_mtok = 1.5\n')
    return path


def costs(db: Path) -> dict[str, tuple[Decimal | None, str]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT usage_id, cost_usd, price_source FROM llm_usage").fetchall()
    finally:
        con.close()
    return {u: (c, s) for u, c, s in rows}


def test_reprice_corrects_costs_from_genai_prices_and_fallbacks_and_reports_totals(
    capsys: pytest.CaptureFixture[str], db: Path, config: Path
) -> None:
    code, out, err = run_cli(capsys, "--config", str(config), "reprice", "--db", str(db))
    assert code == 0, err
    got = costs(db)
    assert got["wrong"][0] == genai("gpt-4o-mini", "openai", input_tokens=1000, output_tokens=100)
    assert got["wrong"][1].startswith("genai-prices@")
    assert got["local"] == (Decimal("2.5"), "fallback")  # 2 × 0.5 + 1 × 1.5
    assert got["mystery"] == (None, "unpriced")
    assert got["tier"][0] == genai(
        "gemini-2.5-pro", "google", input_tokens=300_000, output_tokens=10
    )
    assert got["tier-small"][0] == genai(
        "gemini-2.5-pro", "google", input_tokens=1000, output_tokens=10
    )
    assert got["provider"] == (Decimal("7"), "provider")
    assert "unpriced calls 2 -> 1" in out
    # Every amount shares the precision the smallest one needs: the new $0.000210 price of
    # the 1,000-token call is not "$0.00", and the total lines up with it.
    assert "openai:gpt-4o-mini  1 rows  $1.00000 -> $0.00021  (genai-prices@" in out
    assert "total: $1.02000 -> $3.25171;" in out


def test_reprice_keeps_the_rollup_equal_to_a_full_recompute(
    capsys: pytest.CaptureFixture[str], db: Path, config: Path
) -> None:
    run_cli(capsys, "--config", str(config), "reprice", "--db", str(db))
    con = connect(db)
    try:
        query = "SELECT * FROM llm_usage_daily ORDER BY ALL"
        incremental = con.sql(query).to_arrow_table()
        rebuild_rollup(con, timezone="UTC")
        assert incremental.equals(con.sql(query).to_arrow_table())
        total = con.execute(
            "SELECT sum(cost_usd), sum(unpriced_calls) FROM llm_usage_daily"
        ).fetchall()[0]
        assert total[1] == 1
    finally:
        con.close()


def test_reprice_of_one_model_leaves_the_others(
    capsys: pytest.CaptureFixture[str], db: Path, config: Path
) -> None:
    code, out, _ = run_cli(
        capsys,
        "--config",
        str(config),
        "reprice",
        "--db",
        str(db),
        "--model",
        "ollama:llama3",
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["changed"] == 1
    assert [m["model"] for m in payload["models"]] == ["llama3"]
    got = costs(db)
    assert got["local"][0] == Decimal("2.5")
    assert got["wrong"][0] == Decimal("1")


def test_dry_run_changes_nothing(
    capsys: pytest.CaptureFixture[str], db: Path, config: Path
) -> None:
    before = costs(db)
    code, out, _ = run_cli(capsys, "--config", str(config), "reprice", "--db", str(db), "--dry-run")
    assert code == 0
    assert "would change" in out
    assert costs(db) == before


def test_since_skips_older_days(capsys: pytest.CaptureFixture[str], db: Path, config: Path) -> None:
    code, out, _ = run_cli(
        capsys,
        "--config",
        str(config),
        "reprice",
        "--db",
        str(db),
        "--since",
        "2026-11-22",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["rows"] == 0


# --- one price, three paths: the control plane, a derived collector row, reprice ------------

# (control plane provider, third-party span provider, genai-prices id, model, token counts
# in KINDS order, UTC time):
# tiers and cache writes (Anthropic above 200k), a time-of-day price (DeepSeek off-peak),
# OpenTelemetry and LangChain provider names that need the alias map, reasoning tokens.
AGREEMENT_CASES = [
    ("anthropic", "anthropic", "anthropic", "claude-sonnet-4-5", (250_000, 900, 40_000, 3_000, 0), "2025-09-01T09:15:30"),
    ("deepseek", "deepseek", "deepseek", "deepseek-chat", (10_000, 500, 2_000, 0, 0), "2025-09-02T20:30:00"),
    ("google_genai", "gcp.gen_ai", "google", "gemini-2.5-pro", (1_000, 2_000, 0, 0, 1_500), "2025-09-03T23:59:59"),
    ("perplexity", "perplexity", "perplexity", "sonar-deep-research", (3_000, 8_000, 0, 0, 6_000), "2025-09-04T00:00:01"),
]  # fmt: skip
KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC)


def _third_party_span(provider: str, model: str, tokens: dict[str, int], when: dt.datetime) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    names = {
        "input_tokens": "gen_ai.usage.input_tokens",
        "output_tokens": "gen_ai.usage.output_tokens",
        "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
        "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
        "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    }
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **{names[kind]: count for kind, count in tokens.items()},
    }
    start = int(when.timestamp()) * 1_000_000_000
    tracer = tracer_provider.get_tracer("opentelemetry.instrumentation.someone")
    span = tracer.start_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes, start_time=start
    )
    span.end(end_time=start + 2_000_000_000)
    tracer_provider.shutdown()
    return memory.get_finished_spans()


def _land_both(
    db: Path,
    plane_provider: str,
    span_provider: str,
    model: str,
    tokens: dict[str, int],
    when: dt.datetime,
) -> None:
    """One call through the real control plane and one third-party span, into `db`."""
    from comptroller.collector import EmbeddedSink
    from comptroller.config import load_settings
    from comptroller.control import (
        ControlPlane,
        MemoryGuard,
        ModelRef,
        ResolvedProfile,
        StaticProfiles,
    )
    from comptroller.control.testing import FakeChatModel, FakeClock, FakeUsage

    sink = EmbeddedSink(db)
    sink.span_exporter().export(_third_party_span(span_provider, model, tokens, when))
    clock = FakeClock(start=when.timestamp())
    fake = FakeChatModel(responses={"reasoning": "ok"}, usage=FakeUsage(**tokens))
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning", model=ModelRef(provider=plane_provider, model=model)
                )
            }
        ),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        providers={plane_provider: fake.factory},
    )
    with plane:
        plane.chat_model("reasoning", domain="acme").invoke("hello")


def _costs_by_source(db: Path) -> dict[tuple[str, str], tuple[Decimal | None, str]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT response_model, request_model, source, cost_usd, price_source FROM llm_usage"
        ).fetchall()
    finally:
        con.close()
    return {
        (response or request, source): (cost, price)
        for response, request, source, cost, price in rows
    }


def test_control_plane_collector_and_reprice_give_the_same_cost_to_the_digit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from decimal import ROUND_HALF_UP

    from comptroller.pricing import GENAI_PRICES_SOURCE

    db = tmp_path / "agree.duckdb"
    cases = [
        (plane, span, provider_id, model, dict(zip(KINDS, counts, strict=True)), at(when))
        for plane, span, provider_id, model, counts, when in AGREEMENT_CASES
    ]
    for plane_provider, span_provider, _, model, tokens, when in cases:
        _land_both(db, plane_provider, span_provider, model, tokens, when)
    landed = _costs_by_source(db)

    for _, _, provider_id, model, tokens, when in cases:
        genai_tokens = {
            ("output_reasoning_tokens" if k == "reasoning_tokens" else k): v
            for k, v in tokens.items()
        }
        exact = Decimal(
            calc_price(
                Usage(**genai_tokens),
                model_ref=model,
                provider_id=provider_id,
                genai_request_timestamp=when,
            ).total_price
        )
        stored = exact.quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP)
        assert landed[(model, "comptroller")] == (stored, GENAI_PRICES_SOURCE), model
        assert landed[(model, "derived:genai")] == (stored, GENAI_PRICES_SOURCE), model

    con = connect(db)
    try:
        con.execute("UPDATE llm_usage SET cost_usd = 1, price_source = 'genai-prices@0.0.1'")
    finally:
        con.close()
    config = tmp_path / "empty.toml"
    config.write_text("")
    code, out, err = run_cli(capsys, "--config", str(config), "reprice", "--db", str(db))

    assert code == 0, err
    assert f"{2 * len(AGREEMENT_CASES)} of {2 * len(AGREEMENT_CASES)} rows changed" in out
    assert _costs_by_source(db) == landed


def _provenance(db: Path) -> dict[str, tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT usage_id, cost_usd, price_source, epoch_us(repriced_at), repriced_from_usd, "
            "repriced_from_source, price_version FROM llm_usage"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


def test_each_repriced_row_keeps_its_provenance(
    capsys: pytest.CaptureFixture[str], db: Path, config: Path
) -> None:
    from importlib.metadata import version

    code, out, err = run_cli(capsys, "--config", str(config), "reprice", "--db", str(db), "--json")
    assert code == 0, err
    repriced_at = dt.datetime.fromisoformat(json.loads(out)["repriced_at"])
    at = round(repriced_at.timestamp() * 1e6)
    got = _provenance(db)
    _, source, when, before, before_source, price_version = got["wrong"]
    assert source == f"genai-prices@{version('genai-prices')}"
    assert (when, before, before_source) == (at, Decimal("1"), "genai-prices@test")
    assert price_version == version("genai-prices")
    _, source, when, before, before_source, price_version = got["local"]
    assert (source, when, before, before_source) == ("fallback", at, None, "unpriced")
    assert price_version.startswith("registry-")
    # Unchanged rows say so: no provenance.
    assert got["provider"][2:] == (None, None, None, None)
    assert got["mystery"][2:] == (None, None, None, None)


def test_the_control_planes_estimated_rows_are_repriced_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: Path
) -> None:
    def estimated(usage_id: str, **kwargs: Any) -> dict[str, Any]:
        return usage_row(NOW, usage_id=usage_id, estimated=True, **kwargs)

    db = fill(
        tmp_path / "e.duckdb",
        [
            # No price when it ran: charged its reservation; now the registry has one.
            estimated(
                "reserved",
                provider="ollama",
                model="llama3",
                input_tokens=2_000_000,
                output_tokens=1_000_000,
                cost="9",
                price_source="reservation",
            ),
            # Ended before any usage was seen: the reservation is all there is.
            estimated(
                "no-usage",
                provider="ollama",
                model="llama3",
                input_tokens=0,
                output_tokens=0,
                cost="9",
                price_source="reservation",
            ),
            # Still no price anywhere: keeps its reservation (never NULL, never 0).
            estimated(
                "still-unknown", provider="acme", model="x-1", cost="4", price_source="reservation"
            ),
            # Unpriced with its usage known.
            estimated("unpriced", provider="ollama", model="llama3", cost=None),
        ],
    )
    code, out, err = run_cli(capsys, "--config", str(config), "reprice", "--db", str(db))
    assert code == 0, err
    got = costs(db)
    assert got["reserved"] == (Decimal("2.5"), "fallback")
    assert got["no-usage"] == (Decimal("9"), "reservation")
    assert got["still-unknown"] == (Decimal("4"), "reservation")
    assert got["unpriced"][1] == "fallback"
    assert _provenance(db)["reserved"][3:5] == (Decimal("9"), "reservation")
    # What stays unpriced is what `budget check` still counts.
    assert "unpriced calls 4 -> 2" in out
    code, out, _ = run_cli(
        capsys, "budget", "check", "--db", str(db), "--json", "--now", NOW.isoformat()
    )
    assert json.loads(out)["unpriced_calls"] == 2
