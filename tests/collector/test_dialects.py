"""Every instrumentation's GenAI span lands in the same columns (one fixture per dialect)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from comptroller.collector._aliases import ALIASES

from .conftest import Running
from .helpers import DIALECTS, fixture_spans, load_fixture

COLUMNS = (
    "operation",
    "provider",
    "request_model",
    "response_model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "finish_reasons",
)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_dialect_fixture_lands_in_the_canonical_columns(running: Running, dialect: str) -> None:
    fixture = load_fixture(dialect)
    spans = fixture_spans(fixture)
    assert (
        OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(spans)
        is SpanExportResult.SUCCESS
    )
    leaf = running.sql(
        f"select dialect, {', '.join(COLUMNS)}, attributes from spans "
        "where operation in ('chat', 'embeddings', 'text_completion', 'generate_content')"
    )
    assert len(leaf) == 1, leaf
    expect = fixture["expect"]
    assert leaf[0]["dialect"] == dialect
    assert {c: leaf[0][c] for c in COLUMNS} == {c: expect[c] for c in COLUMNS}
    # The raw attributes are kept, to re-normalise old data with a newer alias table.
    assert '"gen_ai.' in leaf[0]["attributes"] or '"llm.' in leaf[0]["attributes"]
    usage = running.sql("select source, input_tokens, output_tokens, cost_usd from llm_usage")
    if expect["derived"]:
        assert len(usage) == 1
        assert usage[0]["source"] == f"derived:{dialect}"
        assert (usage[0]["input_tokens"], usage[0]["output_tokens"]) == (120, 30)
        assert usage[0]["cost_usd"] is not None
    else:
        assert usage == []  # comptroller spans are counted by their usage row, never derived


def test_every_dialect_agrees_on_the_same_call(running: Running) -> None:
    for dialect in DIALECTS:
        OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(
            fixture_spans(load_fixture(dialect))
        )
    agreed = running.sql(
        "select distinct operation, provider, response_model, input_tokens, output_tokens from spans "
        "where operation = 'chat'"
    )
    assert agreed == [
        {
            "operation": "chat",
            "provider": "openai",
            "response_model": "gpt-4o-mini-2024-07-18",
            "input_tokens": 120,
            "output_tokens": 30,
        }
    ]
    # The same call is priced the same, whoever reported it (given what each one reports).
    costs = running.sql(
        "select cache_read_tokens, count(distinct cost_usd) as prices from llm_usage group by 1 order by 1"
    )
    assert costs == [{"cache_read_tokens": 0, "prices": 1}, {"cache_read_tokens": 20, "prices": 1}]


def test_older_and_newer_names_of_one_token_kind_are_not_summed(running: Running) -> None:
    fixture = load_fixture("openllmetry")
    assert {"gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"} <= set(
        fixture["spans"][0]["children"][0]["attributes"]
    )
    OTLPSpanExporter(timeout=60, endpoint=running.endpoint("traces")).export(fixture_spans(fixture))
    assert running.sql("select input_tokens from llm_usage") == [{"input_tokens": 120}]


def test_alias_table_maps_cache_creation_and_cache_write_to_one_column() -> None:
    writes = {
        key for key, hits in ALIASES.items() if any(f == "cache_write_tokens" for f, _ in hits)
    }
    assert {
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
    } <= writes
