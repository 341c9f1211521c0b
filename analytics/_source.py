"""Which reader a command uses: `--db FILE`, `--url URL`, the configured collector or file."""

from __future__ import annotations

from pathlib import Path

from comptroller.analytics._errors import ReaderUnavailable
from comptroller.analytics._reader import DuckDBReader, HttpReader, open_reader
from comptroller.config import Settings
from comptroller.errors import UsageError


def reader_from_settings(
    settings: Settings, *, db: Path | None = None, url: str | None = None
) -> DuckDBReader | HttpReader:
    """Open the reader a command should use.

    Order: `url` > `db` > `analytics.read_url` > the data directory's DuckDB file. A file
    that does not exist yet is created (empty, migrated) so that SQL over a fresh
    installation works. A file locked by a collector is read through that collector when
    it listens on the configured `collector.host:port`.

    Raises:
        UsageError: Both `db` and `url`.
        ConfigError: The data directory is unusable.
        ReaderUnavailable: The file is locked and no collector answers, or the URL is wrong.
    """
    if db is not None and url is not None:
        raise UsageError("give --db FILE or --url URL, not both")
    token = settings.collector.bearer_token()
    if url is not None:
        return HttpReader(url, token=token)
    if db is None and settings.analytics.read_url:
        return HttpReader(settings.analytics.read_url, token=token)
    if db is None:
        settings.ensure_data_dir()
    path = db if db is not None else settings.db_file
    if db is None and not path.exists():
        from comptroller.analytics._schema import connect

        connect(path).close()
    try:
        return open_reader(db=path)
    except ReaderUnavailable as exc:
        if "lock" not in str(exc).lower():
            raise
        fallback = _collector_url(settings)
        reader = HttpReader(fallback, token=token, timeout=10)
        try:
            reader.query("SELECT 1")
        except ReaderUnavailable:
            reader.close()
            raise exc from None
        return reader


def _collector_url(settings: Settings) -> str:
    host = settings.collector.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.collector.port}"
