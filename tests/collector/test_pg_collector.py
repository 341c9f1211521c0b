"""`comptroller collect` into a PostgreSQL ledger: real collector processes, real HTTP, the
real local PostgreSQL server (tests/conftest.py's `postgres_url`), a schema per test.

Two collectors with different ids and data directories land concurrently into one
database; one is killed with SIGKILL mid-load and restarted on the same data directory: no
acknowledged row is lost, none lands twice, and every rollup's sums equal the raw rows'.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comptroller.analytics._pg_schema import connect_pg, libpq_url
from comptroller.budget_alerts import warning_event_id
from comptroller.collector import EmbeddedSink
from comptroller.collector._service import Collector, pg_log_dir, pg_target
from comptroller.config import load_settings
from comptroller.config._collector import COLLECTOR_ID_FILE, stable_collector_id
from comptroller.errors import ConfigError

from .test_pg_ledger import _assert_rollups_equal_raw, _rows, usage_payload

pytestmark = pytest.mark.postgres

_ROWS = 25
"""Usage rows per request."""


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[tuple[str, str, str]]:
    """(SQLAlchemy URL, schema, the libpq URL selecting that schema): a schema of this
    test's own, dropped afterwards."""
    schema = f"t_collect_{uuid.uuid4().hex[:12]}"
    yield postgres_url, schema, libpq_url(postgres_url, schema=schema)
    con = connect_pg(postgres_url, migrate=False)
    try:
        cur = con.cursor()
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.close()
        con.commit()
    finally:
        con.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Collector:
    """One `comptroller collect` process on a fixed port (kept across a restart)."""

    def __init__(self, data_dir: Path, argv: list[str], env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.argv = [*argv, "--port", str(self.port), "--no-grpc"]
        self.env = {**os.environ, **env, "COMPTROLLER_DATA_DIR": str(data_dir)}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> None:
        self.starts += 1
        self.stderr = self.data_dir.parent / f"{self.data_dir.name}-stderr-{self.starts}.txt"
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "comptroller", "collect", *self.argv],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"collector exited: {self.stderr.read_text()}")
            if "OTLP/HTTP on" in self.stderr.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"collector not ready: {self.stderr.read_text()}")

    def health(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/health", timeout=10)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def stop(self) -> int:
        """SIGTERM, and the exit status (a clean stop ends the process by the signal, as
        service managers expect)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class _Sender(threading.Thread):
    """Posts `requests` OTLP usage exports to a collector, each until acknowledged (a
    collector that is down, or answers 429/503, gets it again after a pause)."""

    def __init__(self, collector: _Collector, prefix: str, requests: int) -> None:
        super().__init__(daemon=True)
        self.collector = collector
        self.prefix = prefix
        self.requests = requests
        self.acknowledged = 0
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=10) as client:
            for seed in range(self.requests):
                body = usage_payload(seed, _ROWS, prefix=self.prefix)
                while True:
                    if time.monotonic() > deadline:
                        self.error = f"{self.prefix}: request {seed} never acknowledged"
                        return
                    try:
                        answer = client.post(
                            f"{self.collector.url}/v1/logs",
                            content=body,
                            headers={"Content-Type": "application/x-protobuf"},
                        )
                    except httpx.TransportError:
                        time.sleep(0.05)  # down (killed, restarting): send it again
                        continue
                    if answer.status_code == 200:
                        self.acknowledged += 1
                        break
                    if answer.status_code not in (429, 503):
                        self.error = f"{self.prefix}: {answer.status_code} {answer.text}"
                        return
                    time.sleep(0.05)
                time.sleep(0.002)  # a steady load, not one burst


def _wait_landed(collector: _Collector, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        health = collector.health()
        ledger = health["ledger"]
        if ledger["landed_position"] == ledger["accepted_position"] and not health["queue"]["rows"]:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.1)


def _landed_position(url: str, schema: str, cid: str) -> int:
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


def test_two_collectors_one_killed_and_restarted_lose_and_duplicate_nothing(
    ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    url, schema, cli_url = ledger
    requests = 160
    # One collector names the ledger on the command line (the schema as libpq options), the
    # other through the settings' environment (COMPTROLLER_DB with comptroller's own
    # `?schema=`, COMPTROLLER_COLLECTOR_COLLECTOR_ID).
    killed = _Collector(tmp_path / "killed", ["--db", cli_url, "--collector-id", "east-1"], {})
    steady = _Collector(
        tmp_path / "steady",
        [],
        {
            "COMPTROLLER_DB": f"postgresql://{url.split('://', 1)[1]}?schema={schema}",
            "COMPTROLLER_COLLECTOR_COLLECTOR_ID": "west-1",
        },
    )
    try:
        killed.start(wait=False)
        steady.start(wait=False)
        killed.wait_ready()
        steady.wait_ready()
        for collector, cid in ((killed, "east-1"), (steady, "west-1")):
            ledger_health = collector.health()["ledger"]
            assert ledger_health["kind"] == "postgresql"
            assert ledger_health["collector_id"] == cid
        # The ingest logs stay local, one per collector id, in each data directory.
        assert pg_log_dir(killed.data_dir, "east-1").is_dir()
        assert pg_log_dir(steady.data_dir, "west-1").is_dir()

        senders = {
            "east": _Sender(killed, "east", requests),
            "west": _Sender(steady, "west", requests),
        }
        for sender in senders.values():
            sender.start()
        deadline = time.monotonic() + 120
        while _landed_position(url, schema, "east-1") < requests // 4:
            assert time.monotonic() < deadline, "the collector landed nothing"
            time.sleep(0.02)
        killed.kill()  # SIGKILL mid-load
        assert killed.process is not None
        assert killed.process.returncode == -signal.SIGKILL
        at_kill = _landed_position(url, schema, "east-1")
        assert 0 < at_kill < requests
        acknowledged_at_kill = senders["east"].acknowledged
        assert acknowledged_at_kill < requests  # killed mid-load, not after
        # Restarted on the same data directory: its id, its ingest log, replayed.
        killed.start()
        for sender in senders.values():
            sender.join(timeout=240)
            assert not sender.is_alive()
            assert sender.error is None, sender.error
            assert sender.acknowledged == requests
        for collector in (killed, steady):
            health = _wait_landed(collector)
            assert health["status"] == "ok", health
            assert health["ledger"]["landed_position"] > 0

        state = httpx.get(f"{steady.url}/api/budget-state", timeout=30)
        assert state.status_code == 200, state.text
        served = {(s["tenant"], s["context"], s["purpose"]) for s in state.json()}
        # The read API answers from PostgreSQL too (tests/collector/test_pg_query.py).
        query = httpx.post(
            f"{steady.url}/api/query",
            json={"sql": "SELECT count(*) AS n FROM llm_usage"},
            timeout=30,
        )
        assert query.status_code == 200, query.text
        for collector in (killed, steady):
            assert collector.stop() == -signal.SIGTERM, collector.stderr.read_text()
    finally:
        killed.kill()
        steady.kill()

    con = connect_pg(url, schema=schema, migrate=False)
    try:
        # 0 lost, 0 duplicated: every usage id sent is there, once.
        for prefix in ("east", "west"):
            ids = {
                row[0]
                for row in _rows(
                    con, "SELECT usage_id FROM llm_usage WHERE usage_id LIKE $1", [f"{prefix}-%"]
                )
            }
            expected = {f"{prefix}-{seed}-{i}" for seed in range(requests) for i in range(_ROWS)}
            assert ids == expected, (prefix, len(expected - ids), len(ids - expected))
        assert _assert_rollups_equal_raw(con) == 2 * requests * _ROWS
        # Every position of each collector's log landed once (the ranges tile 1..n).
        for cid in ("east-1", "west-1"):
            ranges = _rows(
                con,
                "SELECT first_position, position FROM ledger_positions "
                "WHERE collector_id = $1 ORDER BY position",
                [cid],
            )
            covered = [p for lo, hi in ranges for p in range(lo, hi + 1)]
            assert covered == sorted(set(covered)), cid
            assert covered[-1] >= requests, cid
        # /api/budget-state answered from PostgreSQL: every capped key of the day.
        today = dt.datetime.now(dt.UTC).date().isoformat()
        keys = {
            (str(t), str(c), str(p))
            for t, c, p in _rows(
                con,
                "SELECT tenant, context, purpose FROM llm_budget_daily "
                "WHERE day = $1::DATE AND budget_cap_usd IS NOT NULL",
                [today],
            )
        }
        assert keys
        assert served == keys
        # The budgets crossed were recorded once each, whichever collector saw it first.
        spent = _rows(
            con,
            "SELECT tenant, context, purpose FROM llm_budget_daily "
            "WHERE day = $1::DATE AND spent_usd >= budget_cap_usd",
            [today],
        )
        assert spent, "the load crosses some caps"
        exceeded = _rows(
            con,
            "SELECT tenant, context, purpose, count(*) FROM budget_events "
            "WHERE kind = 'exceeded' AND day = $1::DATE GROUP BY 1, 2, 3",
            [today],
        )
        assert {tuple(r[:3]) for r in exceeded} == {tuple(r) for r in spent}
        assert all(r[3] == 1 for r in exceeded)
        tenant, context, purpose = spent[0]
        warned = _rows(
            con,
            "SELECT count(*) FROM budget_events WHERE event_id = $1",
            [warning_event_id(tenant, context, purpose, today, "1")],
        )
        assert warned[0][0] == 1
    finally:
        con.close()


def _end_sessions(url: str, cid: str) -> int:
    """End the collector's PostgreSQL sessions (as a server restart or failover would)."""
    con = connect_pg(url, migrate=False)
    try:
        rows = _rows(
            con,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            [f"comptroller collector {cid}"],
        )
        return int(rows[0][0])
    finally:
        con.close()


def test_a_collector_whose_sessions_end_reconnects_and_lands_everything(
    ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    url, schema, cli_url = ledger
    requests = 80
    collector = _Collector(tmp_path / "one", ["--db", cli_url, "--collector-id", "north-1"], {})
    try:
        collector.start()
        sender = _Sender(collector, "north", requests)
        sender.start()
        deadline = time.monotonic() + 120
        while _landed_position(url, schema, "north-1") < requests // 4:
            assert time.monotonic() < deadline, "the collector landed nothing"
            time.sleep(0.02)
        # The lander's, and the budget lane's once it has answered a read (under load it may
        # not have yet): at least the one landing.
        assert _end_sessions(url, "north-1") >= 1
        sender.join(timeout=240)
        assert sender.error is None, sender.error
        health = _wait_landed(collector)
        assert health["status"] == "ok", health
        # Ended again while the writer idles: the read that follows must not fail on either
        # dead session (the budget lane's, or the lander's flushing pending crossings).
        _end_sessions(url, "north-1")
        state = httpx.get(f"{collector.url}/api/budget-state", timeout=30)
        assert state.status_code == 200, state.text
        assert state.json()
        assert collector.stop() == -signal.SIGTERM
    finally:
        collector.kill()
    con = connect_pg(url, schema=schema, migrate=False)
    try:
        (count,) = _rows(con, "SELECT count(DISTINCT usage_id) FROM llm_usage")[0]
        assert count == requests * _ROWS
        assert _assert_rollups_equal_raw(con) == requests * _ROWS
    finally:
        con.close()


def test_a_second_collector_with_a_running_ones_id_is_refused(
    ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    _, _, cli_url = ledger
    first = _Collector(tmp_path / "first", ["--db", cli_url], {})
    try:
        first.start()
        cid = (first.data_dir / COLLECTOR_ID_FILE).read_text().strip()
        assert first.health()["ledger"]["collector_id"] == cid
        # Another data directory, the same id: refused while the first runs.
        second = _Collector(tmp_path / "second", ["--db", cli_url, "--collector-id", cid], {})
        second.start(wait=False)
        assert second.process is not None
        assert second.process.wait(timeout=60) != 0
        message = second.stderr.read_text()
        assert f"collector id {cid!r} is held by another collector" in message
        assert "collector.collector_id" in message
        assert first.stop() == -signal.SIGTERM
        # Once the first stopped, the id is free again.
        second.start()
        assert second.health()["ledger"]["collector_id"] == cid
        assert second.stop() == -signal.SIGTERM
    finally:
        first.kill()
        with contextlib.suppress(NameError):
            second.kill()


def test_two_collectors_cannot_share_an_ingest_log(
    ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    _, _, cli_url = ledger
    log_dir = tmp_path / "shared.ingest"
    first = Collector(cli_url, collector_id="a", ingest_log_dir=log_dir)
    try:
        assert first.ledger_health()["kind"] == "postgresql"
        with pytest.raises(ConfigError, match="used by another running collector"):
            Collector(cli_url, collector_id="b", ingest_log_dir=log_dir)
        with pytest.raises(ConfigError, match="needs its collector id"):
            Collector(cli_url, ingest_log_dir=tmp_path / "other")
    finally:
        first.close()
    # Closed: the directory (and the id) are free again.
    again = Collector(cli_url, collector_id="a", ingest_log_dir=log_dir)
    again.close()


def test_a_duckdb_collector_reports_its_ledger_too(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "ledger.duckdb")
    try:
        assert collector.ledger_health() == {
            "kind": "duckdb",
            "path": str(tmp_path / "ledger.duckdb"),
            "landed_position": 0,
            "accepted_position": 0,
        }
    finally:
        collector.close()


def test_the_collector_id_is_made_once_per_data_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = stable_collector_id(tmp_path / "a")
    assert len(first.rsplit("-", 1)[1]) == 8  # <host>-<8 hex digits>
    assert stable_collector_id(tmp_path / "a") == first
    (tmp_path / "b").mkdir()
    assert stable_collector_id(tmp_path / "b") != first
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / COLLECTOR_ID_FILE).write_text("bad id with spaces\n")
    with pytest.raises(ConfigError, match=r"set collector\.collector_id"):
        stable_collector_id(tmp_path / "c")


def test_the_schema_is_taken_from_the_url_options() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dledger_a"
    assert pg_target(url) == (url, "ledger_a")
    assert pg_target("postgresql://h/db") == ("postgresql://h/db", None)
    assert pg_target("postgresql://h/db?schema=ledger_b") == (
        "postgresql://h/db?schema=ledger_b",
        "ledger_b",
    )
    other = "postgresql://h/db?options=-cstatement_timeout%3D5"
    assert pg_target(other) == (other, None)


def test_a_postgresql_ledger_is_refused_by_the_embedded_sink(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    with pytest.raises(ConfigError, match="comptroller collect"):
        EmbeddedSink(url)
    monkeypatch.setenv("COMPTROLLER_DB", url)
    settings = load_settings()
    assert settings.db_url == url
    with pytest.raises(ConfigError, match="comptroller collect"):
        _ = settings.db_file
