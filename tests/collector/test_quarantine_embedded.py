"""The embedded sink never says "landed" when a row did not land.

Real SDK pipelines (the control plane's `Telemetry`), a real DuckDB file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import duckdb
import pytest
from opentelemetry.trace import SpanContext, TraceFlags

from comptroller import semconv as sc
from comptroller.collector import EmbeddedSink
from comptroller.config import load_settings
from comptroller.control import ControlPlane
from comptroller.control._telemetry import Telemetry, new_span_id, new_trace_id

from .helpers import usage_event


def _emit(telemetry: Telemetry, usage_id: str, **changes: object) -> None:
    _, attributes = usage_event(usage_id)
    attributes.update(changes)
    context = SpanContext(new_trace_id(), new_span_id(), False, TraceFlags(TraceFlags.SAMPLED))
    telemetry.export_record(sc.EVENT_USAGE, attributes, time.time_ns(), context)  # type: ignore[arg-type]


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_flush_reports_failure_when_rows_were_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "e.duckdb"
    telemetry = Telemetry(EmbeddedSink(db), schedule_delay_ms=60_000)
    _emit(telemetry, "u-ok")
    assert telemetry.flush() is True
    for i in range(21):
        _emit(telemetry, f"u-bad-{i}", **{sc.COST_USD: "1e12"})
    _emit(telemetry, "u-ok-2")
    assert telemetry.flush() is False
    assert telemetry.flush() is True  # nothing new went wrong since
    with caplog.at_level(logging.WARNING, logger="comptroller.collector._embedded"):
        telemetry.shutdown()
    [warning] = [r for r in caplog.records if "did not land" in r.getMessage()]
    assert "21 spans, usage rows or events" in warning.getMessage()
    assert "cost_usd_out_of_range" in warning.getMessage()
    assert _rows(db, "select usage_id from llm_usage order by 1") == [("u-ok",), ("u-ok-2",)]
    assert _rows(db, "select count(*), min(reason) from rejected_records") == [
        (21, "cost_usd_out_of_range")
    ]


def test_control_plane_flush_is_false_for_rows_out_of_the_ledgers_range(tmp_path: Path) -> None:
    db = tmp_path / "plane.duckdb"
    plane = ControlPlane(load_settings(telemetry="none"), sink=EmbeddedSink(db))
    try:
        _emit(plane.telemetry, "u-neg", **{sc.GEN_AI_USAGE_INPUT_TOKENS: -1})
        _emit(plane.telemetry, "u-cost", **{sc.COST_USD: "-3"})
        assert plane.flush() is False
    finally:
        plane.shutdown()
    assert _rows(db, "select count(*) from llm_usage") == [(0,)]
    assert _rows(db, "select reason from rejected_records order by 1") == [
        ("cost_usd_out_of_range",),
        ("negative_tokens",),
    ]
