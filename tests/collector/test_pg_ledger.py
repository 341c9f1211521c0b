"""The ledger on PostgreSQL: schema from the declarations, exactly-once landing per
collector, rollups equal to the raw rows (and to DuckDB's), budget state from the rollups.

Every test runs in a schema of its own on the real server (tests/conftest.py's
`postgres_url`), with batches made by the collector's own decoding path from OTLP requests
built with the OpenTelemetry SDK.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.analytics._pg_budget import budget_state_pg
from comptroller.analytics._pg_schema import (
    PG_SCHEMA_VERSION,
    ROLLUPS,
    STORED,
    connect_pg,
    migrate_pg,
    pg_schema_version,
    pg_type,
)
from comptroller.analytics._tables import LANDED
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._decode import decode
from comptroller.collector._ingest_log import IngestLog
from comptroller.collector._land import Lander
from comptroller.collector._land_pg import PgLander, rebuild_rollups_pg
from comptroller.collector._normalise import Batch, Normaliser
from comptroller.collector._notify import Alert
from comptroller.collector._validate import validate
from comptroller.errors import ConfigError

from .helpers import fixture_spans, genai_spans, log_records, usage_event
from .test_counting import LANGCHAIN_OVER_OPENAI

pytestmark = pytest.mark.postgres

_TENANTS = ("acme-eu", "acme-us", "lab")
_PURPOSES = ("reasoning", "scoring", "agent_turn")


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(URL, schema): a schema of this test's own, dropped afterwards."""
    schema = f"t_ledger_{uuid.uuid4().hex[:12]}"
    yield postgres_url, schema
    con = connect_pg(postgres_url, migrate=False)
    try:
        cur = con.cursor()
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.close()
        con.commit()
    finally:
        con.close()


def _rows(con: Any, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    cur = con.cursor()
    try:
        cur.execute(sql, params)
        out = list(cur.fetchall())
        con.commit()
        return out
    finally:
        cur.close()


def usage_payload(seed: int, rows: int, *, prefix: str = "u") -> bytes:
    """An OTLP logs request of `rows` comptroller usage records (ids `prefix-seed-i`)."""
    rng = random.Random(seed)
    events = []
    for i in range(rows):
        name, attributes = usage_event(f"{prefix}-{seed}-{i}")
        attributes = dict(attributes)
        attributes[sc.TENANT] = rng.choice(_TENANTS)
        attributes[sc.PURPOSE] = rng.choice(_PURPOSES)
        attributes[sc.COST_USD] = str(Decimal(rng.randint(1, 999_999)) / Decimal(10**7))
        attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] = rng.randint(1, 5000)
        attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = rng.randint(1, 900)
        attributes[sc.BUDGET_CAP_USD] = rng.choice(("0.5", "2", "10"))
        if rng.random() < 0.1:
            attributes[sc.OUTCOME] = "error"
        if rng.random() < 0.05:
            attributes[sc.PRICE_SOURCE] = "unpriced"
            del attributes[sc.COST_USD]
        events.append((name, attributes))
    return encode_logs(log_records(events)).SerializeToString()


def span_payload() -> bytes:
    """An OTLP traces request: one third-party GenAI span (a derived usage row)."""
    spans = genai_spans(
        [
            (
                "chat gpt-4o",
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 10,
                    "gen_ai.usage.output_tokens": 5,
                },
            )
        ],
        "opentelemetry.instrumentation.openai_v2",
    )
    return encode_spans(spans).SerializeToString()


def decode_batch(normaliser: Normaliser, signal_name: str, payload: bytes) -> Batch:
    """The collector's decoding path: protobuf, normalise, validate."""
    message = decode(signal_name, "protobuf", payload)  # type: ignore[arg-type]
    batch = (
        normaliser.traces(message)  # type: ignore[arg-type]
        if signal_name == "traces"
        else normaliser.logs(message)  # type: ignore[arg-type]
    )
    return validate(
        batch,
        signal=signal_name,
        latest_ns=normaliser.latest_ns(),
        received=dt.datetime.now(dt.UTC),
    )


def _sums(con: Any) -> dict[str, Any]:
    """Raw sums of llm_usage and the same sums over each rollup."""
    raw = _rows(
        con,
        "SELECT count(*), coalesce(sum(cost_usd), 0)::TEXT, coalesce(sum(input_tokens), 0)::BIGINT, "
        "count(DISTINCT usage_id) FROM llm_usage",
    )[0]
    daily = _rows(
        con,
        "SELECT coalesce(sum(calls), 0)::BIGINT, coalesce(sum(cost_usd), 0)::TEXT, "
        "coalesce(sum(input_tokens), 0)::BIGINT FROM llm_usage_daily",
    )[0]
    budget = _rows(
        con,
        "SELECT coalesce(sum(calls), 0)::BIGINT, coalesce(sum(spent_usd), 0)::TEXT "
        "FROM llm_budget_daily",
    )[0]
    hourly = _rows(
        con,
        "SELECT coalesce(sum(calls), 0)::BIGINT, coalesce(sum(cost_usd), 0)::TEXT, "
        "coalesce(sum(input_tokens), 0)::BIGINT FROM llm_usage_hourly",
    )[0]
    return {"raw": raw, "daily": daily, "budget": budget, "hourly": hourly}


def _assert_rollups_equal_raw(con: Any) -> int:
    sums = _sums(con)
    count, cost, tokens, distinct = sums["raw"]
    assert count == distinct  # no usage row twice
    assert sums["daily"] == (count, cost, tokens)
    assert sums["budget"] == (count, cost)
    assert sums["hourly"] == (count, cost, tokens)
    return int(count)


def _rollup_tables(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name, table in ROLLUPS.items():
        cols = ", ".join(f"{c.name}::TEXT" if "DECIMAL" in c.sql else c.name for c in table.columns)
        keys = ", ".join(table.primary_key)
        out[name] = _rows(con, f"SELECT {cols} FROM {name} ORDER BY {keys}")
    return out


# --- the schema ---------------------------------------------------------------------------


def test_schema_is_the_declarations_and_migrates_once(pg: tuple[str, str]) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    try:
        assert pg_schema_version(con) == PG_SCHEMA_VERSION
        assert migrate_pg(con) == []  # current: nothing applied twice
        found: dict[str, dict[str, str]] = {}
        for table, column, kind in _rows(
            con,
            "SELECT table_name, column_name, "
            "CASE WHEN data_type = 'ARRAY' THEN udt_name ELSE data_type END "
            "FROM information_schema.columns WHERE table_schema = $1 "
            "ORDER BY table_name, ordinal_position",
            [schema],
        ):
            found.setdefault(table, {})[column] = kind
        declared = {**{STORED.get(n, n): t for n, t in LANDED.items()}, **ROLLUPS}
        for stored, table in declared.items():
            columns = found[stored]
            assert [c.name for c in table.columns] == [c for c in columns if c != "resource_id"], (
                stored
            )
        # One mapping of types: spot checks of what the declarations hold.
        assert found["llm_usage"]["cost_usd"] == "numeric"
        assert found["llm_usage"]["ts"] == "timestamp with time zone"
        assert found["span_rows"]["finish_reasons"] == "_text"
        assert found["span_rows"]["attributes"] == "jsonb"
        assert found["llm_budget_daily"]["unpriced_models"] == "_text"
        assert pg_type("DECIMAL(38, 10)") == "NUMERIC(38, 10)"
        assert pg_type("VARCHAR[]") == "TEXT[]"
        with pytest.raises(ConfigError, match="pg_type"):
            pg_type("HUGEINT")
    finally:
        con.close()


# --- exactly once -------------------------------------------------------------------------


def test_replayed_positions_land_nothing_twice(pg: tuple[str, str]) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    normaliser = Normaliser()
    payloads = [usage_payload(seed, 20) for seed in range(6)]
    batches = [decode_batch(normaliser, "logs", p) for p in payloads]
    traces = decode_batch(normaliser, "traces", span_payload())
    try:
        lander = PgLander(con, collector_id="c-1")
        first = lander.land([*batches[:3], traces], positions=[1, 2, 3, 4])
        assert first.inserted["llm_usage"] == 60
        assert first.inserted["spans"] == 1
        assert first.derived == 1
        assert lander.landed_position() == 4
        # A replay of the same positions, grouped otherwise, and one overlapping new ones.
        again = lander.land([*batches[:3], traces], positions=[1, 2, 3, 4])
        assert again.skipped_positions == [1, 2, 3, 4]
        assert not again.inserted
        overlap = lander.land(batches[2:], positions=[3, 5, 6, 7])
        assert overlap.skipped_positions == [3]
        assert overlap.landed_positions == [5, 6, 7]
        assert overlap.inserted["llm_usage"] == 60
        # The group form of the DuckDB lander: skipped whole at or below the mark.
        assert lander.land(batches[:1], log_seq=7).skipped_positions == [7]
        # A restarted lander (a new process) resumes after the mark.
        assert PgLander(con, collector_id="c-1").landed_position() == 7
        count = _assert_rollups_equal_raw(con)
        assert count == 6 * 20 + 1
        assert _rows(con, "SELECT count(*) FROM span_rows") == [(1,)]
        assert _rows(
            con,
            "SELECT first_position, position FROM ledger_positions ORDER BY position",
        ) == [(1, 4), (5, 7)]
        # The same usage rows sent to another collector land once (ids are unique).
        other = PgLander(con, collector_id="c-2").land(batches[:2], positions=[1, 2])
        assert other.inserted["llm_usage"] == 0
        assert _assert_rollups_equal_raw(con) == count
        # The view joins the span's resource back.
        (resource,) = _rows(con, "SELECT resource->>'service.name' FROM spans")[0]
        assert resource == "app"
    finally:
        con.close()


def test_rollups_and_budget_state_equal_duckdb(pg: tuple[str, str], tmp_path: Path) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    duck = analytics.connect(tmp_path / "ledger.duckdb")
    normaliser = Normaliser()
    zone = "Europe/Paris"
    batches = [decode_batch(normaliser, "logs", usage_payload(seed, 40)) for seed in range(5)]
    refused = log_records(
        [
            (
                sc.EVENT_BUDGET_REJECTED,
                {
                    sc.TENANT: "lab",
                    sc.CONTEXT: "support",
                    sc.PURPOSE: "reasoning",
                    sc.BUDGET_CAP_USD: "0.5",
                    sc.BUDGET_SPENT_USD: "0.49",
                    sc.BUDGET_RESERVED_USD: "0.01",
                    sc.BUDGET_REQUESTED_USD: "0.02",
                },
            )
        ]
    )
    batches.append(decode_batch(normaliser, "logs", encode_logs(refused).SerializeToString()))
    try:
        lander = PgLander(con, collector_id="c-1", timezone=zone)
        duck_lander = Lander(duck, timezone=zone)
        for i, batch in enumerate(batches, start=1):
            lander.land([batch], positions=[i])
            duck_lander.land([batch], log_seq=i)
        _assert_rollups_equal_raw(con)
        incremental = _rollup_tables(con)
        # Equal to the DuckDB ledger's rollups, group for group.
        for name, table in ROLLUPS.items():
            cols = ", ".join(
                f"{c.name}::VARCHAR" if "DECIMAL" in c.sql else c.name for c in table.columns
            )
            theirs = [
                tuple(r.values())
                for r in duck.sql(f"SELECT {cols} FROM {name}").to_arrow_table().to_pylist()
            ]
            assert sorted(map(_norm, incremental[name]), key=repr) == sorted(
                map(_norm, theirs), key=repr
            ), name
        # Equal to a full recompute.
        rebuild_rollups_pg(con, timezone=zone)
        assert _rollup_tables(con) == incremental
        # Budget state: the same rows as DuckDB's, the refusal included.
        now = dt.datetime.now(dt.UTC)
        ours_state = budget_state_pg(con, now=now, timezone=zone)
        theirs_state = analytics.budget_state(
            analytics.DuckDBReader(duck, cursors=False), now=now, timezone=zone
        )
        assert [s.key for s in ours_state] == [s.key for s in theirs_state]
        assert any(s.status == "refused" for s in ours_state)
        for mine, other in zip(ours_state, theirs_state, strict=True):
            assert mine.spent_usd == other.spent_usd
            assert mine.cap_usd == other.cap_usd
            assert (mine.status, mine.spend_status) == (other.status, other.spend_status)
            assert (mine.calls, mine.errors, mine.unpriced_calls) == (
                other.calls,
                other.errors,
                other.unpriced_calls,
            )
            assert mine.unpriced_models == other.unpriced_models
            assert mine.utilisation == pytest.approx(other.utilisation, rel=1e-12)
            assert mine.refusals == other.refusals
            assert mine.last_ts == other.last_ts
        filtered = budget_state_pg(con, now=now, timezone=zone, tenant="lab")
        assert filtered
        assert {s.tenant for s in filtered} == {"lab"}
    finally:
        con.close()
        duck.close()


def _norm(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A rollup row of either store in comparable values (amounts as Decimal, UTC)."""
    out = []
    for value in row:
        if isinstance(value, str) and value[:1].isdigit():
            value = Decimal(value).normalize()
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        if isinstance(value, list | tuple):
            value = tuple(value)
        out.append(value)
    return tuple(out)


def test_two_landers_concurrently_count_exactly(pg: tuple[str, str]) -> None:
    url, schema = pg
    connect_pg(url, schema=schema).close()  # migrated once
    normaliser = Normaliser()
    # Each collector lands its own requests, and a share of requests reaches both (a client
    # that retried against the other collector): those rows must land once.
    shared = [usage_payload(1000 + i, 25, prefix="shared") for i in range(8)]
    own = {cid: [usage_payload(seed, 25, prefix=cid) for seed in range(16)] for cid in ("a", "b")}
    errors: list[BaseException] = []

    def run(cid: str) -> None:
        try:
            con = connect_pg(url, schema=schema)
            lander = PgLander(con, collector_id=cid)
            payloads = [*own[cid], *shared] if cid == "a" else [*shared, *own[cid]]
            batches = [decode_batch(Normaliser(), "logs", p) for p in payloads]
            position = 0
            for start in range(0, len(batches), 3):
                group = batches[start : start + 3]
                positions = list(range(position + 1, position + 1 + len(group)))
                lander.land(group, positions=positions)
                position = positions[-1]
            con.close()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(cid,)) for cid in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    del normaliser
    con = connect_pg(url, schema=schema)
    try:
        assert _assert_rollups_equal_raw(con) == (16 + 16 + 8) * 25
        assert _rows(
            con, "SELECT collector_id, max(position) FROM ledger_positions GROUP BY 1 ORDER BY 1"
        ) == [("a", 24), ("b", 24)]
    finally:
        con.close()


# --- a collector killed mid-load -----------------------------------------------------------

_CHILD = r"""
import sys
sys.path[:0] = [sys.argv[5]]
from test_pg_ledger_child import run
run(*sys.argv[1:5])
"""

_CHILD_MODULE = r"""
import datetime as dt
import time

from comptroller.analytics._pg_schema import connect_pg
from comptroller.collector._decode import decode
from comptroller.collector._ingest_log import IngestLog
from comptroller.collector._land_pg import PgLander
from comptroller.collector._normalise import Normaliser
from comptroller.collector._validate import validate


def run(url, schema, collector_id, log_dir):
    con = connect_pg(url, schema=schema)
    lander = PgLander(con, collector_id=collector_id)
    log = IngestLog(log_dir)
    normaliser = Normaliser()
    group, positions = [], []
    for entry in log.replay(after=lander.landed_position()):
        message = decode(entry.signal, "protobuf", entry.payload)
        batch = validate(
            normaliser.logs(message), signal="logs", latest_ns=normaliser.latest_ns(),
            received=dt.datetime.now(dt.UTC),
        )
        group.append(batch)
        positions.append(entry.seq)
        if len(group) == 4:
            lander.land_safely(group, positions=positions)
            group, positions = [], []
            time.sleep(0.01)
    if group:
        lander.land_safely(group, positions=positions)
    con.close()
"""


def _spawn(
    url: str, schema: str, cid: str, log_dir: Path, helper_dir: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, schema, cid, str(log_dir), str(helper_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _landed(url: str, schema: str, cid: str) -> int:
    con = connect_pg(url, schema=schema, migrate=False)
    try:
        rows = _rows(
            con,
            "SELECT coalesce(max(position), 0) FROM ledger_positions WHERE collector_id = $1",
            [cid],
        )
        return int(rows[0][0])
    finally:
        con.close()


def test_sigkill_mid_load_then_replay_loses_and_duplicates_nothing(
    pg: tuple[str, str], tmp_path: Path
) -> None:
    url, schema = pg
    connect_pg(url, schema=schema).close()
    helper_dir = tmp_path / "child"
    helper_dir.mkdir()
    (helper_dir / "test_pg_ledger_child.py").write_text(_CHILD_MODULE)
    entries, rows = 120, 30
    logs = {}
    for cid in ("killed", "steady"):
        log = IngestLog(tmp_path / f"ingest-{cid}")
        for seed in range(entries):
            log.append("logs", usage_payload(seed, rows, prefix=cid))
        log.close()
        logs[cid] = tmp_path / f"ingest-{cid}"
    # Two collectors land concurrently into one database; one is killed mid-load.
    killed = _spawn(url, schema, "killed", logs["killed"], helper_dir)
    steady = _spawn(url, schema, "steady", logs["steady"], helper_dir)
    deadline = time.monotonic() + 120
    while _landed(url, schema, "killed") < entries // 4:
        assert killed.poll() is None, killed.communicate()[1].decode()
        assert time.monotonic() < deadline, "the lander made no progress"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    at_kill = _landed(url, schema, "killed")
    assert 0 < at_kill < entries  # killed mid-load
    # Restarted: it replays its ingest log from the mark the ledger holds.
    restarted = _spawn(url, schema, "killed", logs["killed"], helper_dir)
    for process in (restarted, steady):
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err.decode()
    assert _landed(url, schema, "killed") == entries
    con = connect_pg(url, schema=schema)
    try:
        assert _assert_rollups_equal_raw(con) == 2 * entries * rows
        for cid in ("killed", "steady"):
            # Each position landed exactly once: the recorded ranges tile 1..entries.
            ranges = _rows(
                con,
                "SELECT first_position, position FROM ledger_positions "
                "WHERE collector_id = $1 ORDER BY position",
                [cid],
            )
            covered = [p for lo, hi in ranges for p in range(lo, hi + 1)]
            assert covered == list(range(1, entries + 1)), cid
            (count,) = _rows(
                con, "SELECT count(*) FROM llm_usage WHERE usage_id LIKE $1", [f"{cid}-%"]
            )[0]
            assert count == entries * rows
    finally:
        con.close()


# --- budget crossings -----------------------------------------------------------------------


def test_budget_crossings_are_the_duckdb_ledgers_and_recorded_once_per_fleet(
    pg: tuple[str, str], tmp_path: Path
) -> None:
    url, schema = pg
    con_a = connect_pg(url, schema=schema)
    con_b = connect_pg(url, schema=schema)
    duck = analytics.connect(tmp_path / "ledger.duckdb")
    normaliser = Normaliser()
    batches = [decode_batch(normaliser, "logs", usage_payload(seed, 40)) for seed in range(5)]
    policy = WarningPolicy(projected=False)  # thresholds only: independent of the hour
    told: dict[str, list[str]] = {"a": [], "b": []}
    try:
        a = PgLander(
            con_a,
            collector_id="a",
            budget_events_every_s=3600,
            warnings=policy,
            on_alerts=lambda alerts: told["a"].extend(x.event_id for x in alerts),
        )
        b = PgLander(
            con_b,
            collector_id="b",
            budget_events_every_s=3600,
            warnings=policy,
            on_alerts=lambda alerts: told["b"].extend(x.event_id for x in alerts),
        )
        # The first landing of each looks at once (a start may follow a crash); the rest
        # wait for the interval, or for the idle writer's flush. (Caps change from row to
        # row here: the DuckDB ledger below looks at the same moments.)
        a.land(batches[:1], positions=[1])
        assert not a.budget_events_pending
        a.land(batches[1:3], positions=[2, 3])
        assert a.budget_events_pending
        b.land(batches[3:], positions=[1, 2])
        a.flush_budget_events()
        assert not a.budget_events_pending
        assert b.record_budget_events() == []  # nothing new: recorded once, fleet-wide
        duck_lander = Lander(duck, warnings=policy, budget_events_every_s=3600)
        duck_lander.land(batches[:1])
        duck_lander.land(batches[1:])
        duck_lander.flush_budget_events()
        expected = {
            (str(r[0]), str(r[1]))
            for r in duck.execute(
                "SELECT event_id, kind FROM budget_events WHERE kind IN ('warning', 'exceeded')"
            ).fetchall()
        }
        got = {
            (str(r[0]), str(r[1]))
            for r in _rows(
                con_a,
                "SELECT event_id, kind FROM budget_events WHERE kind IN ('warning', 'exceeded')",
            )
        }
        assert {kind for _, kind in expected} == {"warning", "exceeded"}
        assert got == expected
        # Each event alerted once, by the collector that recorded it.
        assert sorted(told["a"] + told["b"]) == sorted(event_id for event_id, _ in expected)
    finally:
        con_a.close()
        con_b.close()
        duck.close()


def test_a_control_plane_event_alerts_once_whichever_collector_lands_it(
    pg: tuple[str, str],
) -> None:
    url, schema = pg
    opened = encode_logs(
        log_records(
            [
                (
                    sc.EVENT_CIRCUIT_OPENED,
                    {
                        sc.GEN_AI_PROVIDER_NAME: "openai",
                        sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
                        sc.CIRCUIT_FAILURES: 3,
                    },
                )
            ]
        )
    ).SerializeToString()
    normaliser = Normaliser()
    told: dict[str, list[Alert]] = {"a": [], "b": []}
    cons = [connect_pg(url, schema=schema), connect_pg(url, schema=schema)]
    try:
        a, b = (
            PgLander(con, collector_id=cid, on_alerts=lambda x, c=cid: told[c].extend(x))
            for con, cid in zip(cons, ("a", "b"), strict=True)
        )
        # The exporter retried against another collector: the event lands (and alerts) once.
        assert a.land([decode_batch(normaliser, "logs", opened)], positions=[1]).inserted == {
            "circuit_events": 1
        }
        assert b.land([decode_batch(normaliser, "logs", opened)], positions=[1]).inserted == {
            "circuit_events": 0
        }
        assert [alert.kind for alert in told["a"]] == ["circuit.opened"]
        assert told["b"] == []
    finally:
        for con in cons:
            con.close()


def test_a_lander_whose_session_ends_reconnects_and_lands_once(pg: tuple[str, str]) -> None:
    url, schema = pg
    opened: list[Any] = []

    def reconnect() -> Any:
        con = connect_pg(url, schema=schema, migrate=False)
        opened.append(con)
        return con

    con = connect_pg(url, schema=schema)
    other = connect_pg(url, schema=schema)
    normaliser = Normaliser()
    batches = [decode_batch(normaliser, "logs", usage_payload(seed, 20)) for seed in range(3)]
    try:
        lander = PgLander(con, collector_id="c-1", reconnect=reconnect)
        lander.land(batches[:1], positions=[1])
        (pid,) = _rows(con, "SELECT pg_backend_pid()")[0]
        assert _rows(other, "SELECT pg_terminate_backend($1::INT)", [pid]) == [(True,)]
        # The landing meets the closed session, reconnects and lands on the new one.
        result = lander.land(batches[:2], positions=[1, 2])
        assert result.skipped_positions == [1]
        assert result.landed_positions == [2]
        assert len(opened) == 1
        assert lander.con is opened[0]
        lander.land(batches[2:], positions=[3])
        assert _assert_rollups_equal_raw(other) == 60
        # Without `reconnect`, the error is the caller's.
        bare_con = connect_pg(url, schema=schema)
        opened.append(bare_con)
        bare = PgLander(bare_con, collector_id="c-2")
        (pid,) = _rows(bare_con, "SELECT pg_backend_pid()")[0]
        _rows(other, "SELECT pg_terminate_backend($1::INT)", [pid])
        with pytest.raises(Exception, match=r"connection|server"):
            bare.land(batches[:1], positions=[1])
    finally:
        for c in (*opened, other):
            with contextlib.suppress(Exception):
                c.close()


# --- defence in depth -----------------------------------------------------------------------


def test_a_row_postgresql_refuses_is_quarantined_and_the_rest_lands(pg: tuple[str, str]) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    normaliser = Normaliser()
    good = decode_batch(normaliser, "logs", usage_payload(7, 10))
    bad = Batch()
    schema_ = pa.schema([(c.name, c.arrow) for c in LANDED["budget_events"].landed])
    row = {name: None for name in schema_.names}
    row.update(
        event_id="e-1",
        ts=dt.datetime.now(dt.UTC),
        kind="warning",
        day="not-a-date",  # passes validation (no check), refused by PostgreSQL's DATE
        attributes="{}",
    )
    bad.tables["budget_events"] = pa.Table.from_pylist([row], schema=schema_)
    try:
        lander = PgLander(con, collector_id="c-1")
        result = lander.land_safely([good, bad], positions=[1, 2])
        assert result.inserted["llm_usage"] == 10
        assert result.quarantined is not None
        assert result.quarantined.num_rows == 1
        assert _rows(con, "SELECT target, reason FROM rejected_records") == [
            ("budget_events", "refused_by_database")
        ]
        assert lander.landed_position() == 2
        _assert_rollups_equal_raw(con)
    finally:
        con.close()


def test_a_derived_row_a_lower_layer_supersedes_leaves_the_rollups(pg: tuple[str, str]) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    normaliser = Normaliser()
    child, parent = fixture_spans(LANGCHAIN_OVER_OPENAI)
    try:
        first = PgLander(con, collector_id="c-1").land(
            [decode_batch(normaliser, "traces", encode_spans([parent]).SerializeToString())],
            positions=[1],
        )
        assert first.derived == 1
        # Restarted in between: the relations are rebuilt from the ledger.
        second = PgLander(con, collector_id="c-1").land(
            [decode_batch(normaliser, "traces", encode_spans([child]).SerializeToString())],
            positions=[2],
        )
        assert (second.derived, second.superseded) == (1, 1)
        assert _rows(con, "SELECT span_id FROM llm_usage") == [
            (f"{child.get_span_context().span_id:016x}",)
        ]
        assert _assert_rollups_equal_raw(con) == 1
    finally:
        con.close()
