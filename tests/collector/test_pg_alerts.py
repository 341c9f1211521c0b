"""A fleet of collectors on a PostgreSQL ledger alerts as one DuckDB collector does.

Webhook outcomes go to the ledger's `alert_deliveries` (schema v3, from the declaration
DuckDB's v8 holds); alerts no webhook answered are sent again at a start, by one collector
of the fleet (the `alert_claims` claim); budgets by attribution are answered from
PostgreSQL with DuckDB's results; spend anomalies are recorded with DuckDB's rule and ids,
once across collectors. Real PostgreSQL (a schema per test), a real local HTTP receiver,
real landers and collectors.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.analytics._anomaly import record_anomaly_events
from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._pg_budget import budget_state_pg, record_anomaly_events_pg
from comptroller.analytics._pg_reader import PgReader
from comptroller.analytics._pg_schema import (
    PG_SCHEMA_VERSION,
    connect_pg,
    grant_reader,
    libpq_url,
    pg_schema_version,
    pg_type,
)
from comptroller.analytics._tables import ALERT_DELIVERIES
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._alert_log import PgAlertLog, start_pg_notifier
from comptroller.collector._land import Lander
from comptroller.collector._land_pg import PgLander
from comptroller.collector._normalise import Normaliser
from comptroller.collector._notify import Alert
from comptroller.config import AlertSettings, AttributionBudget

from .conftest import start_collector
from .helpers import log_records, usage_event
from .test_alerts import Receiver
from .test_pg_ledger import _rows, decode_batch

pytestmark = pytest.mark.postgres

ZONE = "Europe/Paris"


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(URL, schema): a schema of this test's own, dropped afterwards."""
    schema = f"t_alerts_{uuid.uuid4().hex[:12]}"
    yield postgres_url, schema
    con = connect_pg(postgres_url, migrate=False)
    try:
        cur = con.cursor()
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.close()
        con.commit()
    finally:
        con.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _settings(receiver: Receiver) -> AlertSettings:
    return AlertSettings.model_validate(
        {
            "webhooks": [
                {"url": receiver.url("/json"), "name": "ops"},
                {"url": receiver.url("/slack"), "name": "chat", "format": "slack"},
            ],
            "webhook_backoff_s": 0.01,
            "webhook_max_backoff_s": 0.02,
        }
    )


def _exec(con: Any, sql: str, params: list[Any] | None = None) -> None:
    cur = con.cursor()
    try:
        cur.execute(sql, params)
        con.commit()
    finally:
        cur.close()


def _left_queued(con: Any) -> None:
    """Two alert-worthy events a stopped collector left without an outcome."""
    now = dt.datetime.now(dt.UTC).isoformat()
    _exec(
        con,
        "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
        "cap_usd, spent_usd, attributes) VALUES ('left-queued', $1::TIMESTAMPTZ, "
        "$1::TIMESTAMPTZ::DATE, 'warning', 'acme', 'ctx', 'chat', 1, 0.8, "
        "'{\"comptroller.budget.threshold\": 0.8}'::JSONB)",
        [now],
    )
    _exec(
        con,
        "INSERT INTO circuit_events (event_id, ts, provider, model, state, reason, failures, "
        "cooldown_s) VALUES ('c1', $1::TIMESTAMPTZ, 'openai', 'gpt-4o', 'opened', '503', 5, 30)",
        [now],
    )


def _opener(url: str, schema: str) -> Any:
    return lambda: connect_pg(url, schema=schema, migrate=False)


def _sent(receiver: Receiver) -> list[tuple[str, str]]:
    """(event id, webhook path) of every POST the receiver took (slack bodies have no id)."""
    out = []
    for body, headers in zip(receiver.bodies, receiver.headers, strict=True):
        out.append((headers["idempotency-key"], "slack" if "event_id" not in body else "json"))
    return sorted(out)


# --- the delivery log -----------------------------------------------------------------------


def test_alert_deliveries_is_one_declaration_on_both_ledgers(pg: tuple[str, str]) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    try:
        assert pg_schema_version(con) == PG_SCHEMA_VERSION >= 3
        stored = _rows(
            con,
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'alert_deliveries' "
            "ORDER BY ordinal_position",
            [schema],
        )
        keys = _rows(
            con,
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'alert_deliveries'::regclass "
            "AND i.indisprimary ORDER BY a.attname",
        )
    finally:
        con.close()
    assert [r[0] for r in stored] == [c.name for c in ALERT_DELIVERIES.columns]
    assert [r[2] == "NO" for r in stored] == ["NOT NULL" in c.sql for c in ALERT_DELIVERIES.columns]
    assert stored[-1][1] == "timestamp with time zone"
    assert pg_type(ALERT_DELIVERIES.column("attempts").sql_type) == "INTEGER"
    assert sorted(r[0] for r in keys) == sorted(ALERT_DELIVERIES.primary_key)
    # DuckDB's v8 (append-only text) holds the same declaration.
    duck = duckdb.connect()
    try:
        from comptroller.analytics._schema import migrate

        migrate(duck)
        theirs = duck.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'alert_deliveries' ORDER BY ordinal_position"
        ).fetchall()
    finally:
        duck.close()
    assert [(r[0], r[1].replace("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ")) for r in theirs] == [
        (c.name, c.sql_type) for c in ALERT_DELIVERIES.columns
    ]
    assert [r[2] == "NO" for r in theirs] == ["NOT NULL" in c.sql for c in ALERT_DELIVERIES.columns]


def test_outcomes_are_recorded_and_read_back_as_on_duckdb(
    pg: tuple[str, str], receiver: Receiver
) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    try:
        _left_queued(con)
        receiver.statuses.extend([500, 500, 500, 404])  # ops: retried, then failed for good
        notifier = start_pg_notifier(_opener(url, schema), "north-1", _settings(receiver))
        assert notifier is not None
        assert notifier.wait_idle(30)
        notifier.close()
        rows = _rows(
            con,
            "SELECT event_id, webhook, kind, status, attempts, http_status "
            "FROM alert_deliveries ORDER BY event_id, webhook",
        )
    finally:
        con.close()
    assert len(rows) == 4  # two events x two webhooks, one row each
    by_pair = {(r[0], r[1]): r for r in rows}
    assert by_pair[("c1", "chat")][3] == "delivered"
    assert by_pair[("left-queued", "chat")][2] == "budget.warning"
    failed = [r for r in rows if r[3] == "failed"]
    assert len(failed) <= 1  # the scripted failures hit the first POSTs, whichever they were
    # `comptroller alerts list` and the TUI read them through the panel, from PostgreSQL.
    reader = PgReader(libpq_url(url, schema=schema))
    try:
        panel = run_panel(
            reader,
            builtin_panels()["alert_deliveries"],
            since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        )
    finally:
        reader.close()
    assert panel.num_rows == 4
    assert {(r["event_id"], r["webhook"]) for r in panel.to_pylist()} == set(by_pair)


def test_unanswered_alerts_are_sent_once_by_a_fleet(
    pg: tuple[str, str], receiver: Receiver
) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    settings = _settings(receiver)
    try:
        _left_queued(con)
        # Collector a starts and is still sending (the receiver holds its POSTs) when b
        # starts: b finds the alerts unanswered, but a holds their claims.
        receiver.hold.clear()
        a = start_pg_notifier(_opener(url, schema), "a", settings)
        assert a is not None
        deadline = time.monotonic() + 20
        while _rows(con, "SELECT count(*) FROM alert_claims")[0][0] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        b = start_pg_notifier(_opener(url, schema), "b", settings)
        assert b is not None
        receiver.hold.set()
        assert a.wait_idle(30)
        assert b.wait_idle(30)
        # Two more collectors starting at the same moment, after the outcomes: nothing.
        started: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda cid=cid: started.append(
                    start_pg_notifier(_opener(url, schema), cid, settings)
                )
            )
            for cid in ("c", "d")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for n in (a, b, *started):
            assert n.wait_idle(30)
            n.close()
        claims = _rows(con, "SELECT DISTINCT collector_id FROM alert_claims")
        delivered = _rows(con, "SELECT count(*) FROM alert_deliveries WHERE status = 'delivered'")
    finally:
        con.close()
    # Each alert reached each webhook once, whichever collector sent it.
    assert _sent(receiver) == [
        ("c1", "json"),
        ("c1", "slack"),
        ("left-queued", "json"),
        ("left-queued", "slack"),
    ]
    assert delivered[0][0] == 4
    # b found the alert a was sending unanswered, and left it to a.
    assert a.skipped + b.skipped >= 1
    assert {r[0] for r in claims} <= {"a", "b"}
    assert [n.skipped for n in started] == [0, 0]
    assert b.health()["sent_by_another_collector"] == b.skipped


def test_a_claim_without_an_outcome_is_taken_over_by_its_restart_or_once_stale(
    pg: tuple[str, str], receiver: Receiver
) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    settings = AlertSettings.model_validate(
        {"webhooks": [{"url": receiver.url("/json"), "name": "ops"}]}
    )
    try:
        _left_queued(con)
        # Collector a claimed both alerts and died before any outcome.
        log = PgAlertLog(_opener(url, schema), "a")
        for event_id, kind in (("left-queued", "budget.warning"), ("c1", "circuit.opened")):
            assert log.claim(Alert(event_id=event_id, kind=kind, ts="", text=""), "ops")
        # Collector b starts: the claims are fresh, a may still be sending: b leaves them.
        b = start_pg_notifier(_opener(url, schema), "b", settings)
        assert b is not None
        assert b.wait_idle(10)
        b.close()
        assert receiver.bodies == []
        assert b.skipped == 2
        # a's claim on c1 grows stale; a's id starts again and sends left-queued (its own
        # claim), then c sends the stale c1 — b's own attempt at it was before it went stale.
        _exec(
            con,
            "UPDATE alert_claims SET claimed_at = now() - interval '1 hour' WHERE event_id = 'c1'",
        )
        c = start_pg_notifier(_opener(url, schema), "c", settings)
        assert c is not None
        assert c.wait_idle(10)
        c.close()
        again = start_pg_notifier(_opener(url, schema), "a", settings)
        assert again is not None
        assert again.wait_idle(10)
        again.close()
        assert not log.claim(Alert(event_id="c1", kind="circuit.opened", ts="", text=""), "ops")
        log.close()
        owners = dict(_rows(con, "SELECT event_id, collector_id FROM alert_claims"))
    finally:
        con.close()
    assert sorted(b["event_id"] for b in receiver.bodies) == ["c1", "left-queued"]
    assert owners == {"c1": "c", "left-queued": "a"}


def test_readers_see_deliveries_only_when_bound_to_every_org(
    pg: tuple[str, str], receiver: Receiver, postgres_url: str
) -> None:
    url, schema = pg
    con = connect_pg(url, schema=schema)
    roles = [f"r_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        for role in roles:
            _exec(con, f"CREATE ROLE {role} LOGIN")
        grant_reader(con, roles[0])  # ops: every org
        grant_reader(con, roles[1], org="acme")
        _left_queued(con)
        notifier = start_pg_notifier(_opener(url, schema), "n", _settings(receiver))
        assert notifier is not None
        assert notifier.wait_idle(20)
        notifier.close()
        seen = []
        for role in roles:
            rest = postgres_url.split("://", 1)[1].split("@", 1)[-1]
            as_role = f"postgresql://{role}@{rest}"
            reader = PgReader(libpq_url(as_role, schema=schema))
            try:
                seen.append(reader.query("SELECT count(*) AS n FROM alert_deliveries")["n"][0])
            finally:
                reader.close()
    finally:
        cur = con.cursor()
        for role in roles:
            try:
                cur.execute(f"DROP OWNED BY {role}")
                cur.execute(f"DROP ROLE IF EXISTS {role}")
                con.commit()
            except Exception:
                con.rollback()
        cur.close()
        con.close()
    assert [v.as_py() for v in seen] == [4, 0]


# --- budgets by attribution ---------------------------------------------------------------


_RULES = (
    AttributionBudget(by="user", daily_usd=Decimal("0.4")),
    AttributionBudget(by="tag.team", daily_usd=Decimal("1"), value="core"),
    AttributionBudget(by="feature", daily_usd=Decimal("0.25"), tenant="lab", purpose="reasoning"),
)


def _usage_payload(seed: int, rows: int) -> bytes:
    """An OTLP logs request of usage records with end users, features and team tags."""
    rng = random.Random(seed)
    events = []
    for i in range(rows):
        name, attributes = usage_event(f"u-{seed}-{i}")
        attributes = dict(attributes)
        attributes[sc.TENANT] = rng.choice(("acme-eu", "acme-us", "lab"))
        attributes[sc.PURPOSE] = rng.choice(("reasoning", "scoring"))
        attributes[sc.COST_USD] = str(Decimal(rng.randint(1, 999_999)) / Decimal(10**7))
        attributes[sc.BUDGET_CAP_USD] = "10"
        attributes[sc.USER_ID] = rng.choice(("alice", "bob"))
        attributes[sc.FEATURE] = rng.choice(("search", "chat"))
        attributes[sc.TAGS] = json.dumps({"team": rng.choice(("growth", "core"))})
        if rng.random() < 0.1:
            attributes[sc.OUTCOME] = "error"
        if rng.random() < 0.08:
            attributes[sc.PRICE_SOURCE] = "unpriced"
            attributes[sc.GEN_AI_RESPONSE_MODEL] = rng.choice(("mystery-1", "mystery-2"))
            del attributes[sc.COST_USD]
        events.append((name, attributes))
    return encode_logs(log_records(events)).SerializeToString()


def _attribution_batches(normaliser: Normaliser) -> list[Any]:
    batches = [decode_batch(normaliser, "logs", _usage_payload(seed, 30)) for seed in range(4)]
    refused = log_records(
        [
            (
                sc.EVENT_BUDGET_REJECTED,
                {
                    sc.TENANT: "acme-eu",
                    sc.CONTEXT: "*",
                    sc.PURPOSE: "*",
                    sc.BUDGET_CAP_USD: "0.4",
                    sc.BUDGET_SPENT_USD: "0.39",
                    sc.BUDGET_RESERVED_USD: "0.02",
                    sc.BUDGET_ATTRIBUTE: "user=alice",
                    sc.BUDGET_DAY: dt.datetime.now(ZoneInfo(ZONE)).date().isoformat(),
                },
            )
        ]
    )
    batches.append(decode_batch(normaliser, "logs", encode_logs(refused).SerializeToString()))
    return batches


def test_budgets_by_attribution_equal_duckdbs_and_cross_once_per_fleet(
    pg: tuple[str, str], tmp_path: Path
) -> None:
    url, schema = pg
    cons = [connect_pg(url, schema=schema), connect_pg(url, schema=schema)]
    duck = analytics.connect(tmp_path / "ledger.duckdb")
    batches = _attribution_batches(Normaliser())
    policy = WarningPolicy(projected=False)
    told: dict[str, list[str]] = {"a": [], "b": []}
    try:
        a, b = (
            PgLander(
                con,
                attribution_budgets=_RULES,
                collector_id=cid,
                timezone=ZONE,
                budget_events_every_s=3600,
                warnings=policy,
                on_alerts=lambda alerts, c=cid: told[c].extend(x.event_id for x in alerts),
            )
            for con, cid in zip(cons, ("a", "b"), strict=True)
        )
        a.land(batches[:3], positions=[1, 2, 3])
        b.land(batches[3:], positions=[1, 2])
        a.flush_budget_events()
        b.flush_budget_events()
        assert b.record_budget_events() == []
        duck_lander = Lander(
            duck,
            timezone=ZONE,
            warnings=policy,
            budget_events_every_s=3600,
            attribution_budgets=_RULES,
        )
        duck_lander.land(batches)
        duck_lander.flush_budget_events()
        now = dt.datetime.now(dt.UTC)
        ours = budget_state_pg(cons[0], now=now, timezone=ZONE, attribution_budgets=_RULES)
        theirs = analytics.budget_state(
            analytics.DuckDBReader(duck, cursors=False),
            now=now,
            timezone=ZONE,
            attribution_budgets=_RULES,
        )
        got_events = {
            (str(r[0]), str(r[1]))
            for r in _rows(
                cons[0],
                "SELECT event_id, kind FROM budget_events WHERE attribute IS NOT NULL "
                "AND kind IN ('warning', 'exceeded')",
            )
        }
        expected_events = {
            (str(r[0]), str(r[1]))
            for r in duck.execute(
                "SELECT event_id, kind FROM budget_events WHERE attribute IS NOT NULL "
                "AND kind IN ('warning', 'exceeded')"
            ).fetchall()
        }
        all_events = [str(r[0]) for r in _rows(cons[0], "SELECT event_id FROM budget_events")]
    finally:
        for con in cons:
            con.close()
        duck.close()
    attributed = [s for s in theirs if s.attribute]
    assert {s.attribute.split("=")[0] for s in attributed} == {"user", "tag.team", "feature"}
    assert any(s.status == "refused" for s in attributed)
    assert [(s.key, s.attribute) for s in ours] == [(s.key, s.attribute) for s in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        assert (mine.spent_usd, mine.cap_usd) == (other.spent_usd, other.cap_usd)
        assert (mine.status, mine.spend_status) == (other.status, other.spend_status)
        assert (mine.calls, mine.errors, mine.estimated_calls, mine.unpriced_calls) == (
            other.calls,
            other.errors,
            other.estimated_calls,
            other.unpriced_calls,
        )
        assert sorted(mine.unpriced_models) == sorted(other.unpriced_models)
        assert mine.utilisation == pytest.approx(other.utilisation, rel=1e-12)
        assert mine.refusals == other.refusals
        assert mine.last_ts == other.last_ts
    # The crossings by attribution are DuckDB's, recorded and alerted once by the fleet
    # (with the refusal the control plane sent, alerted by the collector that landed it).
    assert {kind for _, kind in expected_events} == {"warning", "exceeded"}
    assert got_events == expected_events
    assert sorted(told["a"] + told["b"]) == sorted(all_events)


def test_a_pg_collector_serves_budgets_by_attribution_and_records_deliveries(
    pg: tuple[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    url, schema = pg
    ledger = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    run, server, thread = start_collector(
        ledger,  # type: ignore[arg-type]
        collector_id="north-1",
        ingest_log_dir=tmp_path / "log",
        timezone=ZONE,
        attribution_budgets=_RULES,
        alerts=_settings(receiver),
    )
    try:
        answer = httpx.post(
            f"{run.url}/v1/logs",
            content=_usage_payload(7, 30),
            headers={"content-type": "application/x-protobuf"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert run.collector.pipeline.wait_landed(30)
        state = httpx.get(f"{run.url}/api/budget-state", timeout=30).json()
        assert run.collector.notifier is not None
        assert run.collector.notifier.wait_idle(30)
        health = httpx.get(f"{run.url}/health", timeout=10).json()
        con = connect_pg(url, schema=schema)
        try:
            recorded = _rows(con, "SELECT count(*), count(DISTINCT event_id) FROM alert_deliveries")
            events = _rows(
                con,
                "SELECT count(*) FROM budget_events WHERE attribute IS NOT NULL "
                "AND kind IN ('warning', 'exceeded')",
            )
        finally:
            con.close()
    finally:
        server.should_exit = True
        thread.join(10)
        run.collector.close()
    rows = state["budgets"] if isinstance(state, dict) else state
    attributes = {r.get("attribute") for r in rows}
    assert {"user=alice", "user=bob"} <= attributes
    assert events[0][0] > 0  # 0.4 USD a user: crossed by this much usage
    # Every alert the collector raised reached both webhooks and was recorded in PostgreSQL.
    sent = sum(w["delivered"] for w in health["alerts"]["webhooks"])
    assert sent == recorded[0][0] == 2 * recorded[0][1] > 0


# --- spend anomalies ----------------------------------------------------------------------


def _hourly(now: dt.datetime) -> list[tuple[Any, ...]]:
    """Hourly rollup rows: two keys' spend in this local hour over five past days, and now
    (acme/ctx/chat far above its usual, lab/ctx/chat as usual)."""
    local = now.astimezone(ZoneInfo(ZONE))  # the panel's hour: local wall clock
    hour = local.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    rows = []
    for day in range(6):
        at = hour - dt.timedelta(days=day)
        rows.append((at, "acme", "ctx", "chat", 3, "2.5" if day == 0 else f"0.0{day + 4}"))
        rows.append((at, "lab", "ctx", "chat", 3, "0.07" if day == 0 else "0.06"))
    # A day that recorded only another hour: a baseline day the keys spent 0 in this hour.
    rows.append((hour - dt.timedelta(days=6, hours=3), "zeta", "ctx", "chat", 1, "0.01"))
    return rows


def test_spend_anomalies_are_duckdbs_and_recorded_once_per_fleet(
    pg: tuple[str, str],
) -> None:
    url, schema = pg
    now = dt.datetime.now(dt.UTC)
    cons = [connect_pg(url, schema=schema), connect_pg(url, schema=schema)]
    duck = duckdb.connect()
    try:
        from comptroller.analytics._schema import migrate

        migrate(duck)
        for at, tenant, context, purpose, calls, cost in _hourly(now):
            values = [at, tenant, context, purpose, calls, cost]
            duck.execute(
                "INSERT INTO llm_usage_hourly (hour, tenant, context, purpose, calls, errors, "
                "unpriced_calls, input_tokens, output_tokens, cost_usd) "
                "VALUES (?, ?, ?, ?, ?, 0, 0, 10, 10, ?::DECIMAL(38, 10))",
                values,
            ).fetchall()
            _exec(
                cons[0],
                "INSERT INTO llm_usage_hourly (hour, tenant, context, purpose, calls, errors, "
                "unpriced_calls, input_tokens, output_tokens, cost_usd) "
                "VALUES ($1::TIMESTAMP, $2, $3, $4, $5, 0, 0, 10, 10, $6::NUMERIC)",
                [at.isoformat(), tenant, context, purpose, calls, cost],
            )
        theirs = record_anomaly_events(duck, now=now, timezone=ZONE)
        found: list[list[Any]] = [[], []]

        def look(i: int) -> None:
            found[i] = record_anomaly_events_pg(cons[i], now=now, timezone=ZONE)

        threads = [threading.Thread(target=look, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stored = _rows(
            cons[0],
            "SELECT event_id, tenant, spent_usd::TEXT, attributes->>'median_usd' "
            "FROM budget_events WHERE kind = 'anomaly'",
        )
        again = record_anomaly_events_pg(cons[1], now=now, timezone=ZONE)
    finally:
        for con in cons:
            con.close()
        duck.close()
    assert [a.key for a in theirs] == [("acme", "ctx", "chat")]
    mine = found[0] + found[1]
    assert [a.history_days for a in theirs] == [6]
    assert mine == theirs  # the same anomaly, value for value, with the same event id
    assert [(r[0], r[1]) for r in stored] == [(theirs[0].event_id, "acme")]
    assert Decimal(stored[0][2]) == theirs[0].spent_usd
    assert Decimal(stored[0][3]) == theirs[0].median_usd
    assert again == []


def test_a_fleet_lander_alerts_an_anomaly_once(pg: tuple[str, str]) -> None:
    url, schema = pg
    now = dt.datetime.now(dt.UTC)
    cons = [connect_pg(url, schema=schema), connect_pg(url, schema=schema)]
    told: list[Alert] = []
    try:
        for at, tenant, context, purpose, calls, cost in _hourly(now):
            _exec(
                cons[0],
                "INSERT INTO llm_usage_hourly (hour, tenant, context, purpose, calls, errors, "
                "unpriced_calls, input_tokens, output_tokens, cost_usd) "
                "VALUES ($1::TIMESTAMP, $2, $3, $4, $5, 0, 0, 10, 10, $6::NUMERIC)",
                [at.isoformat(), tenant, context, purpose, calls, cost],
            )
        landers = [
            PgLander(con, collector_id=cid, timezone=ZONE, on_alerts=told.extend)
            for con, cid in zip(cons, ("a", "b"), strict=True)
        ]
        for lander in landers:
            lander.flush_budget_events()
    finally:
        for con in cons:
            con.close()
    assert [a.kind for a in told] == ["budget.anomaly"]
    assert "acme / ctx / chat" in told[0].text


def test_two_collectors_alert_each_crossing_once_and_a_restart_sends_nothing_again(
    pg: tuple[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    url, schema = pg
    ledger = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    settings = _settings(receiver)

    def start(cid: str) -> Any:
        return start_collector(
            ledger,  # type: ignore[arg-type]
            collector_id=cid,
            ingest_log_dir=tmp_path / cid,
            timezone=ZONE,
            attribution_budgets=_RULES,
            alerts=settings,
        )

    started = [start("east"), start("west")]
    try:
        for seed, (run, _, _) in enumerate(started * 2):
            answer = httpx.post(
                f"{run.url}/v1/logs",
                content=_usage_payload(seed, 25),
                headers={"content-type": "application/x-protobuf"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        for run, _, _ in started:
            assert run.collector.pipeline.wait_landed(30)
            run.collector.pipeline.lander.flush_budget_events()
        for run, _, _ in started:
            assert run.collector.notifier.wait_idle(30)
    finally:
        for run, server, thread in started:
            server.should_exit = True
            thread.join(10)
            run.collector.close()
    first = _sent(receiver)
    con = connect_pg(url, schema=schema)
    try:
        events = {str(r[0]) for r in _rows(con, "SELECT event_id FROM budget_events")}
        deliveries = _rows(con, "SELECT event_id, webhook, status FROM alert_deliveries")
    finally:
        con.close()
    # Every event reached each webhook exactly once, whichever collector raised it.
    assert len(events) > 2
    assert first == sorted((e, hook) for e in events for hook in ("json", "slack"))
    assert sorted((str(r[0]), str(r[1])) for r in deliveries) == sorted(
        (e, hook) for e in events for hook in ("ops", "chat")
    )
    assert {r[2] for r in deliveries} == {"delivered"}
    # A collector starting again finds every alert answered: it sends nothing.
    run, server, thread = start("east")
    try:
        assert run.collector.notifier.wait_idle(30)
    finally:
        server.should_exit = True
        thread.join(10)
        run.collector.close()
    assert _sent(receiver) == first


def test_a_v2_ledger_migrates_to_v3_and_its_readers_may_read_deliveries(
    pg: tuple[str, str], postgres_url: str
) -> None:
    from comptroller.analytics._pg_schema import migrate_pg

    url, schema = pg
    con = connect_pg(url, schema=schema)
    role = f"r_{uuid.uuid4().hex[:10]}"
    try:
        _exec(con, f"CREATE ROLE {role} LOGIN")
        grant_reader(con, role)
        # The ledger as v2 left it: no v3 tables, the reader granted what v2 had.
        _exec(con, "DROP TABLE alert_deliveries, alert_claims")
        _exec(con, "DELETE FROM comptroller_schema WHERE version = 3")
        assert pg_schema_version(con) == 2
        assert migrate_pg(con) == [3]
        _exec(
            con,
            "INSERT INTO alert_deliveries VALUES ('e1', 'ops', 'budget.warning', 'delivered', "
            "1, 200, NULL, now(), now())",
        )
        rest = postgres_url.split("://", 1)[1].split("@", 1)[-1]
        reader = PgReader(libpq_url(f"postgresql://{role}@{rest}", schema=schema))
        try:
            seen = reader.query("SELECT event_id FROM alert_deliveries")["event_id"].to_pylist()
        finally:
            reader.close()
    finally:
        cur = con.cursor()
        try:
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
            con.commit()
        except Exception:
            con.rollback()
        cur.close()
        con.close()
    assert seen == ["e1"]
