"""Files that hold billing data or secrets are their owner's alone: directories 0700, files
0600, whatever the umask; an existing looser one is tightened on open, with a warning.

A real run: the data directory, DuckDB written, the SQLite profile store written, the
credentials key, the OTLP spool with the collector down, then up (a real collector, its
ingest log).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector.helpers import log_records, usage_event
from usage_db import NOW, LiveCollector, fill, usage_row

from comptroller import analytics
from comptroller.config import load_settings
from comptroller.control._credential_crypto import MasterKeySource
from comptroller.control._otlp import SpoolingLogExporter
from comptroller.control._profile_store import ProfileStore
from comptroller.errors import ComptrollerError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    # The worst common case: files group- and world-readable unless made private.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_real_run_leaves_every_data_and_secret_file_private(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.ensure_data_dir()
    data = settings.data_dir
    fill(settings.db_file, [usage_row(NOW)])
    assert mode(data) == 0o700
    assert mode(settings.db_file) == 0o600
    store = ProfileStore(settings.profile_store_url)  # migrates: writes the schema
    store.write(lambda connection: None)  # a write transaction (the change counter)
    sqlite = data / "profiles.sqlite"
    assert mode(sqlite) == 0o600
    for extra in (sqlite.with_name(sqlite.name + "-wal"), sqlite.with_name(sqlite.name + "-shm")):
        if extra.exists():  # SQLite gives them the database file's mode
            assert mode(extra) == 0o600
    store.engine.dispose()

    key_file = tmp_path / "keys" / "master.key"
    MasterKeySource(key_file, environ={}).load()
    assert mode(key_file) == 0o600
    assert mode(key_file.parent) == 0o700

    records = log_records([usage_event("u-modes-1")])
    down = SpoolingLogExporter(
        "http://127.0.0.1:9", data / "spool", max_bytes=1 << 20, background=False
    )
    down.export(records)
    assert down.pending() == 1
    assert mode(data / "spool") == 0o700
    assert [mode(p) for p in (data / "spool").glob("*.otlp")] == [0o600]
    down.shutdown()


def test_the_collector_ingest_log_is_private(tmp_path: Path) -> None:
    db = tmp_path / "collector" / "usage.duckdb"
    live = LiveCollector(db)
    try:
        exporter = SpoolingLogExporter(
            live.url, tmp_path / "spool", max_bytes=1 << 20, background=False
        )
        exporter.export(log_records([usage_event("u-modes-2")]))
        assert exporter.pending() == 0  # the collector took it
        exporter.shutdown()
        ingest = analytics_ingest_dir(db)
        assert mode(ingest) == 0o700
        segments = list(ingest.glob("*.log"))
        assert segments
        assert {mode(p) for p in segments} == {0o600}
        assert mode(db) == 0o600
        assert mode(db.parent) == 0o700  # made for it
    finally:
        live.stop()


def analytics_ingest_dir(db: Path) -> Path:
    from comptroller.collector._service import default_log_dir

    return default_log_dir(db)


def test_existing_loose_files_are_tightened_when_opened_and_it_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "comptroller.duckdb"
    analytics.connect(db).close()
    os.chmod(db, 0o644)
    sqlite = data / "profiles.sqlite"
    ProfileStore(f"sqlite:///{sqlite}").engine.dispose()
    os.chmod(sqlite, 0o664)
    ingest = data / "comptroller.duckdb.ingest"
    ingest.mkdir()
    os.chmod(ingest, 0o755)

    with caplog.at_level(logging.WARNING, logger="comptroller.files"):
        load_settings(data_dir=data).ensure_data_dir()
        analytics.connect(db).close()
        ProfileStore(f"sqlite:///{sqlite}").engine.dispose()
        from comptroller.collector._ingest_log import IngestLog

        IngestLog(ingest).close()
    assert (mode(data), mode(db), mode(sqlite), mode(ingest)) == (0o700, 0o600, 0o600, 0o700)
    tightened = " ".join(r.getMessage() for r in caplog.records)
    for path in (data, db, sqlite, ingest):
        assert f"tightened the mode of {path} " in tightened


def test_a_readable_master_key_is_refused_not_tightened(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    MasterKeySource(key_file, environ={}).load()
    os.chmod(key_file, 0o644)
    with pytest.raises(ComptrollerError, match="rotate the master key"):
        MasterKeySource(key_file, environ={}).load()
    assert mode(key_file) == 0o644
