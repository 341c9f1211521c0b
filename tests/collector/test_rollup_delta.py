"""The lander adds only newly inserted usage rows to the rollup (a delta, not a recompute).

Each test compares `llm_usage_daily` after the landings with a full `rebuild_rollup` of
the same `llm_usage`: a redelivered row added as a delta a second time would show up as a
difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector import Lander, Normaliser
from comptroller.collector._normalise import Batch

from .helpers import genai_spans, load_fixture, log_records, rows

_ROLLUP = (
    "select day, tenant, org, context, purpose, provider, model, calls, errors, "
    "input_tokens, output_tokens, cache_read_tokens, cost_usd from llm_usage_daily "
    "order by all"
)


def _third_party(count: int) -> Batch:
    attributes = load_fixture("openai_v2")["spans"][0]["attributes"]
    spans = genai_spans([("chat", attributes)] * count, "opentelemetry.instrumentation.openai_v2")
    return Normaliser().traces(encode_spans(spans))


_EMITTED: dict[str, Any] = {}
"""Usage records by id, emitted once: a redelivery re-sends the same record (same instant)."""


def _usage(ids: list[str]) -> Batch:
    new = [usage_id for usage_id in ids if usage_id not in _EMITTED]
    records = log_records(
        [
            (
                sc.EVENT_USAGE,
                {
                    sc.USAGE_ID: usage_id,
                    sc.TENANT: "acme",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
                    sc.COST_USD: "0.0001",
                    sc.OUTCOME: "ok",
                },
            )
            for usage_id in new
        ]
    )
    _EMITTED.update(zip(new, records, strict=True))
    return Normaliser().logs(encode_logs([_EMITTED[usage_id] for usage_id in ids]))


def _rollup_matches_rebuild(db: Path) -> list[dict[str, Any]]:
    con = analytics.connect(db)
    try:
        landed = rows(con, _ROLLUP)
        analytics.rebuild_rollup(con)
        assert rows(con, _ROLLUP) == landed
        return landed
    finally:
        con.close()


def test_redelivered_spans_in_later_landings_add_nothing_to_the_rollup(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    first, second = _third_party(3), _third_party(2)
    con = analytics.connect(db)
    lander = Lander(con)
    assert lander.land([first]).derived == 3
    assert lander.land([first, second]).derived == 2  # the first batch again, and new rows
    assert lander.land([second]).derived == 0
    con.close()
    landed = _rollup_matches_rebuild(db)
    assert sum(r["calls"] for r in landed) == 5


def test_duplicates_within_one_landing_are_counted_once(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    spans = _third_party(4)
    usage = _usage(["u-1", "u-2"])
    con = analytics.connect(db)
    result = Lander(con).land([spans, usage, spans, usage])
    con.close()
    assert (result.derived, result.inserted["llm_usage"]) == (4, 2)
    landed = _rollup_matches_rebuild(db)
    assert sum(r["calls"] for r in landed) == 6


def test_redelivered_usage_rows_after_a_restart_add_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    con = analytics.connect(db)
    Lander(con).land([_usage(["u-1", "u-2"])])
    con.close()
    con = analytics.connect(db)  # a new lander over the same file, as after a restart
    result = Lander(con).land([_usage(["u-2", "u-3"])])
    con.close()
    assert result.inserted["llm_usage"] == 1
    landed = _rollup_matches_rebuild(db)
    assert [(r["tenant"], r["calls"]) for r in landed] == [("acme", 3)]


def _spend(usage_id: str, cost: str) -> Batch:
    records = log_records(
        [
            (
                sc.EVENT_USAGE,
                {
                    sc.USAGE_ID: usage_id,
                    sc.TENANT: "acme",
                    sc.CONTEXT: "support",
                    sc.PURPOSE: "reasoning",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
                    sc.COST_USD: cost,
                    sc.BUDGET_CAP_USD: "10",
                    sc.OUTCOME: "ok",
                },
            )
        ]
    )
    return Normaliser().logs(encode_logs(records))


def test_budget_crossings_are_checked_at_most_every_interval_and_flushed_after(
    tmp_path: Path,
) -> None:
    now = [100.0]
    con = analytics.connect(tmp_path / "c.duckdb")
    lander = Lander(
        con,
        budget_events_every_s=1.0,
        clock=lambda: now[0],
        warnings=WarningPolicy(thresholds=(0.8,), projected=False),
    )

    def kinds() -> list[str]:
        return [r[0] for r in con.execute("select kind from budget_events order by ts").fetchall()]

    lander.land([_spend("u-1", "8.5")])  # the first landing checks: 85 % → warning
    assert kinds() == ["warning"]
    now[0] += 0.5
    lander.land([_spend("u-2", "2")])  # over the cap, but checked 0.5 s ago: pending
    assert kinds() == ["warning"]
    assert lander.budget_events_pending
    lander.flush_budget_events()  # the writer's idle tick
    assert kinds() == ["warning", "exceeded"]
    assert not lander.budget_events_pending
    now[0] += 5
    lander.land([_spend("u-3", "1")])  # checked, and no crossing is recorded twice
    assert kinds() == ["warning", "exceeded"]
    con.close()


def test_the_relations_kept_in_memory_are_bounded_to_the_newest(tmp_path: Path) -> None:
    con = analytics.connect(tmp_path / "c.duckdb")
    lander = Lander(con, max_traces=5)
    batches = [_third_party(4) for _ in range(3)]
    for batch in batches:
        lander.land([batch])
    newest = [key for key, _, _ in batches[-1].genai_refs]
    kept = list(lander._relations.spans)
    assert len(kept) == 5
    assert kept[-4:] == newest  # the oldest went first
    assert len(lander._relations.derived) == 5
    con.close()


def test_a_restarted_lander_keeps_the_newest_relations(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    con = analytics.connect(db)
    batches = [_third_party(4) for _ in range(3)]  # each batch starts after the last
    lander = Lander(con)
    for batch in batches:
        lander.land([batch])
    con.close()
    con = analytics.connect(db)
    restarted = Lander(con, max_traces=4)  # room for one batch: the newest
    newest = [key for key, _, _ in batches[-1].genai_refs]
    assert list(restarted._relations.spans) == newest
    assert list(restarted._relations.derived) == newest
    con.close()
