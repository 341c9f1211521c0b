"""How the collector stores what it lands: row groups written straight to the file."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from comptroller import semconv as sc
from comptroller.collector import Collector

from .helpers import genai_spans

SPANS = 5000


@pytest.fixture(scope="module")
def request_body() -> bytes:
    """One export of SPANS chat spans (openai-v2), each with a derived usage row."""
    attributes = {
        sc.GEN_AI_OPERATION_NAME: "chat",
        "gen_ai.system": "openai",
        sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
    }
    spans = genai_spans(
        [("chat gpt-4o-mini", attributes)] * SPANS, "opentelemetry.instrumentation.openai_v2"
    )
    return encode_spans(spans).SerializeToString()  # type: ignore[no-any-return]


def _land(db: Path, body: bytes, **kwargs: object) -> None:
    collector = Collector(db, **kwargs)  # type: ignore[arg-type]
    try:
        message, batch = collector.decode_normalise("traces", "protobuf", body)
        collector.accept("traces", message, batch, body)
        assert collector.pipeline.wait_landed(30)
    finally:
        collector.close()


def _row_groups(db: Path, table: str) -> list[int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            f"SELECT row_group_id, max(count) FROM pragma_storage_info('{table}') "
            "GROUP BY row_group_id ORDER BY row_group_id"
        ).fetchall()
        assert con.execute(f"SELECT count(*) FROM {table}").fetchall() == [(SPANS,)]
    finally:
        con.close()
    return [int(count) for _, count in rows]


def test_a_landing_bigger_than_a_row_group_writes_row_groups_of_the_set_size(
    tmp_path: Path, request_body: bytes
) -> None:
    db = tmp_path / "small.duckdb"
    _land(db, request_body, row_group_size=2048)
    for table in ("spans", "llm_usage"):
        assert _row_groups(db, table) == [2048, 2048, SPANS - 2 * 2048]


def test_without_a_row_group_size_duckdb_keeps_its_own(tmp_path: Path, request_body: bytes) -> None:
    db = tmp_path / "default.duckdb"
    _land(db, request_body, row_group_size=None)
    assert _row_groups(db, "spans") == [SPANS]
