"""A fixed, deterministic usage database for the dashboard tests.

Rows are computed, not random: the same file every run, so snapshots and figures are stable.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa

from comptroller.analytics import connect
from comptroller.analytics._rollup import rebuild_rollup

NOW = datetime(2026, 3, 14, 15, 0, tzinfo=UTC)
"""The injected 'now' of every dashboard test."""

TENANTS = ("acme-eu", "acme-us", "globex")
CONTEXTS = ("platform", "worlds")
PURPOSES = ("reasoning", "scoring", "embedding")
MODELS = {
    "reasoning": ("openai", "gpt-4o"),
    "scoring": ("openai", "gpt-4o-mini"),
    "embedding": ("openai", "text-embedding-3-small"),
}
CAPS = {
    ("acme-eu", "platform", "reasoning"): Decimal("2.00"),
    ("globex", "worlds", "scoring"): Decimal("0.50"),
}

_USAGE_COLUMNS = (
    "usage_id, ts, trace_id, span_id, service_name, tenant, org, context, purpose, operation, "
    "provider, request_model, response_model, input_tokens, output_tokens, cost_usd, "
    "price_source, outcome, error_type, attempt, fallback_depth, latency_ms, budget_cap_usd, source"
)


def usage_row(
    i: int,
    ts: datetime,
    *,
    tenant: str,
    context: str,
    purpose: str,
    cost: Decimal | None,
    outcome: str = "ok",
    provider: str | None = None,
    model: str | None = None,
    attempt: int = 1,
    fallback_depth: int = 0,
) -> tuple[object, ...]:
    prov, mod = MODELS[purpose]
    provider = provider or prov
    model = model or mod
    cap = CAPS.get((tenant, context, purpose))
    return (
        f"u{i:06d}",
        ts,
        f"t{i:06d}",
        f"s{i:06d}",
        "svc",
        tenant,
        tenant.split("-")[0],
        context,
        purpose,
        "chat",
        provider,
        model,
        model,
        100 + i % 7 * 10,
        20 + i % 5 * 3,
        cost,
        "genai-prices@test" if cost is not None else "unpriced",
        outcome,
        None if outcome == "ok" else "RateLimitError",
        attempt,
        fallback_depth,
        float(100 + i % 9 * 25),
        cap,
        "comptroller",
    )


def insert_usage(con: duckdb.DuckDBPyConnection, rows: list[tuple[object, ...]]) -> None:
    names = [name.strip() for name in _USAGE_COLUMNS.split(",")]
    batch = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows])
    con.register("_usage_batch", batch)
    try:
        con.execute(
            f"INSERT INTO llm_usage ({_USAGE_COLUMNS}) SELECT {_USAGE_COLUMNS} FROM _usage_batch"
        )
    finally:
        con.unregister("_usage_batch")


def build(path: Path, *, now: datetime = NOW) -> Path:
    """Write the dataset into a new DuckDB file at `path`."""
    con = connect(path)
    try:
        fill(con, now=now)
        rebuild_rollup(con, timezone="UTC")
    finally:
        con.close()
    return path


def fill(con: duckdb.DuckDBPyConnection, *, now: datetime = NOW) -> None:
    rows: list[tuple[object, ...]] = []
    i = 0
    # 30 days of history, a few calls per (tenant, purpose) per day, more today.
    for day in range(30):
        base = now - timedelta(days=day)
        for t_i, tenant in enumerate(TENANTS):
            for p_i, purpose in enumerate(PURPOSES):
                per_day = 1 + (day + t_i + p_i) % 3 + (3 if day == 0 else 0)
                for k in range(per_day):
                    i += 1
                    ts = base - timedelta(minutes=7 * k + 13 * t_i + 3 * p_i + 1)
                    context = CONTEXTS[(k + t_i) % 2]
                    cents = Decimal(1 + (i * 37) % 97) / Decimal(100)
                    if purpose == "embedding":
                        cents = cents / 10
                    cost: Decimal | None = cents
                    outcome = "ok"
                    if i % 23 == 0:
                        outcome = "error"
                    if i % 41 == 0:
                        cost = None
                    rows.append(
                        usage_row(
                            i,
                            ts,
                            tenant=tenant,
                            context=context,
                            purpose=purpose,
                            cost=cost,
                            outcome=outcome,
                        )
                    )
    # A budget pushed near and over its cap today.
    for k in range(6):
        i += 1
        rows.append(
            usage_row(
                i,
                now - timedelta(minutes=30 + k),
                tenant="globex",
                context="worlds",
                purpose="scoring",
                cost=Decimal("0.09"),
            )
        )
    # One call that fell back to another provider: two attempts, one trace.
    rows.append(
        usage_row(
            900_001,
            now - timedelta(minutes=2),
            tenant="acme-eu",
            context="platform",
            purpose="reasoning",
            cost=Decimal("0.12"),
            provider="anthropic",
            model="claude-sonnet-4",
            attempt=2,
            fallback_depth=1,
        )
    )
    insert_usage(con, rows)
    con.execute(
        "INSERT INTO span_rows (trace_id, span_id, parent_span_id, name, kind, start_ts, end_ts, duration_ms, "
        "status_code, status_message, is_genai, provider, request_model, attempt, fallback_depth, outcome, "
        "error_type, input_tokens, output_tokens, cost_usd, purpose, tenant) VALUES "
        "('t900001', 'root', NULL, 'comptroller.call reasoning', 'INTERNAL', ?, ?, 2400, 'OK', NULL, false, NULL, NULL, NULL, NULL, 'ok', NULL, NULL, NULL, NULL, 'reasoning', 'acme-eu'),"
        "('t900001', 'a1', 'root', 'chat gpt-4o', 'CLIENT', ?, ?, 900, 'ERROR', '503 upstream', true, 'openai', 'gpt-4o', 1, 0, 'error', 'InternalServerError', 120, 0, NULL, 'reasoning', 'acme-eu'),"
        "('t900001', 'a2', 'root', 'chat claude-sonnet-4', 'CLIENT', ?, ?, 1400, 'OK', NULL, true, 'anthropic', 'claude-sonnet-4', 2, 1, 'ok', NULL, 130, 40, 0.12, 'reasoning', 'acme-eu')",
        [
            now - timedelta(minutes=2, seconds=3),
            now - timedelta(minutes=2, seconds=0.6),
            now - timedelta(minutes=2, seconds=3),
            now - timedelta(minutes=2, seconds=2.1),
            now - timedelta(minutes=2, seconds=2),
            now - timedelta(minutes=2, seconds=0.6),
        ],
    )
    circuit = [
        (
            "c1",
            now - timedelta(days=3, hours=2),
            "openai",
            "gpt-4o",
            "opened",
            "5 failures in 60 s",
            5,
            9,
            30.0,
        ),
        (
            "c2",
            now - timedelta(days=3, hours=1),
            "openai",
            "gpt-4o",
            "half_opened",
            "cooldown over",
            5,
            9,
            30.0,
        ),
        ("c3", now - timedelta(days=3), "openai", "gpt-4o", "closed", "probe ok", 0, 1, None),
        ("c4", now - timedelta(hours=5), "openai", "gpt-4o", "opened", "503 x5", 5, 7, 60.0),
        (
            "c5",
            now - timedelta(hours=4, minutes=50),
            "openai",
            "gpt-4o",
            "half_opened",
            "cooldown over",
            5,
            7,
            60.0,
        ),
        (
            "c6",
            now - timedelta(hours=4, minutes=49),
            "openai",
            "gpt-4o",
            "closed",
            "probe ok",
            0,
            1,
            None,
        ),
        ("c7", now - timedelta(minutes=3), "openai", "gpt-4o", "opened", "503 x5", 5, 6, 60.0),
        (
            "c8",
            now - timedelta(hours=1),
            "anthropic",
            "claude-haiku-4",
            "opened",
            "402 quota",
            1,
            1,
            300.0,
        ),
    ]
    for row in circuit:
        con.execute(
            "INSERT INTO circuit_events (event_id, ts, provider, model, state, reason, failures, calls, cooldown_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            list(row),
        )
    profiles = [
        (
            "p1",
            now - timedelta(days=20),
            "activated",
            "global",
            None,
            "reasoning",
            1,
            None,
            "openai:gpt-4o-mini",
            "alice",
            "initial",
        ),
        (
            "p2",
            now - timedelta(days=10),
            "activated",
            "global",
            None,
            "reasoning",
            2,
            1,
            "openai:gpt-4o",
            "alice",
            "quality",
        ),
        (
            "p3",
            now - timedelta(days=2),
            "activated",
            "domain",
            "acme-eu",
            "reasoning",
            1,
            None,
            "anthropic:claude-sonnet-4",
            "bob",
            "eu residency",
        ),
        (
            "p4",
            now - timedelta(days=1),
            "activated",
            "global",
            None,
            "reasoning",
            3,
            2,
            "openai:o3",
            "carol",
            "try o3",
        ),
        (
            "p5",
            now - timedelta(hours=6),
            "rolled_back",
            "global",
            None,
            "reasoning",
            2,
            3,
            "openai:gpt-4o",
            "alice",
            "o3 too slow",
        ),
        (
            "p6",
            now - timedelta(days=15),
            "activated",
            "global",
            None,
            "scoring",
            1,
            None,
            "openai:gpt-4o-mini",
            "alice",
            "initial",
        ),
    ]
    for row in profiles:
        detail = {
            "model": row[8],
            "fallbacks": ["openai:gpt-4o-mini"] if row[5] == "reasoning" else [],
        }
        con.execute(
            "INSERT INTO profile_events (event_id, ts, action, scope_kind, scope_id, purpose, version, "
            "previous_version, model, actor, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*row, json.dumps(detail)],
        )
    budget = [
        (
            "b1",
            now - timedelta(minutes=40),
            "warning",
            "globex",
            "worlds",
            "scoring",
            Decimal("0.50"),
            Decimal("0.41"),
            Decimal("0.02"),
        ),
        (
            "b2",
            now - timedelta(minutes=31),
            "exceeded",
            "globex",
            "worlds",
            "scoring",
            Decimal("0.50"),
            Decimal("0.51"),
            Decimal("0"),
        ),
        (
            "b3",
            now - timedelta(minutes=30),
            "rejected",
            "globex",
            "worlds",
            "scoring",
            Decimal("0.50"),
            Decimal("0.51"),
            Decimal("0.03"),
        ),
    ]
    for row in budget:
        con.execute(
            "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, cap_usd, spent_usd, reserved_usd) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row[0], row[1], row[1].date(), *row[2:]],
        )
