"""The dashboard against the real profile store, and the `comptroller tui` command."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from textual.widgets import Input
from usage_db import held_by_another_process

from comptroller.cli import main
from comptroller.config import load_settings
from comptroller.control import ModelRef
from comptroller.control._profiles import Scope
from comptroller.control.profiles import Actor, ProfileSpec
from comptroller.tui import (
    DuckDBSource,
    Operator,
    ProfileRef,
    ServiceProfileAdmin,
    open_source,
    profile_admin,
)
from comptroller.tui._screens import ConfirmScreen
from comptroller.tui._widgets import DataGrid

from .conftest import make_app, settle

ROOT = Operator(name="alice", role="platform")
GLOBAL = Scope.global_()


@pytest.fixture
def admin(data_dir: Path) -> ServiceProfileAdmin:
    service = profile_admin(load_settings(None, data_dir=data_dir))
    platform = service.service.admins.init("setup")
    # Roles are granted in the store: the operators of these tests hold theirs.
    service.service.admins.grant(Actor.platform(ROOT.name), by=platform)
    service.service.admins.grant(Actor(name="bob", role="org_admin", org="acme"), by=platform)
    service.service.credentials.set(GLOBAL, "openai", "sk-test", actor=platform)
    for model in ("openai:gpt-4o-mini", "openai:gpt-4o", "openai:o3"):
        service.service.set_profile(
            GLOBAL, "reasoning", ProfileSpec(model=ModelRef.parse(model)), actor=platform
        )
    return service


def test_service_admin_reads_each_versions_settings(admin: ServiceProfileAdmin) -> None:
    spec = admin.spec_of(
        ProfileRef(purpose="reasoning", scope_kind="global", scope_id=None, version=1)
    )
    assert spec is not None
    assert spec["model"] == "openai:gpt-4o-mini"


def test_service_admin_refuses_a_role_that_may_not_change_the_scope(
    admin: ServiceProfileAdmin,
) -> None:
    target = ProfileRef(purpose="reasoning", scope_kind="global", scope_id=None, version=1)
    bob = Operator(name="bob", role="org_admin", org="acme")
    with pytest.raises(Exception, match="global scope"):
        admin.rollback(target, operator=bob, reason="no")
    assert [v.version for v in admin.service.history(GLOBAL, "reasoning")] == [1, 2, 3]


async def test_rollback_from_the_dashboard_writes_a_version_and_an_audit_entry(
    source: DuckDBSource, admin: ServiceProfileAdmin
) -> None:
    app = make_app(source, admin=admin, operator=ROOT)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("enter")  # reasoning @ global
        await settle(pilot)
        history = app.query_one("#profiles-history")
        index = max(i for i, row in enumerate(history.shown) if row["version"] == 1)  # type: ignore[attr-defined]
        for _ in range(index):
            await pilot.press("down")
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        app.screen.query_one(Input).value = "o3 regression"
        await pilot.press("enter")
        while not getattr(app, "last_write", None):
            await pilot.pause(0.01)
        assert app.last_write.ok, app.last_write.message  # type: ignore[attr-defined]
    versions = admin.service.history(GLOBAL, "reasoning")
    assert versions[-1].version == 4
    assert versions[-1].rollback_of == 1
    assert str(versions[-1].spec.model) == "openai:gpt-4o-mini"
    entry = admin.service.audit(scope=GLOBAL, purpose="reasoning")[-1]
    assert (entry.actor, entry.role, entry.reason) == ("alice", "platform", "o3 regression")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "x.duckdb", "--url", "http://127.0.0.1:1"], "not both"),
        (["--operator", "alice"], "--operator NAME and --role ROLE go together"),
        (["--db", "missing.duckdb"], "no such database"),
    ],
)
def test_tui_command_refuses_bad_arguments_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tui", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tui_command_paints_the_database_in_a_terminal(usage_db: Path) -> None:
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="30")
    proc = subprocess.Popen(
        [sys.executable, "-m", "comptroller", "tui", "--db", str(usage_db), "--refresh", "60"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"Top purposes today" not in seen or b"updated" not in seen:
            assert time.monotonic() < deadline, seen[-400:]
            if select.select([master], [], [], 0.05)[0]:
                seen += os.read(master, 1 << 16)
            assert proc.poll() is None, seen[-400:]
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"read-only" in seen


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        return None


@pytest.fixture
def collector_url(usage_db: Path) -> Iterator[str]:
    """A real collector owning the dataset's file, on an ephemeral port."""
    from comptroller.collector import Collector, create_app

    collector = Collector(usage_db)
    server = _Server(
        uvicorn.Config(
            create_app(collector), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "collector did not start"
        assert thread.is_alive(), "collector did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    collector.close()


async def test_dashboard_reads_through_a_running_collector(
    collector_url: str, usage_db: Path
) -> None:
    source = open_source(db=None, url=collector_url, default_db=usage_db)
    app = make_app(source)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for key in ("6", "2"):
                await pilot.press(key)
                await settle(pilot)
            assert not app.errors, app.errors
            calls = app.query_one("#calls-tail", DataGrid).rows
            assert calls[0]["trace_id"] == "t000001"
            purposes = {row["purpose"] for row in app.query_one("#spend-purposes", DataGrid).rows}
            assert purposes == {"reasoning", "scoring", "embedding"}
    finally:
        source.close()


async def test_dashboard_finds_the_collector_that_holds_its_file(
    collector_url: str, usage_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `comptroller tui` with no --url: the file is locked by a writing process, and the
    # collector listens on the configured port.
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_PORT", collector_url.rsplit(":", 1)[1])
    held = tmp_path / "held.duckdb"
    shutil.copyfile(usage_db, held)
    source = open_source(db=held, url=None, settings=load_settings())
    app = make_app(source)
    try:
        with held_by_another_process(held):
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.press("6")
                await settle(pilot)
                assert not app.errors, app.errors
                assert app.query_one("#calls-tail", DataGrid).rows[0]["trace_id"] == "t000001"
                status = str(app.query_one("#status").render())
                assert f"via collector {collector_url}" in status
    finally:
        source.close()
