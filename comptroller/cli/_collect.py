from __future__ import annotations

from pathlib import Path

import click

from comptroller.cli._app import AppContext, pass_app


@click.command(name="collect")
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    help="DuckDB file [default: comptroller.duckdb in the data directory].",
)
@click.option(
    "--host", default=None, help="Interface to listen on [default: 127.0.0.1; others need a token]."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="OTLP/HTTP port [default: 4318]."
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="OTLP/gRPC port [default: 4317].",
)
@click.option("--no-grpc", is_flag=True, help="Serve no OTLP/gRPC.")
@click.option(
    "--token",
    envvar="COMPTROLLER_COLLECTOR_TOKEN",
    default=None,
    help="Bearer token clients must send [env COMPTROLLER_COLLECTOR_TOKEN].",
)
@pass_app
def collect(
    app: AppContext,
    db: Path | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    no_grpc: bool,
    token: str | None,
) -> None:
    """Run the OTLP collector that lands telemetry in DuckDB.

    It listens for OTLP/HTTP (/v1/traces, /v1/logs, /v1/metrics) and OTLP/gRPC, serves
    /health, /api/query and /api/budget-state, and stops cleanly on Ctrl-C or SIGTERM after
    landing everything it accepted.

    Example: comptroller collect --db usage.duckdb --port 4318
    """
    from comptroller.collector import Limits, serve
    from comptroller.pricing import Pricer

    settings = app.settings()
    section = settings.collector
    if db is None:
        settings.ensure_data_dir()
        db = settings.db_file
    serve(
        db,
        host=host or section.host,
        port=section.port if port is None else port,
        grpc_port=None if no_grpc else (section.grpc_port if grpc_port is None else grpc_port),
        token=token or section.token,
        timezone=settings.timezone,
        max_request_bytes=section.max_request_bytes,
        max_queue_rows=section.max_queue_rows,
        max_queue_mb=section.max_queue_mb,
        limits=Limits(
            max_future_s=section.max_future_s,
            max_attribute_bytes=section.max_attribute_bytes,
        ),
        prices=Pricer.from_settings(settings),
        ingest_log_dir=section.ingest_log_dir,
        ingest_log_fsync=section.ingest_log_fsync,
        linger_s=section.linger_ms / 1000,
        landing_nice=section.landing_nice,
        native_decoder=section.native_decoder,
        checkpoint_mb=section.checkpoint_mb,
        row_group_size=section.row_group_size or None,
        duckdb_memory_mb=section.duckdb_memory_mb,
    )
