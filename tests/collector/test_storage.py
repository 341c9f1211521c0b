"""How the collector stores what it lands: row groups written straight to the file, and
each span's resource once."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.collector import Batch, Collector, Lander, Normaliser

from .helpers import fixture_spans, genai_spans

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
    for table in ("span_rows", "llm_usage"):
        assert _row_groups(db, table) == [2048, 2048, SPANS - 2 * 2048]


def test_without_a_row_group_size_duckdb_keeps_its_own(tmp_path: Path, request_body: bytes) -> None:
    db = tmp_path / "default.duckdb"
    _land(db, request_body, row_group_size=None)
    assert _row_groups(db, "span_rows") == [SPANS]


def test_a_resource_is_stored_once_and_read_back_with_every_span(
    tmp_path: Path, request_body: bytes
) -> None:
    db = tmp_path / "r.duckdb"
    _land(db, request_body)
    _land(db, request_body)  # the same spans and resource again: nothing new
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM resources").fetchall() == [(1,)]
        assert con.execute(
            "SELECT count(*), count(resource), count(resource_id) FROM span_rows"
        ).fetchall() == [(SPANS, 0, SPANS)]
        assert con.execute(
            "SELECT count(*) FROM spans WHERE resource->>'$.\"service.name\"' = 'app'"
        ).fetchall() == [(SPANS,)]
    finally:
        con.close()


def _traces(*services: str) -> Batch:
    """One request holding a chat span from each service (a resource each)."""
    request = ExportTraceServiceRequest()
    for service in services:
        spans = fixture_spans(
            {
                "scope": "opentelemetry.instrumentation.openai_v2",
                "resource": {"service.name": service},
                "spans": [{"name": "chat", "kind": "CLIENT", "attributes": {}}],
            }
        )
        request.MergeFrom(encode_spans(spans))
    return Normaliser().traces(request)


def _service_of_each_span(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    rows = con.execute(
        "SELECT service_name, resource->>'$.\"service.name\"' FROM spans ORDER BY 1"
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def test_resources_with_one_id_are_kept_inline_and_read_back_right(tmp_path: Path) -> None:
    con = analytics.connect(tmp_path / "clash.duckdb")
    lander = Lander(con)
    lander.resource_id = lambda text: 42  # every resource hashes alike
    lander.land([_traces("a")])  # stored by id
    lander.land([_traces("b")])  # the id is taken by another resource: inline
    lander.land([_traces("c", "d")])  # two resources, one id, in one landing: inline
    assert _service_of_each_span(con) == [("a", "a"), ("b", "b"), ("c", "c"), ("d", "d")]
    assert con.execute(
        "SELECT resource_id, resource->>'$.\"service.name\"' FROM resources"
    ).fetchall() == [(42, "a")]
    assert con.execute(
        "SELECT count(*) FROM span_rows WHERE resource IS NOT NULL AND resource_id IS NULL"
    ).fetchall() == [(3,)]
    con.close()


def test_spans_landed_before_resources_were_stored_once_read_the_same(tmp_path: Path) -> None:
    con = analytics.connect(tmp_path / "old.duckdb")
    # A span as schema v2 stored it: its resource inline, no id.
    con.execute(
        "INSERT INTO span_rows (trace_id, span_id, name, start_ts, service_name, resource) "
        "VALUES ('t', 's', 'chat', now(), 'old', '{\"service.name\":\"old\"}')"
    )
    Lander(con).land([_traces("new")])
    assert _service_of_each_span(con) == [("new", "new"), ("old", "old")]
    con.close()
