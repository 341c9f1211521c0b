"""`comptroller demo`: the story it tells, the data it leaves, and the hints it prints.

The demo runs as a user runs it (a subprocess of the installed command) against real DuckDB
files and a real SQLite profile store; the only fakes are its in-process provider endpoints
(Anthropic, Gemini, OpenAI), spoken to by the providers' own SDKs over HTTP.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from comptroller._demo_workload import (
    CLAUDE_CHAIN,
    EMBEDDING_CHAIN,
    EMBEDDING_UPGRADE,
    GEMINI_CHAIN,
    LAB_BATCH,
    OPENAI_CHAIN,
    plan,
    window,
)

OPUS, SONNET = (ref.split(":", 1)[1] for ref in CLAUDE_CHAIN[:2])


def _env(data_dir: Path) -> dict[str, str]:
    # The suite's isolation, for a subprocess: no COMPTROLLER_*/OTEL_* from the developer.
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("COMPTROLLER_") or k.startswith("OTEL_"))
        or k.startswith("COMPTROLLER_TEST_")
    }
    env["COMPTROLLER_DATA_DIR"] = str(data_dir)
    return env


def _comptroller(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comptroller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env),
        cwd=cwd,
    )


@dataclass(frozen=True)
class DemoRun:
    data_dir: Path
    cwd: Path
    env: Mapping[str, str]
    stdout: str

    @property
    def db_file(self) -> Path:
        return self.data_dir / "comptroller.duckdb"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        con = duckdb.connect(str(self.db_file), read_only=True)
        try:
            con.execute("set TimeZone = 'UTC'")  # the demo's budget day (settings.timezone)
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One default-sized demo run on the default data directory (the data dir's files)."""
    home = tmp_path_factory.mktemp("demo-home")
    env = _env(home / "data")
    result = _comptroller("demo", "--calls", "400", "--no-tui", env=env, cwd=home)
    assert result.returncode == 0, result.stderr
    return DemoRun(data_dir=home / "data", cwd=home, env=env, stdout=result.stdout)


def _hints(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("  uv run comptroller")]
    return [shlex.split(line, comments=True) for line in lines]


# --- the story --------------------------------------------------------------------------------


def test_a_budget_is_hit_and_its_calls_fail_closed(demo_run: DemoRun) -> None:
    refused = demo_run.query(
        "select count(*) from spans where operation is null and outcome = 'budget_exceeded'"
    )[0][0]
    events = demo_run.query(
        "select tenant, purpose, count(distinct day) from budget_events "
        "where kind = 'rejected' group by all"
    )
    assert isinstance(refused, int)
    assert refused >= 10
    assert events
    assert all(row[:2] == ("initech-lab", "scoring") for row in events)
    assert max(int(str(row[2])) for row in events) >= 2  # hit on more than one simulated day
    assert re.search(r"budget +initech-lab scoring: \d+ calls refused", demo_run.stdout)


def test_a_circuit_opens_and_later_closes(demo_run: DemoRun) -> None:
    events = demo_run.query(
        "select epoch(ts), state, reason from circuit_events "
        f"where provider = 'anthropic' and model = '{OPUS}' order by ts"
    )
    states = [state for _, state, _ in events]
    assert states[0] == "opened"
    assert "consecutive failures" in str(events[0][2])
    assert states[-1] == "closed"
    opened_at, closed_at = float(str(events[0][0])), float(str(events[-1][0]))
    # An outage a person can see on a timeline, not a blip inside one call's retries.
    assert closed_at - opened_at >= 15 * 60
    # Meanwhile reasoning fell back down the Claude chain and kept answering.
    fallbacks = demo_run.query(
        "select distinct request_model from llm_usage where purpose = 'reasoning' "
        f"and fallback_depth > 0 and outcome = 'ok' and epoch(ts) between {opened_at} and "
        f"{closed_at}"
    )
    assert (SONNET,) in fallbacks
    # Anthropic's own "overloaded" status opened it.
    assert re.search(rf"circuit +{OPUS} opened [^\n]*last: 529[^\n]*, closed ", demo_run.stdout)


def test_a_profile_change_and_its_rollback_land_in_order(demo_run: DemoRun) -> None:
    events = demo_run.query(
        "select action, version, model from profile_events "
        "where scope_id = 'acme' and purpose = 'reasoning' order by ts"
    )
    assert [(action, version) for action, version, _ in events] == [
        ("activated", 1),
        ("activated", 2),
        ("rolled_back", 3),
    ]
    assert events[1][2] == CLAUDE_CHAIN[1]
    ((opened,),) = demo_run.query(
        "select min(epoch(ts)) from circuit_events where state = 'opened'"
    )
    switched, rolled_back = demo_run.query(
        "select epoch(ts) from profile_events where scope_id = 'acme' and "
        "purpose = 'reasoning' and version in (2, 3) order by version"
    )
    # The admin reacts to the open circuit, and rolls back once it has closed.
    ((closed,),) = demo_run.query(
        "select max(epoch(ts)) from circuit_events where state = 'closed'"
    )
    assert float(str(opened)) < float(str(switched[0])) < float(str(rolled_back[0]))
    assert float(str(closed)) < float(str(rolled_back[0]))


def test_each_provider_serves_its_own_chain_and_every_answer_is_priced(
    demo_run: DemoRun,
) -> None:
    chains = {
        "anthropic": CLAUDE_CHAIN,
        "gcp.gemini": GEMINI_CHAIN,
        "openai": (*OPENAI_CHAIN, *EMBEDDING_CHAIN, EMBEDDING_UPGRADE),
    }
    rows = demo_run.query(
        "select purpose, provider, request_model, price_source, cost_usd, input_tokens "
        "from llm_usage"
    )
    assert {row[1] for row in rows} == set(chains)
    for purpose in {row[0] for row in rows}:
        # One provider per purpose: its chain never leaves it.
        assert len({row[1] for row in rows if row[0] == purpose}) == 1, purpose
    for _purpose, provider, model, source, cost, tokens in rows:
        assert f"{provider}:{model}" in chains[str(provider)]
        if tokens:  # an answer, not an overloaded attempt
            assert str(source).startswith("genai-prices@"), (provider, model, source)
            assert Decimal(str(cost)) > 0


def test_the_calls_span_days_with_a_daily_shape(demo_run: DemoRun) -> None:
    now = datetime.now(UTC).timestamp()
    first, last, hours, days = demo_run.query(
        "select min(epoch(ts)), max(epoch(ts)), count(distinct date_trunc('hour', ts)), "
        "count(distinct ts::date) from llm_usage"
    )[0]
    assert float(str(last)) - float(str(first)) >= 36 * 3600
    assert float(str(last)) <= now + 60  # simulated time ends now, never in the future
    assert isinstance(hours, int)
    assert hours >= 24
    assert isinstance(days, int)
    assert days >= 2
    by_day = demo_run.query("select day, sum(calls) from llm_usage_daily group by 1 order by 1")
    assert len(by_day) == days
    # Working hours are busier than the night (hours of the whole days only).
    night, afternoon = demo_run.query(
        "select count(*) filter (where hour(ts) < 6), count(*) filter (where hour(ts) between 12 "
        "and 17) from llm_usage where ts::date < current_date"
    )[0]
    assert int(str(afternoon)) > 2 * int(str(night))


def test_printed_totals_equal_duckdb(demo_run: DemoRun) -> None:
    match = re.search(r"^total: \$([0-9.,]+)", demo_run.stdout, re.MULTILINE)
    assert match, demo_run.stdout
    printed = Decimal(match.group(1).replace(",", ""))
    total = Decimal(str(demo_run.query("select sum(cost_usd) from llm_usage")[0][0]))
    places = Decimal(1).scaleb(-len(match.group(1).split(".")[1]))
    assert printed == total.quantize(places)
    # The day, purpose and tenant tables each add up to the same total.
    for section in ("day", "purpose", "tenant"):
        block = demo_run.stdout.split(f"\n{section} ")[1].split("\n\n")[0]
        costs = [Decimal(m.replace(",", "")) for m in re.findall(r"\$([0-9.,]+)", block)]
        assert sum(costs) == pytest.approx(total, abs=Decimal("0.0001"))


# --- the hints --------------------------------------------------------------------------------


def test_every_hint_works_when_pasted(demo_run: DemoRun) -> None:
    hints = _hints(demo_run.stdout)
    assert len(hints) >= 4
    outputs: dict[str, str] = {}
    for argv in hints:
        # `uv run comptroller` runs this environment's installed command: the same as
        # `python -m comptroller` here.
        assert argv[:3] == ["uv", "run", "comptroller"], argv
        args = argv[3:]
        if "tui" in args:
            _run_tui(args, env=demo_run.env, cwd=demo_run.cwd)
            continue
        result = _comptroller(*args, env=demo_run.env, cwd=demo_run.cwd)
        assert result.returncode == 0, (argv, result.stderr)
        outputs[" ".join(args)] = result.stdout
    history = next(out for cmd, out in outputs.items() if "history reasoning" in cmd)
    assert SONNET in history
    assert "(rollback to v1)" in history
    shown = next(out for cmd, out in outputs.items() if "profiles show" in cmd)
    assert "agent_turn" in shown
    assert "reasoning" in shown


def _run_tui(args: list[str], *, env: Mapping[str, str], cwd: Path) -> None:
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "comptroller", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"updated" not in seen:
            assert time.monotonic() < deadline, seen[-400:]
            if select.select([master], [], [], 0.05)[0]:
                seen += os.read(master, 1 << 16)
            assert proc.poll() is None, seen[-400:]
        os.write(master, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"Top purposes today" in seen


def test_hints_name_the_data_directory_given_on_the_command_line(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    chosen = tmp_path / "chosen"
    env = _env(elsewhere)
    result = _comptroller(
        "--data-dir", str(chosen), "demo", "--calls", "40", "--no-tui", env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    hints = _hints(result.stdout)
    assert hints
    assert all(h[3:5] == ["--data-dir", str(chosen)] for h in hints)
    history = next(h for h in hints if "history" in h)
    pasted = _comptroller(*history[3:], env=env, cwd=tmp_path)
    assert pasted.returncode == 0, pasted.stderr
    assert "(rollback to v1)" in pasted.stdout
    assert not elsewhere.exists()


# --- the profile store ------------------------------------------------------------------------


def test_a_second_run_starts_the_demo_store_afresh(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    for run in range(2):
        result = _comptroller("demo", "--calls", "40", "--no-tui", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert ("started afresh" in result.stdout) == (run == 1)
    history = _comptroller(
        "profiles", "history", "reasoning", "--org", "acme", "--json", env=env, cwd=tmp_path
    )
    assert history.returncode == 0, history.stderr
    versions = re.findall(r'"version": (\d+)', history.stdout)
    assert versions == ["1", "2", "3"]  # one run's story, not two interleaved


def test_demo_refuses_a_profile_store_it_did_not_create(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    init = _comptroller("admin", "init", env=env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    store = tmp_path / "data" / "profiles.sqlite"
    before = store.read_bytes()
    result = _comptroller("demo", "--calls", "5", "--no-tui", env=env, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("comptroller:")]
    assert len(errors) == 1, result.stderr
    assert "not the demo's" in errors[0]
    assert "--data-dir" in errors[0]
    assert store.read_bytes() == before
    assert not (tmp_path / "data" / "comptroller.duckdb").exists()


def test_demo_refuses_a_database_with_foreign_usage(data_dir: Path) -> None:
    from comptroller.analytics import connect

    db_file = data_dir / "prod.duckdb"
    con = connect(db_file)
    con.execute(
        "insert into llm_usage (usage_id, ts, service_name, price_source, outcome, source) "
        "values ('u1', now(), 'billing-app', 'unpriced', 'ok', 'comptroller')"
    )
    con.close()
    result = subprocess.run(
        [sys.executable, "-m", "comptroller", "demo", "--calls", "5", "--db", str(db_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "not from the demo" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("comptroller: error:")]
    assert len(errors) == 1
    con = duckdb.connect(str(db_file), read_only=True)
    assert con.execute("select count(*) from llm_usage").fetchall() == [(1,)]
    con.close()


def test_demo_hands_its_database_to_the_dashboard() -> None:
    # `comptroller demo --tui` invokes `comptroller tui` with db=<the demo's file>.
    import click

    from comptroller.cli import cli

    with click.Context(cli) as ctx:
        tui = cli.get_command(ctx, "tui")
        demo = cli.get_command(ctx, "demo")
    assert tui is not None
    assert demo is not None
    assert "db" in {param.name for param in tui.params}
    assert "open_tui" in {param.name for param in demo.params}


# --- the workload -----------------------------------------------------------------------------


def test_the_demo_runs_the_seeds_chains() -> None:
    import tomllib
    from importlib import resources

    from comptroller._demo_workload import PURPOSES

    text = (resources.files("comptroller.control.profiles") / "seeds.toml").read_text("utf-8")
    seeds = tomllib.loads(text)["profiles"]
    for purpose, chain in (("reasoning", CLAUDE_CHAIN), ("scoring", GEMINI_CHAIN)):
        assert (seeds[purpose]["model"], *seeds[purpose]["fallbacks"]) == chain
        assert PURPOSES[purpose][0] == chain


def test_the_workload_follows_a_working_day_and_grows() -> None:
    now = datetime(2026, 3, 4, 18, 30, tzinfo=UTC)
    span = window(now, days=2, timezone="UTC")
    sessions = plan(span, calls=3000, rng=random.Random(1))
    assert sum(len(s.calls) for s in sessions) == 3000
    moments = [s.at for s in sessions]
    assert moments == sorted(moments)
    assert span.start.timestamp() <= moments[0]
    assert moments[-1] < now.timestamp()
    per_day = [0, 0]
    night = afternoon = 0
    for session in sessions:
        at = datetime.fromtimestamp(session.at, UTC)
        if at.day < 4:
            per_day[at.day - 2] += len(session.calls)
            night += len(session.calls) if at.hour < 6 else 0
            afternoon += len(session.calls) if 12 <= at.hour < 18 else 0
    assert afternoon > 3 * night
    assert per_day[1] > per_day[0]
    # The lab's scoring batch, every day whose batch hour has come (today's at 15:00 has).
    _org, domain, _, purpose, size, hour = LAB_BATCH
    batches = [s for s in sessions if s.domain == domain and len(s.calls) == size]
    assert [datetime.fromtimestamp(s.at, UTC).hour for s in batches] == [hour] * 3
    assert all(p == purpose for s in batches for p, _ in s.calls)


def test_embeddings_run_guarded_and_their_model_change_warns(demo_run: DemoRun) -> None:
    rows = demo_run.query(
        "select operation, request_model, count(*), sum(cost_usd) from llm_usage "
        "where purpose = 'embedding' group by all"
    )
    assert rows
    assert all(op == "embeddings" for op, *_ in rows)
    assert all(cost is not None and Decimal(str(cost)) > 0 for *_, cost in rows)
    warnings = demo_run.query(
        "select scope_id, model, detail->>'$.before' from profile_events "
        "where action = 'warning' and purpose = 'embedding'"
    )
    assert warnings == [("acme", EMBEDDING_UPGRADE, EMBEDDING_CHAIN[0])]
