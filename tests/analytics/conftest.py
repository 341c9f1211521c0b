"""Fixtures of the analytics tests: a real DuckDB file per test (builders in tests/usage_db.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comptroller.analytics import connect


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "usage.duckdb"


@pytest.fixture
def con(db_path: Path) -> Any:
    connection = connect(db_path)
    yield connection
    connection.close()
