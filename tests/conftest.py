"""Fixtures shared by the whole suite.

Every test runs with a clean `COMPTROLLER_*` environment and its own data directory, so
nothing on the developer's machine (a comptroller.toml, a data dir) leaks into a result.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import settings

# Properties draw hypothesis' default 100 examples in the default run; the soak run that
# .ci/run adds (`pytest -m soak --hypothesis-profile=soak`) draws 20 times as many from the
# properties marked `soak` (e.g. the native decoder against the reference normaliser).
# Derandomized: CI's soak draws the same examples every run, so a red run is a change's doing
# and reproduces; `--hypothesis-profile=soak-explore` draws new ones when you go looking.
settings.register_profile("soak", max_examples=2000, derandomize=True)
settings.register_profile("soak-explore", max_examples=2000)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One `-ra` line per skip reason, not one per test or per line of a library.

    pytest folds skips that share a place and a reason; a service that does not answer skips
    ~100 tests in many files, and langchain-tests skips from many of its lines. Each skip is
    therefore placed at the folder (or file) holding every test skipped for that reason.
    Runs before the short summary is printed (pytest's own hook wraps this one).
    """
    by_reason: dict[str, list[pytest.TestReport]] = defaultdict(list)
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            by_reason[report.longrepr[2]].append(report)
    root = terminalreporter.config.rootpath
    for reason, reports in by_reason.items():
        where = os.path.commonpath([report.location[0] for report in reports])
        for report in reports:
            # No line number: pytest prints "path: reason" and folds them into one line.
            report.longrepr = (str(root / where), None, reason)  # type: ignore[assignment]


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


_STANDARD_URLS = {
    "COMPTROLLER_TEST_POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "COMPTROLLER_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
}
"""Where the tests look for the services when the variable is not set: their standard local
ports (trust auth, database `test`)."""


def _service_url(variable: str) -> str:
    return os.environ.get(variable) or _STANDARD_URLS[variable]


def _unreachable(variable: str, url: str, exc: Exception) -> None:
    # Under CI a missing service fails the run; on a developer's machine the test is skipped
    # with one line saying what to start or set.
    reason = f"{url} does not answer ({type(exc).__name__}); start it or set {variable}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def _postgres_answer() -> tuple[str, Exception | None]:
    url = _service_url("COMPTROLLER_TEST_POSTGRES_URL")
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("select 1"))
    except Exception as exc:
        return url, exc
    finally:
        engine.dispose()
    return url, None


@pytest.fixture
def postgres_url(_postgres_answer: tuple[str, Exception | None]) -> str:
    """SQLAlchemy URL of the real PostgreSQL server (database `test`); the standard local
    address unless COMPTROLLER_TEST_POSTGRES_URL says otherwise."""
    url, error = _postgres_answer
    if error is not None:
        _unreachable("COMPTROLLER_TEST_POSTGRES_URL", url, error)
    return url


@pytest.fixture(scope="session")
def _redis_answer() -> tuple[str, Exception | None]:
    url = _service_url("COMPTROLLER_TEST_REDIS_URL")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except Exception as exc:
        return url, exc
    return url, None


@pytest.fixture
def redis_url(_redis_answer: tuple[str, Exception | None]) -> str:
    """URL of the real Redis server; the standard local address unless
    COMPTROLLER_TEST_REDIS_URL says otherwise."""
    url, error = _redis_answer
    if error is not None:
        _unreachable("COMPTROLLER_TEST_REDIS_URL", url, error)
    return url


@pytest.fixture
def live_collector(tmp_path: Path) -> object:
    """A real collector serving a fresh database on an ephemeral port (tests/usage_db.py)."""
    from usage_db import LiveCollector

    server = LiveCollector(tmp_path / "live.duckdb")
    yield server
    server.stop()
