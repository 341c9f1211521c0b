"""Budget warnings and circuit alerts reach webhooks: over real HTTP to a local receiver,
retried, deduplicated, recorded, never blocking, and not lost across a restart."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from comptroller.collector import EmbeddedSink
from comptroller.collector._alert_log import AlertLog, start_notifier
from comptroller.collector._notify import Alert, Notifier
from comptroller.config import AlertSettings, load_settings
from comptroller.control import (
    BudgetExceeded,
    BudgetSpec,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    StaticProfiles,
)
from comptroller.control.testing import FakeChatModel, FakeClock, FakeUsage
from comptroller.control.testing._http_server import LocalHttpServer
from comptroller.errors import ConfigError

SECRET_PATH = "/services/T000/B000/s3cr3tTOKEN"


class Receiver(LocalHttpServer):
    """A webhook endpoint: records each POST; answers scripted statuses first, then 200."""

    _thread_name = "webhook-receiver"

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: deque[int] = deque()
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def hook(request: Request) -> Response:
            body = await request.json()
            await asyncio.to_thread(self.hold.wait)
            with self._lock:
                self.bodies.append(body)
                self.headers.append(dict(request.headers))
                status = self.statuses.popleft() if self.statuses else 200
            return JSONResponse({"ok": status == 200}, status_code=status)

        return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def alerts(receiver: Receiver, **webhook: Any) -> AlertSettings:
    hooks = [
        {"url": receiver.url("/json"), "name": "ops-json", **webhook},
        {"url": receiver.url(SECRET_PATH), "format": "slack"},
    ]
    return AlertSettings.model_validate(
        {"webhooks": hooks, "webhook_backoff_s": 0.01, "webhook_max_backoff_s": 0.02}
    )


def test_a_budget_day_reaches_json_and_slack_webhooks_once_each(
    receiver: Receiver, tmp_path: Path
) -> None:
    # $0.015 a call against a $0.05 cap: 50 %, 80 %, 100 %, then a refusal.
    # Today: the ledger records its warnings for the budget day that is current.
    clock = FakeClock(start=time.time())
    fake = FakeChatModel(
        responses={"reasoning": "ok"}, usage=FakeUsage(input_tokens=100_000, output_tokens=0)
    )
    settings = load_settings(
        telemetry="embedded",
        data_dir=str(tmp_path),
        alerts={
            **alerts(receiver).model_dump(),
            "budget_warn_projected": False,
        },
    )
    plane = ControlPlane(
        settings,
        resolver=StaticProfiles(
            {
                "reasoning": ResolvedProfile(
                    purpose="reasoning",
                    model=ModelRef.parse("openai:gpt-4o-mini"),
                    budget=BudgetSpec(daily_usd=Decimal("0.05")),
                )
            }
        ),
        guard=MemoryGuard(clock=clock),
        clock=clock,
        providers={"openai": fake.factory},
    )
    with plane:
        model = plane.chat_model("reasoning", domain="acme-eu", context="support")
        for _ in range(4):
            model.invoke("q")
        with pytest.raises(BudgetExceeded):
            model.invoke("q")
        assert plane.flush()
        sink = plane.telemetry.sink
        assert isinstance(sink, EmbeddedSink)
        assert sink.notifier is not None
        sink.lander.flush_budget_events()
        assert sink.notifier.wait_idle(30)
        health = sink.notifier.health()

    json_bodies = [b for b in receiver.bodies if "event_id" in b]
    slack = [b for b in receiver.bodies if "event_id" not in b]
    kinds = sorted(b["kind"] for b in json_bodies)
    assert kinds == [
        "budget.exceeded",
        "budget.rejected",
        "budget.warning",
        "budget.warning",
        "budget.warning",
    ]
    thresholds = sorted(b["threshold"] for b in json_bodies if b["kind"] == "budget.warning")
    assert thresholds == [0.5, 0.8, 1.0]
    assert len({b["event_id"] for b in json_bodies}) == 5  # each event once
    assert len(slack) == 5
    assert all(set(b) == {"text"} for b in slack)
    warning = next(b for b in json_bodies if b.get("threshold") == 0.8)
    assert warning["tenant"] == "acme-eu"
    assert Decimal(warning["spent_usd"]) == Decimal("0.045")
    assert "acme-eu / support / reasoning" in warning["text"]
    assert "80 %" in warning["text"]
    assert all(h["idempotency-key"] for h in receiver.headers)
    assert {w["name"]: w["delivered"] for w in health["webhooks"]} == {
        "ops-json": 5,
        f"127.0.0.1:{receiver.port}": 5,
    }
    with duckdb.connect(str(tmp_path / "comptroller.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT webhook, status, count(*) FROM alert_deliveries GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert rows == [
        (f"127.0.0.1:{receiver.port}", "delivered", 5),
        ("ops-json", "delivered", 5),
    ]
    assert SECRET_PATH not in json.dumps(health)


def alert(event_id: str = "e1", kind: str = "budget.warning") -> Alert:
    return Alert(event_id=event_id, kind=kind, ts="2026-06-01T12:00:00+00:00", text="t")


def test_failures_are_retried_with_backoff_then_recorded(receiver: Receiver) -> None:
    waits: list[float] = []
    delivered: list[Any] = []
    settings = AlertSettings.model_validate(
        {
            "webhooks": [{"url": receiver.url(), "name": "ops"}],
            "webhook_max_attempts": 4,
            "webhook_backoff_s": 1,
            "webhook_max_backoff_s": 10,
        }
    )
    receiver.statuses.extend([503, 429])
    notifier = Notifier(settings, record=delivered.append, sleep=waits.append)
    try:
        notifier.offer([alert("ok-after-3")])
        assert notifier.wait_idle(10)
        receiver.statuses.extend([503] * 4)
        notifier.offer([alert("never")])
        receiver.statuses.append(404)
        notifier.offer([alert("gone")])
        assert notifier.wait_idle(10)
    finally:
        notifier.close()
    got = {d.event_id: (d.status, d.attempts, d.http_status, d.error) for d in delivered}
    assert got == {
        "ok-after-3": ("delivered", 3, 200, None),
        "never": ("failed", 4, 503, "HTTP 503"),
        "gone": ("failed", 1, 404, "HTTP 404"),  # a 4xx is not retried
    }
    assert len(waits) == 2 + 3
    assert 1 <= waits[0] <= 2  # exponential from 1 s, with jitter
    assert all(w <= 10 for w in waits)
    (hook,) = notifier.health()["webhooks"]
    assert (hook["delivered"], hook["failed"], hook["last_error"]) == (1, 2, "HTTP 404")


def test_an_unreachable_webhook_fails_without_leaking_its_url() -> None:
    delivered: list[Any] = []
    settings = AlertSettings.model_validate(
        {
            "webhooks": [{"url": "http://127.0.0.1:9" + SECRET_PATH}],
            "webhook_max_attempts": 2,
        }
    )
    notifier = Notifier(settings, record=delivered.append, sleep=lambda s: None)
    try:
        notifier.offer([alert()])
        assert notifier.wait_idle(10)
    finally:
        notifier.close()
    (delivery,) = delivered
    assert delivery.status == "failed"
    assert delivery.attempts == 2
    assert "ConnectError" in (delivery.error or "")
    assert SECRET_PATH not in json.dumps(notifier.health())
    assert SECRET_PATH not in (delivery.error or "")


def test_offering_never_blocks_and_counts_what_it_drops(receiver: Receiver) -> None:
    receiver.hold.clear()  # the receiver hangs: the worker is stuck on the first alert
    settings = AlertSettings.model_validate({"webhooks": [{"url": receiver.url()}]})
    notifier = Notifier(settings, sleep=lambda s: None, queue_size=2)
    try:
        started = time.perf_counter()
        notifier.offer([alert(f"e{i}") for i in range(50)])
        assert time.perf_counter() - started < 0.5
        time.sleep(0.05)
        assert notifier.health()["dropped"] >= 45
    finally:
        receiver.hold.set()
        notifier.close()


def test_alerts_without_an_outcome_are_sent_after_a_restart_and_only_once(
    receiver: Receiver, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.duckdb"
    sink = EmbeddedSink(db)  # creates the schema
    sink.shutdown()
    con = duckdb.connect(str(db))
    try:
        now = datetime.now(UTC)
        con.execute(
            "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
            "cap_usd, spent_usd, attributes) VALUES "
            "('left-queued', ?, ?, 'warning', 'acme', 'ctx', 'chat', 1, 0.8, "
            "'{\"comptroller.budget.threshold\": 0.8}')",
            [now, now.date()],
        ).fetchall()
        con.execute(
            "INSERT INTO circuit_events (event_id, ts, provider, model, state, reason, failures, "
            "cooldown_s) VALUES ('c1', ?, 'openai', 'gpt-4o', 'opened', '503', 5, 30)",
            [now],
        ).fetchall()
        settings = AlertSettings.model_validate({"webhooks": [{"url": receiver.url()}]})
        first = start_notifier(con, settings)
        assert first is not None
        assert first.wait_idle(10)
        first.close()
        second = start_notifier(con, settings)
        assert second is not None
        assert second.wait_idle(10)
        second.close()
        assert AlertLog(con).pending([f"127.0.0.1:{receiver.port}"])[0] == []
    finally:
        con.close()
    assert sorted(b["event_id"] for b in receiver.bodies) == ["c1", "left-queued"]
    circuit = next(b for b in receiver.bodies if b["event_id"] == "c1")
    assert circuit["kind"] == "circuit.opened"
    assert "openai:gpt-4o" in circuit["text"]
    assert "30 s" in circuit["text"]


def test_the_collectors_health_shows_deliveries(
    receiver: Receiver,
    make_running: Any,
) -> None:
    run = make_running(
        alerts=AlertSettings.model_validate({"webhooks": [{"url": receiver.url(), "name": "ops"}]})
    )
    assert run.collector.notifier is not None
    run.collector.notifier.offer([alert("direct")])
    assert run.collector.notifier.wait_idle(10)
    health = httpx.get(f"{run.url}/health").json()
    assert health["alerts"]["webhooks"] == [
        {
            "name": "ops",
            "delivered": 1,
            "failed": 0,
            "last_error": None,
            "last_delivered_ts": health["alerts"]["webhooks"][0]["last_delivered_ts"],
        }
    ]


def test_bad_webhook_settings_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        load_settings(alerts={"webhooks": [{"url": "hooks.slack.com/x"}]})
    with pytest.raises(ConfigError, match="unknown webhook event"):
        load_settings(alerts={"webhooks": [{"url": "https://x", "events": ["budget.warn"]}]})


def test_a_spend_anomaly_is_told_with_its_usual_spend(receiver: Receiver, tmp_path: Path) -> None:
    db = tmp_path / "ledger.duckdb"
    EmbeddedSink(db).shutdown()
    con = duckdb.connect(str(db))
    try:
        now = datetime.now(UTC)
        con.execute(
            "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
            "spent_usd, attributes) VALUES ('a1', ?, ?, 'anomaly', 'acme', 'ctx', 'chat', 0.5, "
            '\'{"hour": "2026-06-01T14:00:00", "median_usd": "0.05", "ratio": 10.0}\')',
            [now, now.date()],
        ).fetchall()
        notifier = start_notifier(
            con, AlertSettings.model_validate({"webhooks": [{"url": receiver.url()}]})
        )
        assert notifier is not None
        assert notifier.wait_idle(10)
        notifier.close()
    finally:
        con.close()
    (body,) = receiver.bodies
    assert body["kind"] == "budget.anomaly"
    assert "10.0× its usual $0.05" in body["text"]
    assert "14:00" in body["text"]


def test_an_alert_of_a_budget_by_attribution_names_what_it_counts() -> None:
    """The ledger's event (its `attribute` column) and the control plane's (the attribute on
    the event) both say which end user's or tag's budget crossed, in the text and the fields."""
    import datetime as dt

    from comptroller.analytics import BudgetEvent
    from comptroller.collector._notify import budget_alert, budget_event_alert

    event = BudgetEvent(
        event_id="w1",
        kind="warning",
        day=dt.date(2026, 12, 5),
        tenant="acme-eu",
        context="*",
        purpose="*",
        cap_usd=Decimal(2),
        spent_usd=Decimal("1.6"),
        threshold=0.8,
        attribute="user=alice",
    )
    alert = budget_event_alert(event)
    assert alert is not None
    assert "acme-eu / * / * [user=alice]" in alert.text
    assert alert.fields["attribute"] == "user=alice"
    refused = budget_alert(
        {
            "event_id": "r1",
            "kind": "rejected",
            "day": "2026-12-05",
            "tenant": "acme-eu",
            "context": "*",
            "purpose": "*",
            "cap_usd": "2",
            "spent_usd": "2",
            "attributes": json.dumps({"comptroller.budget.attribute": "tag.team=search"}),
        }
    )
    assert refused is not None
    assert "[tag.team=search]" in refused.text
    plain = budget_event_alert(
        BudgetEvent(
            event_id="w2",
            kind="exceeded",
            day=dt.date(2026, 12, 5),
            tenant="acme-eu",
            context="support",
            purpose="reasoning",
            cap_usd=Decimal(2),
            spent_usd=Decimal(2),
        )
    )
    assert plain is not None
    assert "[" not in plain.text
    assert plain.fields["attribute"] is None
