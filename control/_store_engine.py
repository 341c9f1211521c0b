"""The profile store's engine: connection set-up, schema migration and write-conflict detection.

SQLite (WAL, busy timeout, a 0600 file) by default, PostgreSQL by URL; Alembic brings either to
the newest schema on open.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from comptroller.control._store_schema import HEAD_REVISION, VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).parent / "_migrations"


def _private_sqlite(path: Path) -> None:
    """Profiles, audit and sealed credentials: the file is its owner's alone (0600).

    SQLite takes an empty file for a new database, and creates its `-wal` and `-shm` files
    with the database file's permissions: creating it empty with 0600 covers all three.
    """
    from comptroller._private import FILE_MODE, tighten

    if path.exists():
        tighten(path)
        return
    with contextlib.suppress(FileExistsError):  # another process created it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_engine(url: str) -> Engine:
    """An engine for `url`, set up for concurrent writers (SQLite: WAL, busy timeout)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        database = sa_url.database
        in_memory = not database or database == ":memory:"
        if database and not in_memory:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            _private_sqlite(Path(database))
        engine = sa.create_engine(
            sa_url,
            connect_args={"timeout": 30, "check_same_thread": False},
            # An in-memory database lives in one connection: every thread shares it.
            poolclass=StaticPool if in_memory else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
            finally:
                cursor.close()

        return engine
    return sa.create_engine(sa_url, pool_pre_ping=True)


def migrate(engine: Engine, *, revision: str = HEAD_REVISION) -> None:
    """Bring the store's schema to `revision` (default: the newest; Alembic scripts in the
    package). Tests pass an older revision to build a store as an earlier release left it."""
    if _current_revision(engine) == revision:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    for attempt in range(3):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Two processes opening a fresh store must not both create the tables.
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(7401235)"))
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
            return
        except OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))  # another process is migrating the same file


def _current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table(VERSION_TABLE):
            return None
        row = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return str(row[0]) if row else None


def _is_conflict(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent writer took the same version number
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):  # PostgreSQL serialization failure, deadlock
        return True
    return "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()
