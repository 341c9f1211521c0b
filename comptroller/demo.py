"""`comptroller demo`: the whole product on the embedded default, with no server and no key.

The demo starts a local OpenAI-compatible endpoint in-process (`FakeOpenAIServer`: a real
HTTP server with latency, cached tokens and injected failures), stores profiles and a
credential in the profile store, and drives a multi-tenant workload through the control plane
with `langchain-openai` over HTTP. Along the way a provider degrades (its circuit opens and
calls fall back), a tenant hits its daily budget (fail closed), and an org admin changes a
model mid-run. Everything lands in the DuckDB file of the data directory.

The fake endpoint is the only fake: it stands at the model boundary, where a real provider
would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comptroller.config import Settings
from comptroller.config._control import PurposeSettings
from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from comptroller.control import ControlPlane
    from comptroller.control.profiles import ProfileService
    from comptroller.control.testing import FakeOpenAIServer

DEMO_SERVICE = "comptroller-demo"
"""`service.name` of the demo's telemetry: how the demo recognises its own database."""

TENANTS: tuple[tuple[str, str], ...] = (
    ("acme", "acme-eu"),
    ("acme", "acme-us"),
    ("globex", "globex-main"),
    ("initech", "initech-lab"),
)
"""(org, domain) pairs: a domain is a tenant's workspace, its org the parent scope."""
TENANT_WEIGHTS = (5, 3, 4, 2)
CONTEXTS = ("support", "platform", "worlds")
"""Calling subsystems: budgets and limits are kept per context so none starves another."""

# purpose -> (model, fallbacks, weight in the workload)
PURPOSES: Mapping[str, tuple[str, tuple[str, ...], int]] = {
    "reasoning": ("gpt-4o", ("gpt-4.1",), 3),
    "scoring": ("gpt-4o-mini", ("gpt-4.1-mini",), 5),
    "agent_turn": ("gpt-4.1-mini", ("gpt-4o-mini",), 4),
    "distillation": ("gpt-4.1-nano", (), 2),
    "code_generation": ("o4-mini", ("gpt-4.1",), 2),
}
DEGRADED_MODEL = "gpt-4o"
"""The model whose provider has an outage during the demo: its circuit opens."""
TIGHT_BUDGET = ("initech-lab", "scoring", Decimal("0.0002"))
"""(domain, purpose, daily USD cap): a tenant that runs out of budget mid-run."""

PROMPTS = (
    "Summarise the customer's ticket about a failed invoice export in two sentences.",
    "Score this answer from 1 to 5 for helpfulness and explain the score briefly.",
    "Plan the next step of the agent: the user wants to rename a shared folder.",
    "Distil the key facts of this meeting transcript into bullet points.",
    "Write a Python function that deduplicates a list while keeping order.",
)


@dataclass(frozen=True, kw_only=True)
class DemoReport:
    """What the demo did and what landed in DuckDB."""

    db_file: Path
    calls: int
    outcomes: Mapping[str, int]
    """Calls by final outcome (ok, budget_exceeded, …), from the logical-call spans."""
    spend_by_purpose: list[tuple[str, int, Decimal]]
    """(purpose, usage rows, USD) from `llm_usage`."""
    spend_by_tenant: list[tuple[str, int, Decimal]]
    total_usd: Decimal
    """`select sum(cost_usd) from llm_usage`."""
    circuit_events: list[tuple[str, str, str]]
    """(model, state, reason) transitions, in order."""
    profile_events: int
    seconds: float
    profile_store_url: str = ""
    """The demo's own profile store (kept apart from the data directory's real one)."""
    notes: list[str] = field(default_factory=list)


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
            "run `comptroller demo --db demo.duckdb` to keep them apart"
        )
    db_file.unlink()
    wal = db_file.with_name(db_file.name + ".wal")
    if wal.exists():
        wal.unlink()


def _start_endpoint() -> FakeOpenAIServer:
    from comptroller.control.testing import FakeOpenAIServer, ModelBehaviour

    def answer(request: Mapping[str, Any]) -> str:
        text = str(request.get("messages", [{}])[-1].get("content", ""))
        return f"(demo answer to: {text[:48]}…)"

    server = FakeOpenAIServer(
        ModelBehaviour(content=answer, latency_s=0.004, cached_tokens=0), keep_alive=True
    )
    server.start()
    for model, latency, cached in (
        ("gpt-4o", 0.012, 16),
        ("gpt-4.1", 0.010, 0),
        ("o4-mini", 0.015, 0),
        ("gpt-4o-mini", 0.004, 8),
    ):
        server.behave(
            model,
            ModelBehaviour(
                content=answer,
                latency_s=latency,
                cached_tokens=cached,
                reasoning_tokens=24 if model == "o4-mini" else 0,
            ),
        )
    return server


def _configure_profiles(service: ProfileService, base_url: str) -> None:
    from comptroller.control import BudgetSpec, CallDefaults, ModelRef, RateLimitSpec
    from comptroller.control.profiles import Actor, ProfileSpec, Scope

    # The demo's store is its own and fresh: it binds its platform admin and grants the org
    # admins it acts as (roles are granted in the store, never claimed).
    platform = service.admins.init("demo-platform")
    for org_admin in ("initech", "acme"):
        service.admins.grant(
            Actor(name=f"{org_admin}-admin", role="org_admin", org=org_admin), by=platform
        )
    service.credentials.set(
        Scope.global_(), "openai", "sk-demo-not-a-real-key", actor=platform, reason="demo"
    )
    defaults = CallDefaults(max_tokens=256)
    for purpose, (model, fallbacks, _) in PURPOSES.items():
        service.set_profile(
            Scope.global_(),
            purpose,
            ProfileSpec(
                model=ModelRef(provider="openai", model=model),
                fallbacks=tuple(ModelRef(provider="openai", model=m) for m in fallbacks),
                base_url=base_url,
                max_tokens=defaults.max_tokens,
                rate_limit=RateLimitSpec(requests_per_interval=600, interval_s=60.0),
                budget=BudgetSpec(daily_usd=Decimal("5")),
            ),
            actor=platform,
            reason="demo platform defaults",
        )
    domain, purpose, cap = TIGHT_BUDGET
    org = next(o for o, d in TENANTS if d == domain)
    service.set_profile(
        Scope.of_domain(domain, org=org),
        purpose,
        ProfileSpec(budget=BudgetSpec(daily_usd=cap)),
        actor=Actor(name="initech-admin", role="org_admin", org=org),
        reason="lab experiments get a small daily budget",
    )


def _change_model_mid_run(service: ProfileService) -> None:
    from comptroller.control import ModelRef
    from comptroller.control.profiles import Actor, ProfileSpec, Scope

    service.set_profile(
        Scope.of_org("acme"),
        "agent_turn",
        ProfileSpec(model=ModelRef(provider="openai", model="gpt-4o-mini")),
        actor=Actor(name="acme-admin", role="org_admin", org="acme"),
        reason="agent turns are cheaper on gpt-4o-mini",
    )


async def _drive(
    plane: ControlPlane,
    service: ProfileService,
    server: FakeOpenAIServer,
    *,
    calls: int,
    concurrency: int,
    rng: random.Random,
    progress: Callable[[int, int], None] | None,
) -> None:
    from comptroller.control.testing import ServerReply

    plan = [
        (
            rng.choices(TENANTS, weights=TENANT_WEIGHTS)[0],
            rng.choice(CONTEXTS),
            rng.choices(list(PURPOSES), weights=[w for _, _, w in PURPOSES.values()])[0],
            rng.choice(PROMPTS),
        )
        for _ in range(calls)
    ]
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(index: int) -> None:
        nonlocal done
        (org, domain), context, purpose, prompt = plan[index]
        if index == calls // 3:
            # The provider of gpt-4o has an outage: a run of 5xx opens its circuit.
            server.script(DEGRADED_MODEL, *[ServerReply.server_error(503)] * 12)
            server.script("gpt-4o-mini", ServerReply.rate_limited(0.05))
        if index == calls // 2:
            await asyncio.to_thread(_change_model_mid_run, service)
        async with semaphore:
            model = plane.chat_model(purpose, org=org, domain=domain, context=context)
            # Refusals and failures are part of the show: their outcomes land in DuckDB.
            with contextlib.suppress(Exception):
                await model.ainvoke(prompt)
            done += 1
            if progress is not None:
                progress(done, calls)

    await asyncio.gather(*(one(i) for i in range(calls)))


def run_demo(
    settings: Settings,
    *,
    db_file: Path | None = None,
    calls: int = 400,
    concurrency: int = 16,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
) -> DemoReport:
    """Run the demo workload and report what landed in DuckDB.

    Args:
        settings: The settings in force; the demo overrides telemetry (embedded) and the
            profile store (a file of its own in the data directory).
        db_file: The DuckDB file (default: `settings.db_file`).
        calls: Number of application calls.
        concurrency: Calls in flight at once.
        seed: Seed of the workload's random choices.
        progress: Called with (done, total) after each call.
    """
    import os

    from comptroller.control import ControlPlane
    from comptroller.control.profiles import ProfileService

    settings.ensure_data_dir()
    target = db_file or settings.db_file
    prepare_database(target)
    store_file = settings.data_dir / "demo-profiles.sqlite"
    store_file.unlink(missing_ok=True)
    demo_settings = settings.model_copy(
        update={
            "db": target,
            "telemetry": "embedded",
            "control": settings.control.model_copy(
                update={
                    "profile_store_url": f"sqlite:///{store_file}",
                    # The platform approves the models an org admin may pick for agent turns.
                    "purposes": {
                        **settings.control.purposes,
                        "agent_turn": PurposeSettings(
                            approved_models=("openai:gpt-4.1-mini", "openai:gpt-4o-mini")
                        ),
                    },
                }
            ),
        }
    )
    # The demo's rows carry their own service.name, so a later demo recognises them.
    previous_service = os.environ.get("OTEL_SERVICE_NAME")
    os.environ["OTEL_SERVICE_NAME"] = DEMO_SERVICE
    started = time.perf_counter()
    server = _start_endpoint()
    service = ProfileService.from_settings(demo_settings)
    try:
        with ControlPlane(demo_settings, resolver=service) as plane:
            service.events = plane.events
            _configure_profiles(service, server.base_url)
            asyncio.run(
                _drive(
                    plane,
                    service,
                    server,
                    calls=calls,
                    concurrency=concurrency,
                    rng=random.Random(seed),
                    progress=progress,
                )
            )
    finally:
        service.close()
        server.stop()
        if previous_service is None:
            os.environ.pop("OTEL_SERVICE_NAME", None)
        else:
            os.environ["OTEL_SERVICE_NAME"] = previous_service
    seconds = time.perf_counter() - started
    report = _report(target, calls=calls, seconds=seconds)
    return replace(report, profile_store_url=f"sqlite:///{store_file}")


def _report(db_file: Path, *, calls: int, seconds: float) -> DemoReport:
    from comptroller.analytics import connect

    con = connect(db_file, read_only=True)
    try:
        by_purpose = con.execute(
            "select purpose, count(*), coalesce(sum(cost_usd), 0) from llm_usage "
            "group by 1 order by 3 desc, 1"
        ).fetchall()
        by_tenant = con.execute(
            "select tenant, count(*), coalesce(sum(cost_usd), 0) from llm_usage "
            "group by 1 order by 3 desc, 1"
        ).fetchall()
        total_row = con.execute("select coalesce(sum(cost_usd), 0) from llm_usage").fetchone()
        circuits = con.execute(
            "select model, state, coalesce(reason, '') from circuit_events order by ts"
        ).fetchall()
        profile_row = con.execute("select count(*) from profile_events").fetchone()
        # Each logical call's span carries its final outcome (its attempts carry their own).
        outcomes = con.execute(
            "select outcome, count(*) from spans "
            "where operation is null and outcome is not null group by 1"
        ).fetchall()
    finally:
        con.close()
    return DemoReport(
        db_file=db_file,
        calls=calls,
        outcomes={str(o): int(n) for o, n in outcomes},
        spend_by_purpose=[(str(p), int(n), Decimal(c)) for p, n, c in by_purpose],
        spend_by_tenant=[(str(t), int(n), Decimal(c)) for t, n, c in by_tenant],
        total_usd=Decimal(total_row[0]) if total_row else Decimal(0),
        circuit_events=[(str(m), str(s), str(r)) for m, s, r in circuits],
        profile_events=int(profile_row[0]) if profile_row else 0,
        seconds=seconds,
    )
