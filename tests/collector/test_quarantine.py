"""One record can never stop the ledger: out-of-range values are quarantined, the rest lands.

A real collector over real HTTP and gRPC, real SDK spans and log records, a real DuckDB file.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from comptroller import semconv as sc
from comptroller.collector import Collector
from comptroller.collector._grpc import start_grpc
from comptroller.collector._ingest_log import IngestLog
from comptroller.collector._land import DATABASE_ID_KEY, LOG_SEQ_KEY
from comptroller.collector._service import default_log_dir

from .conftest import Running
from .helpers import genai_spans, log_records, otlp_json, usage_event

PB = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
_post = functools.partial(httpx.post, timeout=60)
_get = functools.partial(httpx.get, timeout=60)
CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
COST = "comptroller.cost.usd"
_Y1990_NS = int(dt.datetime(1990, 1, 1, tzinfo=dt.UTC).timestamp() * 1e9)


def _spans_request(bad: dict[str, Any], name: str = "bad") -> bytes:
    spans = genai_spans([("ok-1", CHAT), (name, dict(CHAT, **bad)), ("ok-2", CHAT)], "acme.llm")
    return encode_spans(spans).SerializeToString()


def _usage_request(bad: dict[str, Any], *, ts_ns: int | None = None) -> ExportLogsServiceRequest:
    event = usage_event("u-bad")
    event[1].update(bad)
    request = encode_logs(log_records([usage_event("u-ok"), event]))
    if ts_ns is not None:
        for record in request.resource_logs[0].scope_logs[0].log_records:
            if any(kv.value.string_value == "u-bad" for kv in record.attributes):
                record.time_unix_nano = ts_ns
                record.observed_time_unix_nano = ts_ns
    return request


def _rejected(run: Running) -> list[dict[str, Any]]:
    return run.sql(
        "select signal, target, reason, detail, source, attributes::varchar as attributes "
        "from rejected_records order by received_at"
    )


def test_span_with_cost_over_the_ledgers_range_is_quarantined_and_the_rest_lands(
    running: Running,
) -> None:
    response = _post(running.endpoint("traces"), content=_spans_request({COST: 1e12}), headers=PB)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 1
    assert "cost_usd_out_of_range" in parsed.partial_success.error_message
    assert "1000000000000.0" in parsed.partial_success.error_message
    assert running.sql("select name from spans order by name") == [
        {"name": "ok-1"},
        {"name": "ok-2"},
    ]
    # Its derived usage row is not believed either: only the good spans are counted.
    assert running.sql("select count(*) as n from llm_usage") == [{"n": 2}]
    [record] = _rejected(running)
    assert record["signal"] == "traces"
    assert record["target"] == "spans"
    assert record["reason"] == "cost_usd_out_of_range"
    assert json.loads(record["attributes"])[COST] == 1e12
    assert "scope=acme.llm" in record["source"]
    assert "client=127.0.0.1" in record["source"]
    health = _get(f"{running.url}/health").json()
    assert health["rejected"] == {"spans": 1, "usage": 0, "events": 0}
    assert health["status"] == "ok"
    assert health["landing_failures"] == 0
    # The collector keeps landing what comes after.
    later = encode_spans(genai_spans([("later", CHAT)], "x")).SerializeToString()
    assert _post(running.endpoint("traces"), content=later, headers=PB).status_code == 200
    assert {"name": "later"} in running.sql("select name from spans")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({COST: -5.0}, "cost_usd_out_of_range"),
        ({COST: float("inf")}, "cost_usd_out_of_range"),
        ({"gen_ai.usage.input_tokens": 2**62}, "input_tokens_out_of_range"),
        ({"comptroller.attempt": 2**40}, "int_out_of_range"),
    ],
)
def test_spans_out_of_range_are_quarantined_over_json_too(
    running: Running, bad: dict[str, Any], reason: str
) -> None:
    request = encode_spans(genai_spans([("ok-1", CHAT), ("bad", dict(CHAT, **bad))], "acme.llm"))
    response = _post(running.endpoint("traces"), content=otlp_json(request), headers=JSON)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert (int(partial["rejectedSpans"]), reason in partial["errorMessage"]) == (1, True)
    assert running.sql("select name from spans") == [{"name": "ok-1"}]
    assert [r["reason"] for r in _rejected(running)] == [reason]


@pytest.mark.parametrize(
    ("bad", "ts_ns", "reason"),
    [
        ({sc.COST_USD: "-5"}, None, "cost_usd_out_of_range"),
        ({sc.COST_USD: "1e12"}, None, "cost_usd_out_of_range"),
        ({sc.BUDGET_CAP_USD: "1e15"}, None, "budget_cap_usd_out_of_range"),
        ({sc.GEN_AI_USAGE_INPUT_TOKENS: -5}, None, "negative_tokens"),
        ({sc.GEN_AI_USAGE_INPUT_TOKENS: 2**62}, None, "input_tokens_out_of_range"),
        ({sc.GEN_AI_USAGE_INPUT_TOKENS: "99999999999999999999999"}, None, "token_overflow"),
        ({}, _Y1990_NS, "ts_out_of_range"),
    ],
)
def test_usage_records_out_of_range_are_quarantined(
    running: Running, bad: dict[str, Any], ts_ns: int | None, reason: str
) -> None:
    body = _usage_request(bad, ts_ns=ts_ns).SerializeToString()
    response = _post(running.endpoint("logs"), content=body, headers=PB)
    assert response.status_code == 200
    parsed = ExportLogsServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_log_records == 1
    assert reason in parsed.partial_success.error_message
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-ok"}]
    [record] = _rejected(running)
    assert (record["signal"], record["target"], record["reason"]) == ("logs", "llm_usage", reason)
    assert json.loads(record["attributes"])[sc.USAGE_ID] == "u-bad"
    assert "client=127.0.0.1" in record["source"]
    assert _get(f"{running.url}/health").json()["rejected"]["usage"] == 1


def _spend(run: Running) -> list[tuple[str, str, str, str, int]]:
    states = _get(f"{run.url}/api/budget-state").json()
    return [(s["tenant"], s["context"], s["purpose"], s["spent_usd"], s["calls"]) for s in states]


def test_a_forged_negative_cost_cannot_lower_a_keys_spend(running: Running) -> None:
    first = encode_logs(log_records([usage_event("u-1")])).SerializeToString()
    assert _post(running.endpoint("logs"), content=first, headers=PB).status_code == 200
    before = _spend(running)
    assert before == [("acme-eu", "support", "reasoning", "0.0035000000", 1)]
    forged = usage_event("u-forged")
    forged[1][sc.COST_USD] = "-1000"
    body = encode_logs(log_records([forged])).SerializeToString()
    response = _post(running.endpoint("logs"), content=body, headers=PB)
    parsed = ExportLogsServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_log_records == 1
    assert _spend(running) == before
    assert running.sql("select sum(cost_usd)::varchar as s from llm_usage_daily") == [
        {"s": "0.0035000000"}
    ]


@pytest.fixture
def channel(running: Running) -> Iterator[grpc.Channel]:
    server, port = start_grpc(running.collector, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    server.stop(grace=None).wait()


def test_grpc_reports_quarantined_spans_and_records(
    running: Running, channel: grpc.Channel
) -> None:
    traces = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
    spans = genai_spans([("ok", CHAT), ("bad", dict(CHAT, **{COST: 1e12}))], "x")
    response = traces.Export(encode_spans(spans))
    assert response.partial_success.rejected_spans == 1
    assert "cost_usd_out_of_range" in response.partial_success.error_message
    logs = logs_service_pb2_grpc.LogsServiceStub(channel)  # type: ignore[no-untyped-call]
    answer = logs.Export(_usage_request({sc.COST_USD: "-5"}))
    assert answer.partial_success.rejected_log_records == 1
    assert "cost_usd_out_of_range" in answer.partial_success.error_message
    assert running.sql("select name from spans") == [{"name": "ok"}]
    assert running.sql("select usage_id from llm_usage where source = 'comptroller'") == [
        {"usage_id": "u-ok"}
    ]
    records = _rejected(running)
    assert [(r["target"], r["reason"]) for r in records] == [
        ("spans", "cost_usd_out_of_range"),
        ("llm_usage", "cost_usd_out_of_range"),
    ]
    assert all("client=ipv" in r["source"] for r in records)


def test_a_row_the_database_refuses_is_quarantined_not_retried_forever(
    running: Running,
) -> None:
    # Defence in depth: a batch that skipped validation reaches the writer.
    collector = running.collector
    body = _usage_request({sc.COST_USD: "1e12"}).SerializeToString()
    message = ExportLogsServiceRequest.FromString(body)
    unchecked = collector.normalise("logs", message)
    collector.accept("logs", message, unchecked, body)
    assert collector.pipeline.wait_landed(30)
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-ok"}]
    [record] = running.sql("select target, reason, detail from rejected_records")
    assert record["target"] == "llm_usage"
    assert record["reason"] == "refused_by_database"
    assert "ConversionException" in record["detail"]
    health = collector.pipeline.health()
    assert (health["status"], health["landing_failures"]) == ("ok", 0)
    assert health["rejected"]["usage"] == 1


def _log_without_landing(db: Path, signal: str, payload: bytes) -> None:
    """Put a request in the ingest log as a crash after the ack would have left it."""
    con = duckdb.connect(str(db))
    try:
        meta = dict(con.execute("select key, value from comptroller_meta").fetchall())
    finally:
        con.close()
    log = IngestLog(default_log_dir(db))
    try:
        log.bind(meta[DATABASE_ID_KEY])
        log.advance_to(int(meta.get(LOG_SEQ_KEY, 0)))
        log.append(signal, payload)
    finally:
        log.close()


def test_a_restart_replaying_a_record_out_of_range_does_not_die(tmp_path: Path) -> None:
    db = tmp_path / "replay.duckdb"
    Collector(db).close()
    # Logged before validation existed (or by a collector whose checks were looser).
    _log_without_landing(db, "traces", _spans_request({COST: 1e12}))
    _log_without_landing(db, "logs", _usage_request({sc.COST_USD: "-5"}).SerializeToString())
    collector = Collector(db)
    try:
        assert collector.replayed == 2
        names = collector.query("select name from spans order by name").to_pylist()
        assert names == [{"name": "ok-1"}, {"name": "ok-2"}]
        assert collector.query("select usage_id from llm_usage where source = 'comptroller'")[
            "usage_id"
        ].to_pylist() == ["u-ok"]
        reasons = collector.query("select target, reason from rejected_records order by 1")
        assert reasons.to_pylist() == [
            {"target": "llm_usage", "reason": "cost_usd_out_of_range"},
            {"target": "spans", "reason": "cost_usd_out_of_range"},
        ]
    finally:
        collector.close()
    # And the next start replays nothing and opens cleanly.
    again = Collector(db)
    try:
        assert again.replayed == 0
    finally:
        again.close()


def test_usage_and_event_records_over_json_are_quarantined(running: Running) -> None:
    request = _usage_request({sc.COST_USD: "-5"})
    events = encode_logs(
        log_records([(sc.EVENT_CIRCUIT_OPENED, {sc.GEN_AI_PROVIDER_NAME: "openai"})])
    )
    for record in events.resource_logs[0].scope_logs[0].log_records:
        record.time_unix_nano = _Y1990_NS
    request.resource_logs.extend(events.resource_logs)
    response = _post(running.endpoint("logs"), content=otlp_json(request), headers=JSON)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 2
    assert "cost_usd_out_of_range" in partial["errorMessage"]
    assert "ts_out_of_range" in partial["errorMessage"]
    assert running.sql("select usage_id from llm_usage") == [{"usage_id": "u-ok"}]
    assert running.sql("select count(*) as n from circuit_events") == [{"n": 0}]
    health = _get(f"{running.url}/health").json()
    assert health["rejected"] == {"spans": 0, "usage": 1, "events": 1}
