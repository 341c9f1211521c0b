from __future__ import annotations

from pathlib import Path

import click

from comptroller.cli._app import LEDGER, AppContext, Ledger, is_ledger_url, pass_app
from comptroller.errors import UsageError

_ROLES = ("platform", "org_admin", "domain_admin")


@click.command(name="tui")
@click.option(
    "--db",
    type=LEDGER,
    help="The ledger to read: a DuckDB file (read-only; through the collector while one "
    "writes it) or a PostgreSQL URL (postgresql://user@host/db?schema=name) [default: the "
    "db setting, else the data directory's file].",
)
@click.option(
    "--url",
    help="Read through a running collector instead, e.g. http://127.0.0.1:4318 "
    "[default: analytics.read_url].",
)
@click.option("--token", help="Bearer token of the collector [default: collector.token].")
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(min=0.1),
    help="Seconds between refreshes [default: tui.refresh_s].",
)
@click.option(
    "--operator",
    help="Enables profile rollback; the audit log records your proven identity (the OS user "
    "or an admin token's), whatever name is given here.",
)
@click.option("--role", type=click.Choice(_ROLES), help="The role you act in (with --operator).")
@click.option("--org", help="The org an org_admin administers.")
@click.option("--domain", help="The domain a domain_admin administers.")
@click.option(
    "--theme", type=click.Choice(["dark", "light"]), help="Colour theme [default: tui.theme]."
)
@pass_app
def tui(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    token: str | None,
    refresh_s: float | None,
    operator: str | None,
    role: str | None,
    org: str | None,
    domain: str | None,
    theme: str | None,
) -> None:
    """Open the terminal dashboard: spend, budgets, circuits, profiles, calls, alerts.

    Read-only unless started with --operator NAME --role ROLE; rollbacks then ask for a
    confirmation and a reason, and leave an audit entry.

    \b
    Examples:
      comptroller tui --db ./usage.duckdb --refresh 5
      comptroller tui --db postgresql://ops@db.internal/ledger
    """
    from comptroller.tui import AppOptions, ComptrollerApp, Operator, open_source, profile_admin

    if db is not None and url is not None:
        raise UsageError("give --db FILE or --url URL, not both")
    if (operator is None) != (role is None):
        raise UsageError("--operator NAME and --role ROLE go together (rollback needs both)")
    settings = app.settings()
    # The reader of `comptroller sql` and `budget check`: a file a collector holds is read
    # through that collector, found by itself (collector.host:port) at every refresh.
    pg_url = db if isinstance(db, str) and is_ledger_url(db) else None
    if db is None and url is None and not settings.analytics.read_url:
        pg_url = settings.db_url
    if pg_url is not None:
        from comptroller.tui._source import DuckDBSource

        source = DuckDBSource.open_pg(pg_url)
    else:
        source = open_source(
            db=Path(db) if db is not None else None, url=url, token=token, settings=settings
        )
    who: Operator | None = None
    admin = None
    if operator and role:
        from comptroller.cli._profiles import prove_actor

        # The name in the audit log is the proven identity (the OS user, or an admin
        # token's), never what --operator claims: the grant check is made for that identity.
        admin = profile_admin(settings)
        actor = prove_actor(
            admin.service,
            claimed=operator,
            role=role,
            actor_org=org,
            actor_domain=domain,
            token_env=None,
        )
        who = Operator(name=actor.name, role=actor.role, org=actor.org, domain=actor.domain)
    options = AppOptions(
        refresh_s=refresh_s or settings.tui.refresh_s,
        max_rows=settings.tui.max_rows,
        timezone=settings.timezone,
        theme=f"textual-{theme}" if theme else settings.tui.theme,
        export_dir=settings.tui.export_dir or Path.cwd(),
        keys=settings.tui.keys or None,
        panel_dirs=tuple(settings.analytics.panel_dirs),
    )
    try:
        ComptrollerApp(source, options=options, operator=who, admin=admin).run()
    finally:
        source.close()
