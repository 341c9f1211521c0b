"""A ledger with budget warnings and their webhook deliveries, made through the real path:
ChatOpenAI calls over HTTP to a local OpenAI server, through the control plane, landed by the
embedded sink, whose notifier POSTs the alerts to a local webhook receiver.

Imported as `alerts_ledger` (tests/ is on sys.path) by the TUI and CLI alert tests.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from comptroller.collector import EmbeddedSink
from comptroller.config import load_settings
from comptroller.control import (
    BudgetSpec,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    ResolvedProfile,
    StaticProfiles,
)
from comptroller.control.testing import FakeClock, FakeOpenAIServer, ModelBehaviour
from comptroller.control.testing._http_server import LocalHttpServer

DAY_NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
"""When the calls run: half the budget day gone, so a burn rate doubles what was spent.

A past day: the ledger's own warnings are for the day current when usage lands, so only
the control plane warns about this one (its projection is then exactly the one asserted).
"""
SECRET_PATH = "/services/T000/B000/s3cr3tTOKEN"
"""The path of the webhook that answers 404: its URL holds a secret, never to be shown."""


class Receiver(LocalHttpServer):
    """A webhook endpoint: records each POST; a path with `/services/` answers 404."""

    _thread_name = "webhook-receiver"

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def hook(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.bodies.append((request.url.path, body))
            status = 404 if "/services/" in request.url.path else 200
            return JSONResponse({"ok": status == 200}, status_code=status)

        return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])


def webhooks(receiver: Receiver) -> list[dict[str, Any]]:
    """`ops` (JSON, answers 200) and `pager` (Slack format, answers 404: not retried)."""
    return [
        {"url": receiver.url("/ops"), "name": "ops"},
        {"url": receiver.url(SECRET_PATH), "name": "pager", "format": "slack"},
    ]


@dataclass(frozen=True)
class Ledger:
    db: Path
    now: dt.datetime
    """The instant the calls ran at (show the ledger as of then)."""


def build_ledger(data_dir: Path, receiver: Receiver) -> Ledger:
    """Six calls of $0.015 against a $0.10 cap at noon: 50 % of the cap crossed at the 4th
    call ($0.06, projected to $0.12 by midnight), 80 % at the 6th ($0.09). Three warnings,
    each delivered to `ops` and failed at `pager`."""
    clock = FakeClock(start=DAY_NOON.timestamp())
    settings = load_settings(
        telemetry="embedded",
        data_dir=str(data_dir),
        alerts={
            "webhooks": webhooks(receiver),
            "budget_warn_at": [0.5, 0.8],
            "webhook_backoff_s": 0.01,
            "webhook_max_backoff_s": 0.02,
        },
    )
    with FakeOpenAIServer(ModelBehaviour(prompt_tokens=100_000, completion_tokens=0)) as server:
        plane = ControlPlane(
            settings,
            resolver=StaticProfiles(
                {
                    "reasoning": ResolvedProfile(
                        purpose="reasoning",
                        model=ModelRef.parse("openai:gpt-4o-mini"),
                        base_url=server.base_url,
                        budget=BudgetSpec(daily_usd=Decimal("0.10")),
                    )
                }
            ),
            guard=MemoryGuard(clock=clock),
            clock=clock,
        )
        with plane:
            model = plane.chat_model("reasoning", domain="acme-eu", context="support")
            for _ in range(6):
                model.invoke("q")
            assert plane.flush()
            sink = plane.telemetry.sink
            assert isinstance(sink, EmbeddedSink)
            assert sink.notifier is not None
            sink.lander.flush_budget_events()
            assert sink.notifier.wait_idle(30)
    return Ledger(db=data_dir / "comptroller.duckdb", now=DAY_NOON)
