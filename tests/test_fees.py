"""Non-token fees: read from what LangChain's chat models return over real HTTP, and priced
from genai-prices (or the pricer's fee prices), apart from the tokens."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

from comptroller._fees import reported_fees
from comptroller.pricing import FALLBACK_SOURCE, GENAI_PRICES_SOURCE, UNPRICED_SOURCE, Pricer

JULY = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)

# The shapes the APIs answer a request with a server-side search tool (abridged to the fields
# their SDKs require).
OPENAI_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1_780_000_000,
    "status": "completed",
    "model": "gpt-4o-2024-08-06",
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [{"type": "web_search"}],
    "output": [
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "search", "query": "comptroller"}},
        {"type": "web_search_call", "id": "ws_2", "status": "completed",
         "action": {"type": "search", "query": "comptroller prices"}},
        {"type": "file_search_call", "id": "fs_1", "status": "completed",
         "queries": ["invoice"], "results": None},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Found it.", "annotations": []}]},
    ],
    "usage": {
        "input_tokens": 900, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 940,
    },
}  # fmt: skip
ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
         "input": {"query": "comptroller"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
            {"type": "web_search_result", "url": "https://example.org", "title": "Example",
             "encrypted_content": "abc", "page_age": None}]},
        {"type": "text", "text": "Found it."},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 1200, "output_tokens": 60, "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        # Anthropic bills the searches it ran, which may be more than the blocks show.
        "server_tool_use": {"web_search_requests": 3},
    },
}  # fmt: skip


@pytest.fixture
def api() -> Iterator[str]:
    """A real HTTP server answering `/v1/responses` and `/v1/messages` with the shapes above."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            answer = OPENAI_RESPONSE if self.path.endswith("/responses") else ANTHROPIC_MESSAGE
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def genai_fee(model: str, provider: str, **counts: int) -> Decimal:
    return Decimal(
        calc_price(
            GenaiUsage(**counts),
            model_ref=model,
            provider_id=provider,
            genai_request_timestamp=JULY,
        ).total_price
    )


@pytest.mark.parametrize("output_version", ["v0", "responses/v1", "v1"])
def test_openai_responses_search_calls_are_read_and_priced(api: str, output_version: str) -> None:
    model = ChatOpenAI(
        model="gpt-4o",
        base_url=f"{api}/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        use_responses_api=True,
        output_version=output_version,
        max_retries=0,
    )
    message = model.invoke("find comptroller", tools=[{"type": "web_search"}])

    fees = reported_fees(message)

    assert fees == {"web_searches": 2, "storage_searches": 1}
    price = Pricer().price_fees("openai", "gpt-4o-2024-08-06", fees, JULY)
    assert price is not None
    assert price.source == GENAI_PRICES_SOURCE
    # $10 per thousand searches, $2.50 per thousand file searches.
    assert price.cost_usd == Decimal("0.0225")
    assert price.cost_usd == genai_fee("gpt-4o", "openai", web_searches=2, storage_searches=1)


def test_anthropic_web_searches_are_read_from_its_usage_and_priced(api: str) -> None:
    model = ChatAnthropic(
        model_name="claude-sonnet-4-5",
        base_url=api,
        api_key="sk-ant-test",  # type: ignore[arg-type]
        max_retries=0,
        timeout=10,
        stop=None,
    )
    message = model.invoke("find comptroller")

    fees = reported_fees(message)

    assert fees == {"web_searches": 3}
    price = Pricer().price_fees("anthropic", "claude-sonnet-4-5-20250929", fees, JULY)
    assert price is not None
    assert price.cost_usd == Decimal("0.03")
    assert price.cost_usd == genai_fee("claude-sonnet-4-5", "anthropic", web_searches=3)


def test_a_plain_answer_reports_no_fees() -> None:
    from langchain_core.messages import AIMessage

    assert reported_fees(AIMessage(content="hello")) == {}
    assert Pricer().price_fees("openai", "gpt-4o", {}, JULY) is None


def test_fees_without_a_genai_price_come_from_the_pricers_fee_prices_else_stay_unpriced() -> None:
    pricer = Pricer(fee_prices={"ollama:*": {"web_searches": "0.005"}})

    local = pricer.price_fees("ollama", "llama3", {"web_searches": 4}, JULY)
    unknown = pricer.price_fees("acme", "x-1", {"web_searches": 1}, JULY)
    no_code_price = pricer.price_fees("ollama", "llama3", {"code_executions": 1}, JULY)

    assert local is not None
    assert (local.cost_usd, local.source) == (Decimal("0.020"), FALLBACK_SOURCE)
    assert unknown is not None
    assert (unknown.cost_usd, unknown.source) == (None, UNPRICED_SOURCE)
    assert no_code_price is not None
    assert no_code_price.cost_usd is None
    with pytest.raises(ValueError, match="unknown fee web_search "):
        Pricer(fee_prices={"ollama:*": {"web_search": "0.005"}})


def test_a_discount_override_applies_to_fees_too() -> None:
    pricer = Pricer(
        overrides=[{"model": "openai:*", "discount": "0.5", "effective_from": "2026-07-01"}]
    )
    price = pricer.price_fees("openai", "gpt-4o", {"web_searches": 2}, JULY)
    assert price is not None
    assert price.cost_usd == Decimal("0.01")
    assert price.source == f"override:openai:*@{GENAI_PRICES_SOURCE}"
