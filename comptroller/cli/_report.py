from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import click

from comptroller.cli._app import AppContext, pass_app


@click.command(name="report")
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    help="DuckDB file of this run (read-only) [default: the data directory's].",
)
@click.option("--url", help="Read this run through a running collector instead.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="DuckDB file to compare against (e.g. the eval suite's run on main).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
)
@click.option(
    "--fail-above-pct",
    type=click.FloatRange(min=0),
    help="Exit 1 when total spend rose more than N percent over the baseline.",
)
@click.option(
    "--fail-above-usd",
    type=str,
    help="Exit 1 when total spend rose more than X dollars over the baseline.",
)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="First local day.")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), help="Last local day.")
@click.option("--tenant", help="Only this tenant.")
@pass_app
def report(
    app: AppContext,
    db: Path | None,
    url: str | None,
    baseline: Path,
    fmt: str,
    fail_above_pct: float | None,
    fail_above_usd: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    tenant: str | None,
) -> None:
    """Spend per purpose and model against a baseline database: the cost diff of a change.

    Prints absolute and percentage change per purpose and model, and the total; exits 1
    when the total rose above --fail-above-pct or --fail-above-usd.

    \b
    Example (CI on a pull request):
      comptroller report --db pr.duckdb --baseline main.duckdb --fail-above-pct 10 >> "$GITHUB_STEP_SUMMARY"
    """
    from decimal import InvalidOperation

    from comptroller.analytics import (
        compare_spend,
        open_reader,
        reader_from_settings,
        report_json,
        report_markdown,
    )
    from comptroller.errors import FindingError, UsageError

    limit_usd: Decimal | None = None
    if fail_above_usd is not None:
        try:
            limit_usd = Decimal(fail_above_usd.lstrip("$"))
        except InvalidOperation:
            raise UsageError(
                f"--fail-above-usd must be an amount such as 1.50, got {fail_above_usd!r}"
            ) from None
        if limit_usd < 0:
            raise UsageError(f"--fail-above-usd must not be negative, got {fail_above_usd}")
    settings = app.settings()
    current = reader_from_settings(settings, db=db, url=url)
    try:
        with open_reader(db=baseline) as base:
            diff = compare_spend(
                current,
                base,
                since=since.date() if since else None,
                until=until.date() if until else None,
                tenant=tenant,
            )
    finally:
        current.close()
    problems = diff.crossed(fail_above_pct=fail_above_pct, fail_above_usd=limit_usd)
    click.echo(
        report_json(diff, problems=problems)
        if fmt == "json"
        else report_markdown(diff, problems=problems),
        nl=False,
    )
    if problems:
        raise FindingError("; ".join(problems))
