"""Builders shared by the analytics and CLI suites: real DuckDB files filled through Arrow,
and a real collector serving one on an ephemeral port (the `live_collector` fixture of
tests/conftest.py).

Imported as `usage_db`: tests/ is on sys.path (pytest's rootdir-less conftest import).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from comptroller.analytics import apply_usage_batch, connect, insert_new_sql
from comptroller.analytics._tables import LLM_USAGE

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
"""A fixed "now" for tests that need one."""

_COUNTER = itertools.count()

_FILLED = (
    *("usage_id", "ts", "tenant", "org", "context", "purpose", "operation", "provider"),
    *("request_model", "response_model", "input_tokens", "output_tokens"),
    *("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd"),
    *("price_source", "estimated", "outcome", "budget_cap_usd", "source"),
)
"""The `llm_usage` columns these builders fill (the others land NULL or their default)."""

# Types come from the table's one declaration; amounts are built from Decimals here (the
# collector's batches carry them as decimal strings).
USAGE_SCHEMA = pa.schema(
    [
        (
            name,
            pa.decimal128(20, 10)
            if LLM_USAGE.column(name).check == "money"
            else LLM_USAGE.column(name).arrow,
        )
        for name in _FILLED
    ]
)


def usage_row(
    ts: dt.datetime,
    *,
    usage_id: str | None = None,
    tenant: str | None = "acme",
    org: str | None = "org1",
    context: str | None = "ctx",
    purpose: str | None = "chat",
    provider: str | None = "openai",
    model: str | None = "gpt-4o-mini",
    request_model: str | None = None,
    input_tokens: int = 100,
    output_tokens: int = 20,
    cost: str | Decimal | None = "0.01",
    cap: str | Decimal | None = None,
    outcome: str = "ok",
    estimated: bool = False,
    price_source: str | None = None,
) -> dict[str, Any]:
    """One llm_usage row; `model` is the response model (and the request model unless
    `request_model` is given)."""
    return {
        "usage_id": usage_id or f"u{next(_COUNTER)}",
        "ts": ts,
        "tenant": tenant,
        "org": org,
        "context": context,
        "purpose": purpose,
        "operation": "chat",
        "provider": provider,
        "request_model": model if request_model is None else request_model,
        "response_model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": None if cost is None else Decimal(str(cost)),
        "price_source": price_source or ("unpriced" if cost is None else "genai-prices@test"),
        "estimated": estimated,
        "outcome": outcome,
        "budget_cap_usd": None if cap is None else Decimal(str(cap)),
        "source": "comptroller",
    }


def usage_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=USAGE_SCHEMA)


def insert_usage(con: duckdb.DuckDBPyConnection, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Insert rows like the collector does: Arrow, skipping usage ids already landed."""
    table = usage_table(rows)
    if table.num_rows == 0:
        return table
    con.register("_incoming", table)
    try:
        con.execute(insert_new_sql("llm_usage", "_incoming", table)).fetchall()
    finally:
        con.unregister("_incoming")
    return table


def insert_returning(con: duckdb.DuckDBPyConnection, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Insert like a landing that keeps what it inserted: only the rows actually new."""
    table = usage_table(rows)
    if table.num_rows == 0:
        return table
    con.register("_incoming", table)
    try:
        sql = insert_new_sql("llm_usage", "_incoming", table)
        return con.sql(f"{sql} RETURNING *").to_arrow_table()
    finally:
        con.unregister("_incoming")


def fill(path: Path, rows: Iterable[Mapping[str, Any]], *, timezone: str = "UTC") -> Path:
    """Create (or add to) the database at `path` with `rows`, rolled up."""
    con = connect(path)
    try:
        apply_usage_batch(con, insert_usage(con, rows), timezone=timezone)
    finally:
        con.close()
    return path


class LiveCollector:
    """A real collector (the collector part's app) serving `db` on an ephemeral port."""

    def __init__(self, db: Path, **kwargs: Any) -> None:
        import threading
        import time

        import uvicorn

        from comptroller.collector import Collector, create_app

        class Quiet(uvicorn.Server):
            def install_signal_handlers(self) -> None:  # not the main thread
                return None

        self.collector = Collector(db, **kwargs)
        config = uvicorn.Config(
            create_app(self.collector), host="127.0.0.1", port=0, log_level="warning"
        )
        self.server = Quiet(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("collector did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def write(self, rows: Iterable[Mapping[str, Any]], *, timezone: str = "UTC") -> None:
        """Land rows as the collector's writer would: insert and roll up in one transaction."""
        cursor = self.collector.con.cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            table = insert_usage(cursor, rows)
            apply_usage_batch(cursor, table, timezone=timezone)
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.collector.close()


@contextlib.contextmanager
def held_by_another_process(db: Path) -> Iterator[None]:
    """While inside, another process holds `db` open for writing (DuckDB's file lock)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.communicate("", timeout=30)
