from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import click

from comptroller.cli._app import AppContext, pass_app


@click.command(name="collect")
@click.option(
    "--db",
    metavar="FILE|URL",
    default=None,
    help="The ledger: a DuckDB file, or a PostgreSQL URL (postgresql://user@host/db; a "
    "schema of its own with ?schema=name) that several collectors land into [default: the "
    "db setting, else comptroller.duckdb in the data directory].",
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
    help="Bearer token clients must send [env COMPTROLLER_COLLECTOR_TOKEN]. On the command "
    "line `ps` shows it to every user: prefer --token-file or the environment.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File holding the bearer token (first line; mode 0600) [env "
    "COMPTROLLER_COLLECTOR_TOKEN_FILE].",
)
@click.option(
    "--collector-id",
    default=None,
    help="This collector's id in a PostgreSQL ledger: one per collector, kept across "
    "restarts [default: collector.collector_id, else one made and kept in the data "
    "directory].",
)
@pass_app
def collect(
    app: AppContext,
    db: str | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    no_grpc: bool,
    token: str | None,
    token_file: Path | None,
    collector_id: str | None,
) -> None:
    """Run the OTLP collector that lands telemetry in DuckDB or PostgreSQL.

    It listens for OTLP/HTTP (/v1/traces, /v1/logs, /v1/metrics) and OTLP/gRPC, serves
    /health, /api/query and /api/budget-state, and stops cleanly on Ctrl-C or SIGTERM after
    landing everything it accepted: one line on stderr says what it flushed, and Ctrl-C
    exits with 0 (SIGTERM ends the process by that signal, as service managers expect).

    With a PostgreSQL ledger (--db postgresql://…) any number of collectors land into one
    database, each under its own --collector-id; the ingest log stays in the data directory,
    and /api/query answers 501 (query PostgreSQL itself).

    Example: comptroller collect --db usage.duckdb --port 4318
    """
    from comptroller.collector import Limits, serve
    from comptroller.collector._service import pg_log_dir
    from comptroller.config._collector import (
        is_postgres_url,
        read_token_file,
        stable_collector_id,
    )
    from comptroller.pricing import Pricer

    settings = app.settings()
    section = settings.collector
    source = click.get_current_context().get_parameter_source("token")
    if token and source == click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "comptroller collect: warning: a --token on the command line is visible to other "
            "users (ps); use --token-file or COMPTROLLER_COLLECTOR_TOKEN",
            err=True,
        )
    if token_file is not None:
        if token and source == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give --token or --token-file, not both")
        token = read_token_file(token_file)  # named on the command line: wins over the env
    elif not token:
        token = section.bearer_token()
    ledger: Path | str
    log_dir = section.ingest_log_dir
    if db is not None and is_postgres_url(db):
        ledger = db
    elif db is not None:
        ledger = Path(db)
        if not ledger.parent.is_dir():
            # Checked here, not by the option's callback: a token given on the command line
            # is warned about first, whatever else is wrong with the command.
            raise click.BadParameter(f"folder {ledger.parent} does not exist", param_hint="'--db'")
        if ledger.is_dir():
            raise click.BadParameter(f"{ledger} is a folder: name a file", param_hint="'--db'")
    elif settings.db_url is not None:
        ledger = settings.db_url
    else:
        settings.ensure_data_dir()
        ledger = settings.db_file
    if isinstance(ledger, str):
        # The ingest log and the default collector id live in the data directory.
        settings.ensure_data_dir()
        collector_id = (
            collector_id or section.collector_id or stable_collector_id(settings.data_dir)
        )
        if log_dir is None:
            log_dir = pg_log_dir(settings.data_dir, collector_id)
    listen_host = host or section.host
    http_port = section.port if port is None else port
    grpc = None if no_grpc else (section.grpc_port if grpc_port is None else grpc_port)
    for name, number in (("--port", http_port), ("--grpc-port", grpc)):
        _check_free(listen_host, number, name)
    # Everything the collector creates (the DuckDB file, its WAL, recreated after every
    # checkpoint, spill files, the ingest log) holds billing data: private to this user.
    previous_umask = os.umask(0o077)
    _print_stop_line()
    try:
        serve(
            ledger,
            host=listen_host,
            port=http_port,
            grpc_port=grpc,
            token=token,
            timezone=settings.timezone,
            max_request_bytes=section.max_request_bytes,
            max_queue_rows=section.max_queue_rows,
            max_queue_mb=section.max_queue_mb,
            limits=Limits(
                max_future_s=section.max_future_s,
                max_attribute_bytes=section.max_attribute_bytes,
                max_span_attributes=section.max_span_attributes,
                max_record_attribute_bytes=section.max_record_attribute_bytes,
                max_record_attributes=section.max_record_attributes,
                max_spans=section.max_spans_per_request,
                max_records=section.max_records_per_request,
                max_resource_fanout_bytes=section.max_resource_fanout_mb << 20,
            ),
            prices=Pricer.from_settings(settings),
            alerts=settings.alerts,
            attribution_budgets=settings.control.attribution_budgets,
            ingest_log_dir=log_dir,
            ingest_log_fsync=section.ingest_log_fsync,
            linger_s=section.linger_ms / 1000,
            landing_nice=section.landing_nice,
            native_decoder=section.native_decoder,
            checkpoint_mb=section.checkpoint_mb,
            row_group_size=section.row_group_size or None,
            duckdb_memory_mb=section.duckdb_memory_mb,
            query_timeout_s=section.query_timeout_s,
            query_max_rows=section.query_max_rows,
            query_concurrency=section.query_concurrency,
            query_queue=section.query_queue,
            query_max_body_bytes=section.query_max_body_bytes,
            collector_id=collector_id,
        )
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it caught once the collector has landed everything
        # and said so: a requested, clean stop (exit 0, as after SIGTERM under a service
        # manager), not an error.
        pass
    finally:
        os.umask(previous_umask)
        # The collector froze every object alive at its start out of the GC's reach; left
        # frozen, DuckDB's objects outlive the interpreter's teardown and nanobind prints
        # ~40 lines of "leaked instances" after the stop line.
        gc.unfreeze()


def _check_free(host: str, port: int | None, option: str) -> None:
    """Refuse a port another process holds before the database is opened (uvicorn would
    log its own error and exit 3 after the collector started)."""
    if not port:
        return
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise click.BadParameter(f"cannot listen on {host}: {exc}", param_hint="'--host'") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind(address)
        except OSError as exc:
            raise click.BadParameter(
                f"{host}:{port} is not free ({exc.strerror or exc}): stop what listens there "
                "or choose another port",
                param_hint=f"'{option}'",
            ) from None


def _print_stop_line() -> None:
    """Print the collector's stop summary (what it flushed) as one line on stderr."""
    stop_log = logging.getLogger("comptroller.collector.stop")
    for handler in list(stop_log.handlers):
        if isinstance(handler, _StopLine):  # a second run in one process: no duplicate line
            stop_log.removeHandler(handler)
    stop_log.addHandler(_StopLine())
    stop_log.setLevel(logging.INFO)
    stop_log.propagate = False


class _StopLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # sys.stderr as it is when the collector stops (click resolves it at each call).
        click.echo(f"comptroller collect: {record.getMessage()}", err=True)
