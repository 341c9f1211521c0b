from __future__ import annotations

import json
from pathlib import Path

import click

from comptroller.cli._app import AppContext, in_existing_folder, pass_app

_TABLES = (
    "llm_usage",
    "llm_usage_daily",
    "spans",
    "circuit_events",
    "profile_events",
    "budget_events",
)


@click.group(name="db")
def db() -> None:
    """Database maintenance: migrations, information, compaction, the rollup."""


_DB_OPTION = click.option(
    "--db",
    "path",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=in_existing_folder,
    help="DuckDB file [default: the data directory's].",
)


def _path(app: AppContext, path: Path | None) -> Path:
    if path is not None:
        return path
    settings = app.settings()
    settings.ensure_data_dir()
    return settings.db_file


@db.command(name="migrate")
@_DB_OPTION
@pass_app
def migrate(app: AppContext, path: Path | None) -> None:
    """Create the database or bring its schema up to this comptroller's version.

    Databases are migrated on open anyway; this does it explicitly (e.g. before a deploy).
    A file written by a newer comptroller is refused, naming both versions.
    """
    from comptroller.analytics import SCHEMA_VERSION, connect, schema_version

    target = _path(app, path)
    before = 0
    if target.exists():
        con = connect(target, read_only=True)
        try:
            before = schema_version(con)
        finally:
            con.close()
    if before == SCHEMA_VERSION:
        click.echo(f"{target}: schema version {before}, current")
        return
    connect(target).close()  # applies the pending migrations
    if before == 0:
        click.echo(f"{target}: created at schema version {SCHEMA_VERSION}")
    else:
        click.echo(f"{target}: schema version {before} -> {SCHEMA_VERSION}")


@db.command(name="info")
@_DB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def info(app: AppContext, path: Path | None, as_json: bool) -> None:
    """Schema version, rollup time zone, row counts and time range of the database."""
    from comptroller.analytics import SCHEMA_VERSION, connect, rollup_timezone, schema_version

    target = _path(app, path)
    con = connect(target, read_only=True)
    try:
        details: dict[str, object] = {
            "path": str(target),
            "bytes": target.stat().st_size,
            "schema_version": schema_version(con),
            "supported_version": SCHEMA_VERSION,
            "rollup_timezone": rollup_timezone(con),
        }
        counts: dict[str, int] = {}
        for table in _TABLES:
            rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()
            counts[table] = int(rows[0][0])
        details["rows"] = counts
        first, last = con.execute(
            "SELECT min(ts)::VARCHAR, max(ts)::VARCHAR FROM llm_usage"
        ).fetchall()[0]
        details["usage_from"] = first
        details["usage_to"] = last
    finally:
        con.close()
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if key == "rows":
            for table, count in counts.items():
                click.echo(f"{'rows ' + table:<28} {count:,}")
        else:
            click.echo(f"{key:<28} {value if value is not None else '-'}")


@db.command(name="compact")
@_DB_OPTION
@pass_app
def compact(app: AppContext, path: Path | None) -> None:
    """Rewrite the database file compactly (stop the collector first).

    The collector writes small row groups, which land faster and compress less; this copies
    everything into DuckDB's large row groups and replaces the file once the copy is
    complete. Example: comptroller db compact --db usage.duckdb
    """
    from comptroller.analytics import compact as run

    done = run(_path(app, path))
    click.echo(
        f"{done.path}: {done.bytes_before / 1e6:,.1f} MB -> {done.bytes_after / 1e6:,.1f} MB"
    )


@db.command(name="rebuild-rollup")
@_DB_OPTION
@pass_app
def rebuild_rollup(app: AppContext, path: Path | None) -> None:
    """Recompute the daily rollup from llm_usage in the configured time zone.

    Needed after changing `timezone`; landing keeps the rollup current otherwise.
    """
    from comptroller.analytics import connect
    from comptroller.analytics import rebuild_rollup as rebuild

    settings = app.settings()
    target = _path(app, path)
    con = connect(target)
    try:
        rows = rebuild(con, timezone=settings.timezone)
    finally:
        con.close()
    click.echo(f"{target}: rollup rebuilt in {settings.timezone}: {rows:,} rows")
