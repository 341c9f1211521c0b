"""Fixtures shared by the whole suite.

Every test runs with a clean `COMPTROLLER_*` environment and its own data directory, so
nothing on the developer's machine (a comptroller.toml, a data dir) leaks into a result.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    for name in list(os.environ):
        if name.startswith("COMPTROLLER_") and not name.startswith("COMPTROLLER_TEST_"):
            monkeypatch.delenv(name)
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("COMPTROLLER_DATA_DIR", str(home / "data"))
    # Keep config discovery from walking up into a developer's project.
    monkeypatch.chdir(home)
    return home


@pytest.fixture
def data_dir(_isolated_env: Path) -> Path:
    """The data directory of this test (already set as COMPTROLLER_DATA_DIR)."""
    return _isolated_env / "data"


def _service_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} is not set: .ci/run exports it for the tests that need it")
        pytest.skip(f"{variable} not set (bash .ci/run sets it)")
    return url


@pytest.fixture
def postgres_url() -> str:
    """SQLAlchemy URL of the real PostgreSQL server (database `test`); fails if unreachable."""
    url = _service_url("COMPTROLLER_TEST_POSTGRES_URL")
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("select 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {url} is unreachable: {exc}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis server on this machine; fails if unreachable."""
    url = _service_url("COMPTROLLER_TEST_REDIS_URL")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except Exception as exc:
        pytest.fail(f"Redis at {url} is unreachable: {exc}")
    return url


@pytest.fixture
def live_collector(tmp_path: Path) -> object:
    """A real collector serving a fresh database on an ephemeral port (tests/usage_db.py)."""
    from usage_db import LiveCollector

    server = LiveCollector(tmp_path / "live.duckdb")
    yield server
    server.stop()
