"""Profile resolution: warm cache (the hot path of every call), cold, and the pure function.

    uv run python bench/bench_resolve.py [--n 200000] [--postgres postgresql+psycopg://…]

1. `ProfileService.resolve` with a warm cache (budget: ≤ 5 µs per call), over a mix of
   (purpose, domain, org) keys, with the change-counter poll at its normal ttl (1 s) so the
   occasional poll is included in the average.
2. A cold resolution (cache invalidated before every call): one store query + the merge.
3. `resolve_active_profile` alone (the pure precedence function, no store).

Figures: mean and p50/p99 per call in microseconds (timeit batches for the mean; single-call
perf_counter_ns samples for the percentiles).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from comptroller.config import load_settings
from comptroller.control import BudgetSpec, ModelRef
from comptroller.control.profiles import (
    Actor,
    ProfileService,
    ProfileSpec,
    Scope,
    resolve_active_profile,
)

PLATFORM = Actor.platform("bench")


def build(url: str | None, data_dir: Path) -> ProfileService:
    settings = load_settings(None, data_dir=data_dir, model={"reasoning": "openai:gpt-4o-mini"})
    service = ProfileService.from_settings(settings, url=url, environ={})
    service.admins.init(PLATFORM.name)  # a fresh store: the bench is its platform admin
    service.credentials.set(Scope.global_(), "openai", "sk-bench", actor=PLATFORM)
    for purpose in ("reasoning", "scoring", "agent_turn", "embedding"):
        model = "openai:text-embedding-3-small" if purpose == "embedding" else "openai:gpt-4o"
        service.set_profile(
            Scope.global_(),
            purpose,
            ProfileSpec(model=ModelRef.parse(model), temperature=0.2),
            actor=PLATFORM,
        )
    for org in range(20):
        service.set_profile(
            Scope.of_org(f"org{org}"),
            "reasoning",
            ProfileSpec(budget=BudgetSpec(daily_usd=Decimal("10")), max_tokens=1024),
            actor=PLATFORM,
        )
        service.set_profile(
            Scope.of_domain(f"org{org}-d0", org=f"org{org}"),
            "reasoning",
            ProfileSpec(model=ModelRef.parse("openai:gpt-4.1")),
            actor=PLATFORM,
        )
    return service


def percentiles(call: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--postgres", help="Also measure cold resolution on this PostgreSQL URL.")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        service = build(None, Path(tmp))
        keys = (
            [("reasoning", f"org{i}-d0", f"org{i}") for i in range(20)]
            + [("scoring", None, f"org{i}") for i in range(20)]
            + [("agent_turn", None, None)]
        )
        for purpose, domain, org in keys:
            service.resolve(purpose, domain=domain, org=org)  # warm
        resolve = service.resolve
        cycle = [keys[i % len(keys)] for i in range(1024)]

        def warm_batch() -> None:
            for purpose, domain, org in cycle:
                resolve(purpose, domain=domain, org=org)

        loops = max(1, args.n // len(cycle))
        best = min(timeit.repeat(warm_batch, number=loops, repeat=5))
        results["warm_mean_us"] = round(best / (loops * len(cycle)) * 1e6, 3)
        one = keys[0]
        results["warm"] = percentiles(lambda: resolve(one[0], domain=one[1], org=one[2]), args.n)

        def cold() -> None:
            service.invalidate()
            resolve("reasoning", domain="org3-d0", org="org3")

        results["cold_sqlite"] = percentiles(cold, 2000)

        active = service.store.active_for("reasoning", domain="org3-d0", org="org3")
        defaults = service.server_defaults
        results["pure"] = percentiles(
            lambda: resolve_active_profile(
                "org3-d0", "org3", "reasoning", active=active, server_defaults=defaults
            ),
            args.n // 4,
        )
        service.close()
        if args.postgres:
            # A schema of its own, dropped afterwards: the server may be shared.
            schema = f"ct_bench_{uuid.uuid4().hex[:12]}"
            admin = sa.create_engine(args.postgres)
            with admin.begin() as con:
                con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = sa.make_url(args.postgres).update_query_dict(
                {"options": f"-csearch_path={schema}"}
            )
            try:
                pg = build(url.render_as_string(hide_password=False), Path(tmp))
                results["cold_postgres"] = percentiles(
                    lambda: (
                        pg.invalidate(),
                        pg.resolve("reasoning", domain="org3-d0", org="org3"),
                    ),
                    2000,
                )
                pg.close()
            finally:
                with admin.begin() as con:
                    con.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                admin.dispose()
    for section, value in results.items():
        if isinstance(value, dict):
            results[section] = {k: round(v, 3) for k, v in value.items()}
    print(json.dumps(results, indent=2))
    print(f"warm-cache resolution: {results['warm_mean_us']} µs/call (budget ≤ 5 µs)")


if __name__ == "__main__":
    main()
