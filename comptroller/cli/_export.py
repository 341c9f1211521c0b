from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from comptroller.cli._app import AppContext, Ledger, in_existing_folder, ledger_options, pass_app


@click.command(name="export")
@click.option(
    "--focus",
    is_flag=True,
    required=True,
    help="Write the FinOps Open Cost and Usage Specification (FOCUS 1.2) column set.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    callback=in_existing_folder,
    help="File to write: .parquet or .csv.",
)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="First local day.")
@click.option(
    "--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="Last local day, inclusive."
)
@click.option(
    "--granularity",
    type=click.Choice(["day", "hour"]),
    default="day",
    show_default=True,
    help="Charge period: a local day (the rollup's time zone) or a UTC hour.",
)
@ledger_options
@pass_app
def export(
    app: AppContext,
    focus: bool,
    output: Path,
    since: dt.datetime | None,
    until: dt.datetime | None,
    granularity: str,
    db: Ledger | None,
    url: str | None,
) -> None:
    """Write the spend in the FOCUS column set, so it joins a company's cloud cost tools.

    One row per charge period, tenant, org, context, purpose and model: BilledCost is the
    ledger's cost (SUM(BilledCost) equals SUM(cost_usd) of llm_usage over the same days);
    unpriced calls get their own rows with null costs and x_Unpriced true, never 0. The
    mapping of every column is in docs/FOCUS.md.

    \b
    Examples:
      comptroller export --focus -o spend.parquet --since 2026-11-01 --until 2026-11-30
      comptroller export --focus -o spend.csv --granularity hour
    """
    from comptroller.analytics import focus_table, reader_from_settings, write_focus
    from comptroller.errors import UsageError

    del focus  # the one format today; required so that the command says what it writes
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(
            f"{output}: the FOCUS export writes .parquet or .csv files, "
            f"not {output.suffix or 'a file without an extension'}"
        )
    if since is not None and until is not None and until < since:
        raise UsageError(f"--until {until:%Y-%m-%d} is before --since {since:%Y-%m-%d}")
    settings = app.settings()
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        table = focus_table(
            reader,
            since=since.date() if since else None,
            until=until.date() if until else None,
            timezone=settings.timezone,
            granularity="hour" if granularity == "hour" else "day",
        )
    finally:
        reader.close()
    write_focus(table, output)
    click.echo(f"wrote {table.num_rows} FOCUS rows to {output}", err=True)
