"""`ControlPlane.embeddings`: embedding requests run the guarded call flow over real HTTP.

langchain-openai's client talks to `FakeOpenAIServer`'s `/v1/embeddings`; the rows are the
ones the flow records for chat calls (priced by genai-prices from the reported usage).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price
from langchain_core.embeddings import DeterministicFakeEmbedding

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    CallDefaults,
    CircuitPolicy,
    ControlPlane,
    GuardedEmbeddings,
    MemoryGuard,
    ModelRef,
    RateLimited,
    RateLimitSpec,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control.testing import (
    FakeClock,
    FakeOpenAIServer,
    InMemorySink,
    ModelBehaviour,
    ServerReply,
)
from comptroller.errors import UsageError

AT = datetime(2026, 6, 1, 12, tzinfo=UTC)
SMALL = "text-embedding-3-small"
LARGE = "text-embedding-3-large"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as running:
        yield running


def make_plane(
    server: FakeOpenAIServer | None,
    *,
    fallbacks: tuple[str, ...] = (),
    budget: str | None = None,
    rate: RateLimitSpec | None = None,
    model: str = f"openai:{SMALL}",
    max_retries: int = 1,
    sink: InMemorySink | None = None,
    telemetry: str = "none",
    data_dir: Path | None = None,
) -> tuple[ControlPlane, InMemorySink | None]:
    prof = ResolvedProfile(
        purpose="embedding",
        model=ModelRef.parse(model),
        fallbacks=tuple(ModelRef.parse(f) for f in fallbacks),
        base_url=server.base_url if server is not None else None,
        budget=BudgetSpec(daily_usd=Decimal(budget)) if budget is not None else None,
        rate_limit=rate,
    )
    clock = FakeClock(start=AT.timestamp())
    if telemetry == "none" and sink is None:
        sink = InMemorySink()
    overrides = {"data_dir": str(data_dir)} if data_dir is not None else {}
    plane = ControlPlane(
        load_settings(telemetry=telemetry, **overrides),
        resolver=StaticProfiles({"embedding": prof}),
        guard=MemoryGuard(clock=clock),
        sink=sink,
        clock=clock,
        retry_policy=RetryPolicy(max_retries=max_retries, base_s=0.01),
        circuit_policy=CircuitPolicy(consecutive_failures=50),
    )
    return plane, sink


def embedding_cost(model: str, tokens: int) -> Decimal:
    price = calc_price(
        GPUsage(input_tokens=tokens),
        model_ref=model,
        provider_id="openai",
        genai_request_timestamp=AT,
    )
    return Decimal(price.total_price)


def test_documents_and_queries_are_embedded_priced_and_recorded(
    server: FakeOpenAIServer,
) -> None:
    server.behave(SMALL, ModelBehaviour(prompt_tokens=42, embedding_dimensions=12))
    plane, sink = make_plane(server)
    assert sink is not None
    with plane:
        emb = plane.embeddings("embedding", domain="acme-eu", org="acme", context="search")
        assert isinstance(emb, GuardedEmbeddings)
        docs = emb.embed_documents(["refund policy", "shipping times"])
        query = emb.embed_query("refund policy")
        assert plane.flush()

    assert len(docs) == 2
    assert all(len(v) == 12 for v in docs)
    assert query == pytest.approx(docs[0], abs=1e-6)  # the same text, the same vector
    assert docs[0] != docs[1]
    rows = sink.usage_rows()
    assert len(rows) == 2  # one request, one row each
    for row in rows:
        assert row[semconv.GEN_AI_OPERATION_NAME] == "embeddings"
        assert row[semconv.GEN_AI_REQUEST_MODEL] == SMALL
        assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 42
        assert row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
        assert Decimal(row[semconv.COST_USD]) == embedding_cost(SMALL, 42)
        assert row[semconv.PURPOSE] == "embedding"
        assert row[semconv.TENANT] == "acme-eu"
        assert row[semconv.CONTEXT] == "search"
        assert row[semconv.ESTIMATED] is False
    spans = sink.spans(f"embeddings {SMALL}")
    assert len(spans) == 2
    assert spans[0].attributes is not None
    assert spans[0].attributes[semconv.GEN_AI_OPERATION_NAME] == "embeddings"
    # The cost under comptroller's name and the one GenAI instrumentations converge on.
    assert spans[0].attributes[semconv.GEN_AI_USAGE_COST] == float(embedding_cost(SMALL, 42))
    assert spans[0].attributes[semconv.COST_USD] == float(embedding_cost(SMALL, 42))
    assert spans[0].attributes[semconv.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] == 12
    assert len(sink.spans("comptroller.call embedding")) == 2


def test_an_embeddings_span_says_nothing_of_chat_settings(server: FakeOpenAIServer) -> None:
    # A profile's max_tokens and temperature are a chat call's; an embedding request sends
    # neither, so its span does not claim them.
    sink = InMemorySink()
    prof = ResolvedProfile(
        purpose="embedding",
        model=ModelRef.parse(f"openai:{SMALL}"),
        base_url=server.base_url,
        defaults=CallDefaults(max_tokens=256, temperature=0.2),
    )
    with ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"embedding": prof}),
        guard=MemoryGuard(),
        sink=sink,
    ) as plane:
        plane.embeddings(org="acme").embed_query("refund policy")
        assert plane.flush()
    (span,) = sink.spans(f"embeddings {SMALL}")
    assert span.attributes is not None
    assert semconv.GEN_AI_REQUEST_MAX_TOKENS not in span.attributes
    assert semconv.GEN_AI_REQUEST_TEMPERATURE not in span.attributes
    assert span.attributes[semconv.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] > 0


async def test_async_embeddings_run_the_same_flow(server: FakeOpenAIServer) -> None:
    plane, sink = make_plane(server)
    assert sink is not None
    with plane:
        emb = plane.embeddings(domain="acme-eu")
        docs = await emb.aembed_documents(["a", "b", "c"])
        query = await emb.aembed_query("a")
        assert plane.flush()
    assert query == pytest.approx(docs[0], abs=1e-6)
    assert [r[semconv.OUTCOME] for r in sink.usage_rows()] == ["ok", "ok"]


def test_batches_are_separate_requests_and_empty_input_sends_nothing(
    server: FakeOpenAIServer,
) -> None:
    plane, sink = make_plane(server)
    assert sink is not None
    with plane:
        emb = plane.embeddings(batch_size=2)
        assert emb.embed_documents([]) == []
        vectors = emb.embed_documents([f"text {i}" for i in range(5)])
        assert plane.flush()
    assert len(vectors) == 5
    assert server.request_count(SMALL) == 3
    assert [len(body["input"]) for body in server.requests] == [2, 2, 1]
    assert len(sink.usage_rows()) == 3


def test_a_budget_refuses_before_the_request_from_the_input_size(
    server: FakeOpenAIServer,
) -> None:
    # $0.02 per million tokens: a 4,000-byte text reserves 4,000 tokens = $0.00008.
    plane, _ = make_plane(server, budget="0.00005")
    with plane:
        emb = plane.embeddings(domain="acme-eu", context="search")
        with pytest.raises(BudgetExceeded) as refused:
            emb.embed_documents(["x" * 4_000])
        assert refused.value.requested == embedding_cost(SMALL, 4_000)
        assert server.request_count() == 0
        # A small request fits under the cap.
        assert len(emb.embed_query("short")) == 8


def test_token_rate_limit_counts_the_input(server: FakeOpenAIServer) -> None:
    # The bucket takes the bound of the input (60) up front and keeps what was reported.
    server.behave(SMALL, ModelBehaviour(prompt_tokens=55))
    plane, _ = make_plane(
        server, rate=RateLimitSpec(tokens_per_interval=100, interval_s=60, requests_per_interval=50)
    )
    with plane:
        emb = plane.embeddings()
        emb.embed_query("x" * 60)
        with pytest.raises(RateLimited):
            emb.embed_query("y" * 60)  # 55 + 60 tokens in the minute > 100
    assert server.request_count() == 1


def test_transport_failures_retry_then_fall_back_within_embedding_models(
    server: FakeOpenAIServer,
) -> None:
    server.script(SMALL, ServerReply.rate_limited(0.01), ServerReply.server_error(503))
    server.script(LARGE, ServerReply.server_error(500))
    plane, sink = make_plane(server, fallbacks=(f"openai:{LARGE}",), max_retries=1)
    assert sink is not None
    with plane:
        vector = plane.embeddings().embed_query("hello")
        assert plane.flush()
    assert len(vector) == 8
    rows = sink.usage_rows()
    assert [(r[semconv.GEN_AI_REQUEST_MODEL], r[semconv.OUTCOME]) for r in rows] == [
        (SMALL, "error"),
        (SMALL, "error"),
        (LARGE, "error"),
        (LARGE, "ok"),
    ]
    assert rows[-1][semconv.FALLBACK_DEPTH] == 1


def test_usage_not_reported_is_counted_at_the_bound_and_flagged(
    server: FakeOpenAIServer,
) -> None:
    server.behave(SMALL, ModelBehaviour(report_embedding_usage=False))
    plane, sink = make_plane(server)
    assert sink is not None
    with plane:
        plane.embeddings().embed_documents(["héllo", "world"])
        assert plane.flush()
    (row,) = sink.usage_rows()
    assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len("héllo".encode()) + len("world")
    assert row[semconv.ESTIMATED] is True
    assert Decimal(row[semconv.COST_USD]) == embedding_cost(SMALL, 11)


def test_any_langchain_embeddings_can_be_registered_with_estimated_usage() -> None:
    plane, sink = make_plane(None, model="local:hash-embed")
    assert sink is not None
    with plane:
        # A fake at the model boundary: LangChain's deterministic embedding model.
        plane.register_embeddings("local", lambda spec: DeterministicFakeEmbedding(size=5))
        vectors = plane.embeddings().embed_documents(["a", "bb"])
        assert plane.flush()
    assert [len(v) for v in vectors] == [5, 5]
    (row,) = sink.usage_rows()
    assert row[semconv.ESTIMATED] is True
    assert row[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 3
    assert row[semconv.GEN_AI_PROVIDER_NAME] == "local"


def test_an_unknown_embeddings_provider_says_how_to_register_one() -> None:
    plane, _ = make_plane(None, model="nowhere:embed-1")
    with plane, pytest.raises(UsageError, match="register_embeddings"):
        plane.embeddings().embed_query("x")


def test_bad_input_is_refused_with_a_clear_message(server: FakeOpenAIServer) -> None:
    plane, _ = make_plane(server)
    with plane:
        emb = plane.embeddings()
        with pytest.raises(UsageError, match="embed_query"):
            emb.embed_documents("one text")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match=r"text 1 .* int"):
            emb.embed_documents(["ok", 3])  # type: ignore[list-item]
        with pytest.raises(UsageError, match="batch_size"):
            plane.embeddings(batch_size=0)
    assert server.request_count() == 0


def test_embedding_rows_land_in_duckdb(server: FakeOpenAIServer, tmp_path: Path) -> None:
    server.behave(SMALL, ModelBehaviour(prompt_tokens=7))
    plane, _ = make_plane(server, telemetry="embedded", data_dir=tmp_path)
    with plane:
        plane.embeddings(domain="acme-eu").embed_documents(["a", "b"])
        assert plane.flush()
    with duckdb.connect(str(tmp_path / "comptroller.duckdb"), read_only=True) as con:
        got = con.execute(
            "SELECT operation, request_model, input_tokens, cost_usd FROM llm_usage"
        ).fetchall()
    assert len(got) == 1
    operation, model, tokens, cost = got[0]
    assert (operation, model, tokens) == ("embeddings", SMALL, 7)
    assert Decimal(str(cost)) == embedding_cost(SMALL, 7)
