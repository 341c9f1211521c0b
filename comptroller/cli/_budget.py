from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from comptroller.cli._app import AppContext, in_existing_folder, pass_app


@click.group(name="budget")
def budget() -> None:
    """Budget state and the CI budget gate."""


@budget.command(name="check")
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    help="DuckDB file to read (read-only) [default: the data directory's].",
)
@click.option("--url", help="Read through a running collector [default: analytics.read_url].")
@click.option(
    "--fail-on",
    type=click.Choice(["warn", "exceeded"]),
    default="exceeded",
    show_default=True,
    help="Fail (exit 1) when a budget reaches its warning threshold, or only its cap.",
)
@click.option(
    "--warn-ratio",
    type=click.FloatRange(0, 1, min_open=True),
    help="Warning threshold as a share of the cap [default: analytics.budget_warn_ratio].",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    callback=in_existing_folder,
    help="Also write a JUnit XML report to FILE (one test case per budget).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--allow-unpriced",
    is_flag=True,
    help="Pass even when a budgeted key has unpriced calls (their cost unknown) [default: fail].",
)
@click.option(
    "--now",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="Judge the budget day of this instant (ISO; naive means UTC) [default: now].",
)
@pass_app
def check(
    app: AppContext,
    db: Path | None,
    url: str | None,
    fail_on: str,
    warn_ratio: float | None,
    junit: Path | None,
    as_json: bool,
    allow_unpriced: bool,
    now: dt.datetime | None,
) -> None:
    """Print today's budget state; exit 1 when a budget is over the --fail-on threshold.

    A key whose calls the control plane refused today (the worst-case reservation of a call
    did not fit in what was left of its cap) is REFUSED, with how many calls and the numbers
    of the last refusal, and fails with exit 3. It also fails (exit 1) when a budgeted key
    has unpriced calls (counted as `comptroller reprice` counts them: no price, or a
    reservation standing in for one), naming the keys and how many; --allow-unpriced only
    warns about those.

    \b
    Exit codes:
      0  within budget
      1  a budget over the --fail-on threshold, or with unpriced calls
      2  bad usage or unreadable data
      3  the control plane refused a budget's calls today (wins over 1)

    Under GitHub Actions (GITHUB_ACTIONS=true) it also prints ::warning/::error
    annotations and appends a Markdown summary to $GITHUB_STEP_SUMMARY.

    \b
    Example (CI, after the eval suite ran with the embedded sink):
      comptroller budget check --db .comptroller/comptroller.duckdb --fail-on warn --junit budget.xml
    """
    from comptroller.analytics import (
        budgets_table,
        check_budgets,
        gate_json,
        junit_xml,
        reader_from_settings,
        report_to_github,
    )
    from comptroller.errors import FindingError

    settings = app.settings()
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        result = check_budgets(
            reader,
            fail_on="warn" if fail_on == "warn" else "exceeded",
            warn_ratio=warn_ratio
            if warn_ratio is not None
            else settings.analytics.budget_warn_ratio,
            now=now,
            timezone=settings.timezone,
            allow_unpriced=allow_unpriced,
        )
    finally:
        reader.close()
    if junit is not None:
        junit.write_text(junit_xml(result), encoding="utf-8")
    annotations = report_to_github(result)
    if as_json:
        click.echo(gate_json(result), nl=False)
    else:
        click.echo(budgets_table(result), nl=False)
        click.echo(result.summary())
        for line in annotations:
            click.echo(line)
    if not result.passed:
        error = FindingError(result.failure_message())
        error.exit_code = result.exit_code  # 3 for refused calls, else 1
        raise error
