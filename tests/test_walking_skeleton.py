"""Issue 2's end-to-end path: ChatOpenAI over HTTP → control plane → embedded sink → DuckDB.

Nothing here is a double but the OpenAI-compatible endpoint (the model boundary): the real
langchain-openai client, the real OpenTelemetry SDK and the real DuckDB file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from comptroller.config import load_settings
from comptroller.control import ControlPlane, ModelRef, ResolvedProfile, StaticProfiles
from comptroller.control.testing import FakeOpenAIServer, ModelBehaviour


def test_chat_openai_call_lands_priced_span_and_usage_row_in_duckdb(data_dir: Path) -> None:
    db_file = data_dir / "skeleton.duckdb"
    settings = load_settings(None, data_dir=data_dir, db=db_file, telemetry="embedded")
    with FakeOpenAIServer() as server:
        server.behave(
            "gpt-4o-mini",
            ModelBehaviour(
                content="The ticket is about a refund.",
                prompt_tokens=120,
                completion_tokens=30,
                cached_tokens=40,
            ),
        )
        profiles = StaticProfiles(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning",
                    model=ModelRef(provider="openai", model="gpt-4o-mini"),
                    base_url=server.base_url,
                )
            }
        )
        with ControlPlane(settings, resolver=profiles) as plane:
            model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
            reply = model.invoke("Summarise the ticket")
        assert "refund" in str(reply.content)
        assert len(server.requests) == 1  # one HTTP call, no hidden SDK retries

    con = duckdb.connect(str(db_file), read_only=True)
    try:
        spans = con.execute(
            "select name, kind, operation, provider, request_model, response_model, "
            "input_tokens, output_tokens, cache_read_tokens, purpose, tenant, org, context "
            "from spans where is_genai and operation = 'chat'"
        ).fetchall()
        usage = con.execute(
            "select provider, request_model, input_tokens, output_tokens, cache_read_tokens, "
            "cost_usd, price_source, estimated, outcome, tenant, org, context, purpose, "
            "trace_id, span_id from llm_usage"
        ).fetchall()
        span_ids = con.execute(
            "select trace_id, span_id from spans where is_genai and operation = 'chat'"
        ).fetchall()
    finally:
        con.close()

    assert spans == [
        (
            "chat gpt-4o-mini",
            "CLIENT",
            "chat",
            "openai",
            "gpt-4o-mini",
            "gpt-4o-mini",
            120,
            30,
            40,
            "reasoning",
            "acme-eu",
            "acme",
            "support",
        )
    ]
    assert len(usage) == 1
    (
        provider,
        model_id,
        inp,
        out,
        cached,
        cost,
        source,
        estimated,
        outcome,
        tenant,
        org,
        context,
        purpose,
        trace_id,
        span_id,
    ) = usage[0]
    assert (provider, model_id, inp, out, cached) == ("openai", "gpt-4o-mini", 120, 30, 40)
    expected = calc_price(
        GPUsage(input_tokens=120, output_tokens=30, cache_read_tokens=40),
        model_ref="gpt-4o-mini",
        provider_id="openai",
        genai_request_timestamp=datetime.now(UTC),
    ).total_price
    assert cost == pytest.approx(Decimal(expected), abs=Decimal("1e-10"))
    assert cost > 0
    assert source.startswith("genai-prices@")
    assert (estimated, outcome) == (False, "ok")
    assert (tenant, org, context, purpose) == ("acme-eu", "acme", "support", "reasoning")
    assert (trace_id, span_id) in span_ids  # the usage row points at its attempt span
