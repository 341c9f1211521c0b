"""`comptroller demo`: the whole product on the embedded default, with no server and no key.

The demo starts one local endpoint per provider in-process (`FakeAnthropicServer`,
`FakeGeminiServer`, `FakeOpenAIServer`: real HTTP servers speaking each provider's API, with
latency, cached and thinking tokens and injected failures), keeps its profiles and a
credential per provider in the default profile store, and plays a multi-tenant workload
through the control plane with the providers' own LangChain integrations over HTTP. Each
purpose runs on one provider's chain (`_demo_workload`): reasoning and agent turns on the
seeds' Claude chain (opus → sonnet → haiku), scoring on their Gemini chain (2.5 flash → 3.1
flash-lite), code generation and distillation on OpenAI (o4-mini → gpt-4.1-mini →
gpt-4.1-nano), embeddings on text-embedding-3-small; genai-prices prices every model. The calls spread over simulated days (an
injected clock, no sleeping) that end now: a tenant hits its daily budget, Anthropic
overloads on the top Claude model (its circuit opens, reasoning falls back down the chain,
the circuit closes), an org admin moves a purpose off the failing model and rolls the change
back, then moves its embeddings to a larger model (a re-embed warning; see `_demo_story`). Everything lands in the DuckDB file of the data directory.

The fake endpoints are the only fakes: they stand at the model boundary, where the real
providers would be.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comptroller._demo_store import (
    APPROVED,
    check_store,
    configure,
    reset_store,
    sqlite_file,
)
from comptroller._demo_workload import window
from comptroller.config import Settings
from comptroller.config._control import PurposeSettings
from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from comptroller.control.testing import (
        FakeAnthropicServer,
        FakeGeminiServer,
        FakeOpenAIServer,
    )

DEMO_SERVICE = "comptroller-demo"
"""`service.name` of the demo's telemetry: how the demo recognises its own database."""


@dataclass(frozen=True, kw_only=True)
class DemoReport:
    """What the demo did and what landed in DuckDB."""

    db_file: Path
    profile_store: Path
    """The default profile store, where the demo's profiles are."""
    store_reset: bool
    """The store held a previous demo run's profiles and was started afresh."""
    start: datetime
    end: datetime
    """The simulated window (UTC)."""
    calls: int
    outcomes: Mapping[str, int]
    """Calls by final outcome (ok, budget_exceeded, …), from the logical-call spans."""
    spend_by_purpose: list[tuple[str, int, Decimal]]
    """(purpose, usage rows, USD) from `llm_usage`."""
    spend_by_tenant: list[tuple[str, int, Decimal]]
    spend_by_day: list[tuple[str, int, Decimal]]
    """(day, usage rows, USD) from the `llm_usage_daily` rollup."""
    total_usd: Decimal
    """`select sum(cost_usd) from llm_usage`."""
    budget_refusals: list[tuple[str, str, int, int, Decimal]]
    """(tenant, purpose, refused calls, days with refusals, daily cap) from `budget_events`."""
    refused_today: int
    """Calls refused for budget today: `comptroller budget check` fails on them (exit 3)."""
    circuit_events: list[tuple[datetime, str, str, str]]
    """(ts, model, state, reason) transitions, in order."""
    profile_events: list[tuple[datetime, str, str, str, int, str]]
    """(ts, action, scope, purpose, version, reason) from `profile_events`, in order."""
    seconds: float


def prepare_database(db_file: Path) -> None:
    """Start from an empty database, refusing to touch one with data that is not the demo's.

    Raises:
        ConfigError: The file holds usage that another application produced.
    """
    if not db_file.exists():
        return
    import duckdb

    try:
        con = duckdb.connect(str(db_file), read_only=True)
    except duckdb.Error as exc:
        raise ConfigError(
            f"{db_file}: cannot open the existing database ({str(exc).splitlines()[0]}); "
            "is a collector running on it? Pass --db to run the demo on another file"
        ) from exc
    try:
        foreign = con.execute(
            "select count(*) from llm_usage where coalesce(service_name, '') <> ?", [DEMO_SERVICE]
        ).fetchone()
    except duckdb.Error:
        foreign = None  # not a comptroller database yet: nothing of value to lose
    finally:
        con.close()
    if foreign and foreign[0]:
        raise ConfigError(
            f"{db_file} holds {foreign[0]} usage rows that are not from the demo; "
            "run `uv run comptroller demo --db demo.duckdb` to keep them apart"
        )
    db_file.unlink()
    wal = db_file.with_name(db_file.name + ".wal")
    if wal.exists():
        wal.unlink()


@dataclass(frozen=True)
class _Endpoints:
    """The local server of each provider the demo's chains use."""

    anthropic: FakeAnthropicServer
    gemini: FakeGeminiServer
    openai: FakeOpenAIServer

    @property
    def base_urls(self) -> dict[str, str]:
        """Provider (as profiles name it) -> its server's `base_url`."""
        return {
            "anthropic": self.anthropic.base_url,
            "gcp.gemini": self.gemini.base_url,
            "openai": self.openai.base_url,
        }

    def stop(self) -> None:
        for server in (self.anthropic, self.gemini, self.openai):
            server.stop()


def _prompt_text(request: Mapping[str, Any]) -> str:
    """The last user text of a request, whichever provider's API shaped it."""
    turns = request.get("messages") or request.get("contents") or [{}]
    last = turns[-1] if isinstance(turns, list) and turns else {}
    parts: Any = last.get("content", last.get("parts", "")) if isinstance(last, dict) else ""
    if isinstance(parts, list):
        parts = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
    return str(parts)


def _answer(request: Mapping[str, Any]) -> str:
    return f"(demo answer to: {_prompt_text(request)[:48]}…)"


def _models(chain: tuple[str, ...]) -> list[str]:
    return [ref.split(":", 1)[1] for ref in chain]


def _start_endpoints() -> _Endpoints:
    from comptroller._demo_workload import CLAUDE_CHAIN, GEMINI_CHAIN, OPENAI_CHAIN
    from comptroller.control.testing import (
        AnthropicBehaviour,
        FakeAnthropicServer,
        FakeGeminiServer,
        FakeOpenAIServer,
        GeminiBehaviour,
        ModelBehaviour,
    )

    # Down a chain, models answer faster; the top ones read cached prompts and think.
    anthropic = FakeAnthropicServer(AnthropicBehaviour(content=_answer, latency_s=0.006))
    for model, latency, cache_read in zip(
        _models(CLAUDE_CHAIN), (0.015, 0.010, 0.004), (64, 32, 0), strict=True
    ):
        anthropic.behave(
            model,
            AnthropicBehaviour(content=_answer, latency_s=latency, cache_read_tokens=cache_read),
        )
    gemini = FakeGeminiServer(GeminiBehaviour(content=_answer, latency_s=0.004))
    for model, latency, thoughts in zip(
        _models(GEMINI_CHAIN), (0.006, 0.004), (24, 0), strict=True
    ):
        gemini.behave(
            model, GeminiBehaviour(content=_answer, latency_s=latency, thoughts_tokens=thoughts)
        )
    openai = FakeOpenAIServer(
        ModelBehaviour(content=_answer, latency_s=0.004, cached_tokens=0), keep_alive=True
    )
    for model, latency, cached, reasoning in zip(
        _models(OPENAI_CHAIN), (0.015, 0.006, 0.004), (0, 8, 0), (24, 0, 0), strict=True
    ):
        openai.behave(
            model,
            ModelBehaviour(
                content=_answer,
                latency_s=latency,
                cached_tokens=cached,
                reasoning_tokens=reasoning,
            ),
        )
    started: list[Any] = []
    try:
        for server in (anthropic, gemini, openai):
            started.append(server.start())
    except BaseException:
        for server in started:
            server.stop()
        raise
    return _Endpoints(anthropic=anthropic, gemini=gemini, openai=openai)


def _demo_settings(settings: Settings, db_file: Path) -> Settings:
    return settings.model_copy(
        update={
            "db": db_file,
            "telemetry": "embedded",
            "control": settings.control.model_copy(
                update={
                    # The platform approves the models an org admin may pick.
                    "purposes": {
                        **settings.control.purposes,
                        **{
                            purpose: PurposeSettings(approved_models=models)
                            for purpose, models in APPROVED.items()
                        },
                    },
                }
            ),
        }
    )


def run_demo(
    settings: Settings,
    *,
    db_file: Path | None = None,
    calls: int = 800,
    days: int = 2,
    concurrency: int = 16,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
) -> DemoReport:
    """Play the demo's simulated days and report what landed in DuckDB.

    Args:
        settings: The settings in force; the demo lands telemetry in-process (embedded) and
            writes its profiles to the default profile store.
        db_file: The DuckDB file (default: `settings.db_file`).
        calls: Number of application calls.
        days: Whole simulated days before today (today so far comes on top).
        concurrency: Calls in flight at once.
        seed: Seed of the workload's random choices.
        progress: Called with (done, total) after each call.

    Raises:
        ConfigError: The database or the profile store holds data that is not the demo's.
    """
    from comptroller._demo_clock import ClockedEvents, DemoClock
    from comptroller._demo_story import Story, play
    from comptroller._demo_workload import plan
    from comptroller.control import ControlPlane
    from comptroller.control.profiles import ProfileService

    settings.ensure_data_dir()
    target = db_file or settings.db_file
    store_url = settings.profile_store_url
    store_file = sqlite_file(store_url)
    # Check both before touching either: a refusal leaves everything as it was.
    check_store(store_url)
    prepare_database(target)
    store_reset = reset_store(store_url)
    span = window(datetime.now(UTC), days=days, timezone=settings.timezone)
    rng = random.Random(seed)
    sessions = plan(span, calls=calls, rng=rng)
    demo_settings = _demo_settings(settings, target)
    clock = DemoClock(span.start.timestamp())
    # The demo's rows carry their own service.name, so a later demo recognises them.
    previous_service = os.environ.get("OTEL_SERVICE_NAME")
    os.environ["OTEL_SERVICE_NAME"] = DEMO_SERVICE
    started = time.perf_counter()
    servers = _start_endpoints()
    service = ProfileService.from_settings(demo_settings)
    service.store.clock = clock.utcnow  # versions and audit entries at their simulated time
    try:
        with ControlPlane(demo_settings, resolver=service, clock=clock, rng=rng) as plane:
            events = ClockedEvents(plane.telemetry, clock)
            service.events = events
            plane.circuits.set_event_emitter(events)
            configure(service, servers.base_urls)
            story = Story(
                span=span, service=service, plane=plane, server=servers.anthropic, clock=clock
            )
            asyncio.run(
                play(
                    plane,
                    sessions,
                    story,
                    clock,
                    end=span.end.timestamp(),
                    concurrency=concurrency,
                    progress=progress,
                )
            )
    finally:
        service.close()
        servers.stop()
        if previous_service is None:
            os.environ.pop("OTEL_SERVICE_NAME", None)
        else:
            os.environ["OTEL_SERVICE_NAME"] = previous_service
    seconds = time.perf_counter() - started
    return _report(
        target,
        profile_store=store_file,
        store_reset=store_reset,
        start=span.start.astimezone(UTC),
        end=span.end.astimezone(UTC),
        today=span.today.date(),
        calls=calls,
        seconds=seconds,
    )


def _report(
    db_file: Path,
    *,
    profile_store: Path,
    store_reset: bool,
    start: datetime,
    end: datetime,
    today: date,
    calls: int,
    seconds: float,
) -> DemoReport:
    from comptroller.analytics import connect

    con = connect(db_file, read_only=True)
    try:

        def rows(sql: str, *params: object) -> list[tuple[Any, ...]]:
            return con.execute(sql, list(params)).fetchall()

        by_purpose = rows(
            "select purpose, count(*), coalesce(sum(cost_usd), 0) from llm_usage "
            "group by 1 order by 3 desc, 1"
        )
        by_tenant = rows(
            "select tenant, count(*), coalesce(sum(cost_usd), 0) from llm_usage "
            "group by 1 order by 3 desc, 1"
        )
        by_day = rows(
            "select day::varchar, sum(calls)::bigint, sum(cost_usd) from llm_usage_daily "
            "group by 1 order by 1"
        )
        total = rows("select coalesce(sum(cost_usd), 0) from llm_usage")[0][0]
        refusals = rows(
            "select tenant, purpose, count(*), count(distinct day), max(cap_usd) from budget_events "
            "where kind = 'rejected' group by 1, 2 order by 3 desc, 1, 2"
        )
        refused_today = rows(
            "select count(*) from budget_events where kind = 'rejected' and day = ?", today
        )[0][0]
        circuits = rows(
            "select epoch(ts), model, state, coalesce(reason, '') from circuit_events order by ts"
        )
        changes = rows(
            "select epoch(ts), action, scope_kind || coalesce(':' || scope_id, ''), purpose, "
            "coalesce(version, 0), coalesce(reason, '') from profile_events "
            "where action <> 'warning' order by ts, version"
        )
        # Each logical call's span carries its final outcome (its attempts carry their own).
        outcomes = rows(
            "select outcome, count(*) from spans "
            "where operation is null and outcome is not null group by 1"
        )
    finally:
        con.close()
    return DemoReport(
        db_file=db_file,
        profile_store=profile_store,
        store_reset=store_reset,
        start=start,
        end=end,
        calls=calls,
        outcomes={str(o): int(n) for o, n in outcomes},
        spend_by_purpose=[(str(p), int(n), Decimal(c)) for p, n, c in by_purpose],
        spend_by_tenant=[(str(t), int(n), Decimal(c)) for t, n, c in by_tenant],
        spend_by_day=[(str(d), int(n), Decimal(c)) for d, n, c in by_day],
        total_usd=Decimal(total),
        budget_refusals=[
            (str(t), str(p), int(n), int(d), Decimal(cap)) for t, p, n, d, cap in refusals
        ],
        refused_today=int(refused_today),
        circuit_events=[(_utc(ts), str(m), str(s), str(r)) for ts, m, s, r in circuits],
        profile_events=[
            (_utc(ts), str(a), str(sc), str(p), int(v), str(r)) for ts, a, sc, p, v, r in changes
        ],
        seconds=seconds,
    )


def _utc(epoch: Any) -> datetime:
    # Timestamps are read as epoch seconds: DuckDB hands TIMESTAMPTZ to Python through pytz.
    return datetime.fromtimestamp(float(epoch), UTC)
