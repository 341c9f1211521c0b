"""Run a collector process: OTLP/HTTP (uvicorn) and OTLP/gRPC over one `Collector`.

SIGTERM and Ctrl-C stop accepting, land everything already accepted, checkpoint and exit.
A kill -9 loses nothing acknowledged either: the next start replays the ingest log.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import uvicorn

from comptroller.collector._grpc import start_grpc
from comptroller.collector._normalise import Limits
from comptroller.collector._pipeline import MAX_QUEUE_MB
from comptroller.collector._server import create_app
from comptroller.collector._service import ROW_GROUP_SIZE, Collector, check_bind
from comptroller.config import AlertSettings, AttributionBudget
from comptroller.pricing import Pricer


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[int], None],
        on_stop: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_stop = on_stop

    async def shutdown(self, sockets: Any = None) -> None:
        # Flush before uvicorn re-raises SIGTERM/SIGINT to end the process.
        await super().shutdown(sockets)
        self._on_stop()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            self._on_ready(port)


def _ledger_name(collector: Collector) -> str:
    ledger = collector.ledger_health()
    if ledger["kind"] == "postgresql":
        return f"{ledger['url']} as collector {ledger['collector_id']}"
    return str(ledger["path"])


def _tune_gc() -> None:
    """Keep the cyclic GC out of the request path of a collector process.

    Every request allocates tens of thousands of short-lived objects, so the default
    thresholds run a full collection — a walk over every object of the process, the price
    tables and the loaded libraries included — every few requests, and each one stalls a
    request by tens of milliseconds (p99 at half load: 86 ms with, 39 ms without, when
    nothing lands). What exists after start-up lives as long as the process: frozen, the GC
    never walks it again; the rare cycles of request garbage are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _release_arrow_memory() -> None:
    """Arrow buffers of a collector process come from the C library's allocator.

    pyarrow's default pool (mimalloc) keeps freed pages for reuse; with a request's columns
    allocated by one thread and freed by another after landing, the process held 25–40 MB
    more at its peak (HWM 515–528 against 489–490 MB, `bench/bench_ingest.py`).
    """
    pa.set_memory_pool(pa.system_memory_pool())


def serve(
    db_path: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 4318,
    grpc_port: int | None = 4317,
    token: str | None = None,
    timezone: str = "UTC",
    max_request_bytes: int = 16 * 1024 * 1024,
    max_queue_rows: int = 50_000,
    max_queue_mb: int = MAX_QUEUE_MB,
    limits: Limits | None = None,
    on_ready: Callable[[int, int | None], None] | None = None,
    prices: Pricer | None = None,
    alerts: AlertSettings | None = None,
    attribution_budgets: Sequence[AttributionBudget] = (),
    ingest_log_dir: Path | None = None,
    ingest_log_fsync: bool = False,
    linger_s: float = 0.005,
    landing_nice: int = 10,
    native_decoder: bool = True,
    checkpoint_mb: int = 128,
    duckdb_memory_mb: int = 128,
    row_group_size: int | None = ROW_GROUP_SIZE,
    query_timeout_s: float = 30.0,
    query_max_rows: int = 100_000,
    query_concurrency: int = 2,
    query_queue: int = 16,
    query_max_body_bytes: int = 1 << 20,
    collector_id: str | None = None,
) -> None:
    """Serve until SIGTERM / Ctrl-C, then flush and close.

    Args:
        db_path: The DuckDB file the collector owns, or a PostgreSQL ledger's URL
            (`postgresql://…`, which needs `collector_id` and `ingest_log_dir`).
        host: Interface to listen on (anything but loopback needs `token`).
        port: OTLP/HTTP port (0: any free port).
        grpc_port: OTLP/gRPC port, None to serve no gRPC (0: any free port).
        token: Bearer token clients must send.
        timezone: Time zone of the daily rollup.
        max_request_bytes: Largest request body (after inflating).
        max_queue_rows: Rows waiting for landing before clients get 429.
        max_queue_mb: Arrow memory (MiB) waiting for landing before clients get 429.
        limits: Per-span and per-record limits.
        on_ready: Called with the bound HTTP and gRPC ports once both listen.
        prices: Prices usage derived from third-party GenAI spans (the CLI passes
            `Pricer.from_settings(settings)`: genai-prices plus the configured fallback prices).
        alerts: Budget warnings and the webhooks told of alerts (`[alerts]`).
        attribution_budgets: Budgets by attribution, whose state `/api/budget-state` serves
            and whose crossings are recorded (`[[control.attribution_budgets]]`).
        ingest_log_dir: Where accepted requests are logged (default: beside the database).
        ingest_log_fsync: Flush each logged request to the device.
        linger_s: How long the writer gathers requests into one transaction.
        landing_nice: How much lower landing runs than receiving (Linux nice increment).
        native_decoder: Decode protobuf trace exports with the C extension when built.
        checkpoint_mb: DuckDB's WAL size that triggers a checkpoint.
        duckdb_memory_mb: DuckDB's memory limit.
        row_group_size: Rows per row group the collector writes (None: DuckDB's default).
        query_timeout_s: Time limit of one `/api/query` or budget-state statement.
        query_max_rows: Most rows one `/api/query` answer holds.
        query_concurrency: `/api/query` statements that run at once.
        query_queue: `/api/query` requests that may wait for a slot (beyond: 429).
        query_max_body_bytes: Largest `/api/query` request body (beyond: 413).
        collector_id: This collector's id in a PostgreSQL ledger.

    Raises:
        ConfigError: No token for a non-loopback host, the database cannot be opened, or
            (PostgreSQL) another running collector holds `collector_id`.
    """
    check_bind(host, token)
    collector = Collector(
        db_path,
        timezone=timezone,
        token=token,
        limits=limits,
        max_queue_rows=max_queue_rows,
        max_queue_mb=max_queue_mb,
        max_request_bytes=max_request_bytes,
        prices=prices,
        alerts=alerts,
        attribution_budgets=attribution_budgets,
        ingest_log_dir=ingest_log_dir,
        ingest_log_fsync=ingest_log_fsync,
        linger_s=linger_s,
        landing_nice=landing_nice,
        native_decoder=native_decoder,
        checkpoint_mb=checkpoint_mb,
        duckdb_memory_mb=duckdb_memory_mb,
        row_group_size=row_group_size,
        query_timeout_s=query_timeout_s,
        query_max_rows=query_max_rows,
        query_concurrency=query_concurrency,
        query_queue=query_queue,
        query_max_body_bytes=query_max_body_bytes,
        collector_id=collector_id,
    )
    _tune_gc()
    _release_arrow_memory()
    grpc_server: Any = None
    grpc_bound: int | None = None

    def stop() -> None:
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait()
        collector.close()

    try:
        if grpc_port is not None:
            grpc_server, grpc_bound = start_grpc(collector, host, grpc_port)
        app = create_app(collector)

        def ready(http_port: int) -> None:
            if on_ready is not None:
                on_ready(http_port, grpc_bound)
            else:
                grpc_note = f", OTLP/gRPC on {host}:{grpc_bound}" if grpc_bound else ""
                print(
                    f"comptroller collector: OTLP/HTTP on http://{host}:{http_port}{grpc_note}, "
                    f"landing into {_ledger_name(collector)}"
                    + (
                        f" (replayed {collector.replayed} requests from the ingest log)"
                        if collector.replayed
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            lifespan="on",
            timeout_graceful_shutdown=20,
        )
        _Server(config, ready, stop).run()
    finally:
        stop()
