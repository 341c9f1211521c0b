from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from comptroller.cli._app import LEDGER, AppContext, Ledger, is_ledger_url, pass_app


@click.command(name="reprice")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="First local day to reprice [default: every row].",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Only this model (`model` or `provider:model`); repeat for several.",
)
@click.option(
    "--db",
    type=LEDGER,
    help="DuckDB file (no collector may be writing it) or PostgreSQL ledger URL "
    "(postgresql://owner@host/db?schema=name: as the ledger's owner; collectors may keep "
    "landing) [default: the db setting, else the data directory's file].",
)
@click.option("--dry-run", is_flag=True, help="Report the new totals, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def reprice(
    app: AppContext,
    since: dt.datetime | None,
    models: tuple[str, ...],
    db: Ledger | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Recompute the cost of past usage rows after prices change, and the daily rollup.

    Prices come from the installed genai-prices, then the fallback registry
    (`[control.prices."provider:model"]`); models known to neither stay unpriced. Price
    overrides (`[[control.price_overrides]]`: negotiated discounts or prices) apply on top,
    by each row's UTC day and org (price source `override:<id>…`). Rows
    priced by the provider keep their cost; the control plane's estimated rows are repriced
    from their token counts (one charged its reservation keeps it until a price is known).
    Each changed row records when, its cost and price source before, and the price version
    (columns repriced_at, repriced_from_usd, repriced_from_source, price_version). Prints
    the old and new totals per model; unpriced calls are counted as `budget check` counts
    them. A PostgreSQL ledger (`--db postgresql://…`) is repriced in one transaction, as its
    owner (a reader bound by row-level security may not); its collectors may keep landing:
    the rollups of the days repriced are recomputed under a lock their landings wait for.

    \b
    Examples:
      uv lock --upgrade-package genai-prices && comptroller reprice --since 2026-11-01
      comptroller reprice --model ollama:llama3   # after adding its fallback price
      comptroller reprice --since 2026-07-01      # after adding a price override
      comptroller reprice --db 'postgresql://collector@db/ledger?schema=prod' --dry-run
    """
    from comptroller.analytics import connect
    from comptroller.analytics import reprice as run  # the command is named reprice too
    from comptroller.money import usd_column

    settings = app.settings()
    pg_url = db if isinstance(db, str) and is_ledger_url(db) else None
    if db is None:
        pg_url = settings.db_url
    options: dict[str, Any] = {
        "since": since.date() if since else None,
        "models": models,
        "fallback_prices": settings.control.prices,
        "price_overrides": settings.control.price_overrides,
        "dry_run": dry_run,
    }
    if pg_url is not None:
        from comptroller.analytics import connect_pg, reprice_pg

        pg = connect_pg(pg_url, migrate=False, create_schema=False)
        try:
            result = reprice_pg(pg, **options)
        finally:
            pg.close()
    else:
        if db is None:
            settings.ensure_data_dir()
        path = Path(db) if db is not None else settings.db_file
        if db is not None and not path.exists():
            raise click.BadParameter(f"file {path} does not exist", param_hint="'--db'")
        con = connect(path)
        try:
            result = run(con, **options)
        finally:
            con.close()
    if as_json:
        payload = {
            "dry_run": result.dry_run,
            "rows": result.rows,
            "changed": result.changed,
            "old_total_usd": str(result.old_total_usd),
            "new_total_usd": str(result.new_total_usd),
            "old_unpriced": result.old_unpriced,
            "new_unpriced": result.new_unpriced,
            "rollup_groups": result.rollup_groups,
            "repriced_at": result.repriced_at.isoformat(),
            "models": [
                {
                    "provider": line.provider,
                    "model": line.model,
                    "rows": line.rows,
                    "old_usd": str(line.old_usd),
                    "new_usd": str(line.new_usd),
                    "old_unpriced": line.old_unpriced,
                    "new_unpriced": line.new_unpriced,
                    "source": line.source,
                }
                for line in result.lines
            ],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    # Every amount printed shares one precision: each "before -> after" pair, and the lines
    # with their total, are read against each other ($0.0132 -> $0.0141, not $0.01 -> $0.01).
    amounts = usd_column(
        [a for line in result.lines for a in (line.old_usd, line.new_usd)]
        + [result.old_total_usd, result.new_total_usd]
    )
    for n, line in enumerate(result.lines):
        unpriced = (
            f"  unpriced {line.old_unpriced} -> {line.new_unpriced}"
            if line.old_unpriced or line.new_unpriced
            else ""
        )
        click.echo(
            f"{line.provider}:{line.model}  {line.rows} rows  {amounts[2 * n]} -> "
            f"{amounts[2 * n + 1]}  ({line.source}){unpriced}"
        )
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"total: {amounts[-2]} -> {amounts[-1]}; "
        f"unpriced calls {result.old_unpriced} -> {result.new_unpriced}; "
        f"{result.changed} of {result.rows} rows {verb}"
        + ("" if dry_run else f"; {result.rollup_groups} rollup groups recomputed")
    )
