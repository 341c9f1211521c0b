from __future__ import annotations

import json
from pathlib import Path

import click

from comptroller.cli._app import LEDGER, AppContext, in_existing_folder, pass_app

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


def _file_or_url(
    ctx: click.Context, param: click.Parameter, value: Path | str | None
) -> Path | str | None:
    if isinstance(value, Path):
        return in_existing_folder(ctx, param, value)
    return value


@db.command(name="migrate")
@click.option(
    "--db",
    "path",
    type=LEDGER,
    callback=_file_or_url,
    help="DuckDB file, or a PostgreSQL ledger's URL (as its owner) [default: the db "
    "setting, else the data directory's file].",
)
@pass_app
def migrate(app: AppContext, path: Path | str | None) -> None:
    """Create the database or bring its schema up to this comptroller's version.

    Databases are migrated on open anyway; this does it explicitly (e.g. before a deploy).
    A file written by a newer comptroller is refused, naming both versions. A PostgreSQL
    ledger is migrated as well (its row-level security included), under a lock that lets
    collectors start meanwhile.
    """
    from comptroller.analytics import SCHEMA_VERSION, connect, schema_version

    url = path if isinstance(path, str) else None
    if path is None:
        url = app.settings().db_url
    if url is not None:
        _migrate_pg(url)
        return
    target = _path(app, path if isinstance(path, Path) else None)
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


def _migrate_pg(url: str) -> None:
    from comptroller.analytics import (
        PG_SCHEMA_VERSION,
        connect_pg,
        migrate_pg,
        pg_schema_version,
        shown_url,
    )

    con = connect_pg(url, migrate=False)
    try:
        before = pg_schema_version(con)
        migrate_pg(con, where=shown_url(url))
    finally:
        con.close()
    if before == PG_SCHEMA_VERSION:
        click.echo(f"{shown_url(url)}: schema version {before}, current")
    elif before == 0:
        click.echo(f"{shown_url(url)}: created at schema version {PG_SCHEMA_VERSION}")
    else:
        click.echo(f"{shown_url(url)}: schema version {before} -> {PG_SCHEMA_VERSION}")


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


# --- a PostgreSQL ledger's readers (row-level security) ------------------------------------

_PG_OPTION = click.option(
    "--db",
    "url",
    help="The PostgreSQL ledger (postgresql://owner@host/db?schema=name), as its owner "
    "[default: the db setting].",
)


def _pg_url(app: AppContext, url: str | None) -> str:
    from comptroller.cli._app import is_ledger_url
    from comptroller.errors import UsageError

    chosen = url if url is not None else app.settings().db_url
    if chosen is None or not is_ledger_url(chosen):
        raise UsageError(
            "readers are PostgreSQL roles: give the ledger's URL, --db "
            "postgresql://owner@host/db (or set db to it); a DuckDB file has no roles"
        )
    return chosen


def _binding(org: str | None, tenant: str | None) -> str:
    if org is None and tenant is None:
        return "every row (all orgs and tenants)"
    parts = [f"org {org}" if org is not None else "", f"tenant {tenant}" if tenant else ""]
    return "the rows of " + ", ".join(p for p in parts if p)


@db.command(name="grant-reader")
@click.argument("role")
@click.option("--org", help="Only the rows of this org [default: every org].")
@click.option("--tenant", help="Only the rows of this tenant (domain) [default: every one].")
@_PG_OPTION
@pass_app
def grant_reader(
    app: AppContext, role: str, org: str | None, tenant: str | None, url: str | None
) -> None:
    """Let the PostgreSQL ROLE read a PostgreSQL ledger: every row (ops staff), or only those
    of an org (--org) or a tenant (--tenant), enforced by the database's row-level security
    whatever SQL the role runs.

    Run it as the role that owns the ledger (the collectors'). ROLE must exist (CREATE ROLE
    … LOGIN); a role may hold several bindings, and sees the rows of any of them.

    \b
    Examples:
      comptroller db grant-reader ops --db postgresql://collector@db/ledger
      comptroller db grant-reader acme_admins --org acme --db postgresql://collector@db/ledger
    """
    from comptroller.analytics import connect_pg
    from comptroller.analytics import grant_reader as grant

    target = _pg_url(app, url)
    con = connect_pg(target)
    try:
        added = grant(con, role, org=org, tenant=tenant)
    finally:
        con.close()
    what = _binding(org, tenant)
    click.echo(f"{role} reads {what}" + ("" if added else " (already granted)"))


@db.command(name="revoke-reader")
@click.argument("role")
@click.option("--org", help="The binding to this org.")
@click.option("--tenant", help="The binding to this tenant.")
@click.option("--all", "every", is_flag=True, help="Every binding of ROLE.")
@_PG_OPTION
@pass_app
def revoke_reader(
    app: AppContext,
    role: str,
    org: str | None,
    tenant: str | None,
    every: bool,
    url: str | None,
) -> None:
    """Remove ROLE's binding (to --org/--tenant, or the all-rows one without them; --all:
    every binding). A role left without a binding loses SELECT on the ledger."""
    from comptroller.analytics import connect_pg
    from comptroller.analytics import revoke_reader as revoke
    from comptroller.errors import UsageError

    if every and (org is not None or tenant is not None):
        raise UsageError("--all removes every binding: give it without --org and --tenant")
    con = connect_pg(_pg_url(app, url))
    try:
        removed = revoke(con, role, org=org, tenant=tenant, every=every)
    finally:
        con.close()
    if not removed:
        what = "no binding" if every else f"no binding to {_binding(org, tenant)}"
        click.echo(f"{role} had {what}: nothing revoked", err=True)
        return
    click.echo(f"{role}: {removed} binding{'s' if removed != 1 else ''} revoked")


@db.command(name="readers")
@_PG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def readers(app: AppContext, url: str | None, as_json: bool) -> None:
    """List the roles that may read a PostgreSQL ledger, and which rows."""
    from comptroller.analytics import connect_pg, reader_bindings

    con = connect_pg(_pg_url(app, url))
    try:
        found = reader_bindings(con)
    finally:
        con.close()
    if as_json:
        rows = [{"role": b.role, "org": b.org, "tenant": b.tenant} for b in found]
        click.echo(json.dumps(rows, indent=2))
        return
    if not found:
        click.echo("no reader: grant one with 'comptroller db grant-reader ROLE'")
    for binding in found:
        click.echo(f"{binding.role:<24} {_binding(binding.org, binding.tenant)}")
