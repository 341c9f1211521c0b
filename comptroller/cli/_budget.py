from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from comptroller.cli._app import AppContext, Ledger, in_existing_folder, ledger_options, pass_app

if TYPE_CHECKING:
    from comptroller.analytics import Anomaly, Forecast

_NOW_FORMATS = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]


@click.group(name="budget")
def budget() -> None:
    """Budget state and the CI budget gate."""


@budget.command(name="check")
@ledger_options
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
    type=click.DateTime(formats=_NOW_FORMATS),
    help="Judge the budget day of this instant (ISO; naive means UTC) [default: now].",
)
@click.option(
    "--anomalies",
    "with_anomalies",
    is_flag=True,
    help="Also list the keys spending far above their own baseline this hour (exit 4).",
)
@click.option(
    "--anomaly-min-usd",
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help="With --anomalies: least spend in the hour that can be anomalous.",
)
@pass_app
def check(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    fail_on: str,
    warn_ratio: float | None,
    junit: Path | None,
    as_json: bool,
    allow_unpriced: bool,
    now: dt.datetime | None,
    with_anomalies: bool,
    anomaly_min_usd: float,
) -> None:
    """Print today's budget state; exit 1 when a budget is over the --fail-on threshold.

    A key whose calls the control plane refused today (the worst-case reservation of a call
    did not fit in what was left of its cap) is REFUSED, with how many calls and the numbers
    of the last refusal, and fails with exit 3. It also fails (exit 1) when a budgeted key
    has unpriced calls (counted as `comptroller reprice` counts them: no price, or a
    reservation standing in for one), naming the keys and how many; --allow-unpriced only
    warns about those.

    With --anomalies it also lists the budget keys whose spend in the current local hour
    departs upward from their own baseline (the same hour of day over the last 7 days:
    median + 4 x 1.4826 x MAD and over twice the median; see docs/FORECAST.md), and exits 4
    when there are some and the budgets pass.

    \b
    Exit codes:
      0  within budget
      1  a budget over the --fail-on threshold, or with unpriced calls
      2  bad usage or unreadable data
      3  the control plane refused a budget's calls today (wins over 1)
      4  with --anomalies: spend anomalies this hour, budgets otherwise passing

    Under GitHub Actions (GITHUB_ACTIONS=true) it also prints ::warning/::error
    annotations and appends a Markdown summary to $GITHUB_STEP_SUMMARY.

    \b
    Example (CI, after the eval suite ran with the embedded sink):
      comptroller budget check --db .comptroller/comptroller.duckdb --fail-on warn --junit budget.xml
    """
    from comptroller.analytics import (
        AnomalyRule,
        budgets_table,
        check_budgets,
        gate_json,
        junit_xml,
        reader_from_settings,
        report_to_github,
        spend_anomalies,
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
            attribution_budgets=settings.control.attribution_budgets,
        )
        anomalies = (
            spend_anomalies(
                reader,
                now=now,
                timezone=settings.timezone,
                rule=AnomalyRule(min_usd=anomaly_min_usd),
            )
            if with_anomalies
            else None
        )
    finally:
        reader.close()
    if junit is not None:
        junit.write_text(junit_xml(result), encoding="utf-8")
    annotations = report_to_github(result)
    if as_json:
        if anomalies is None:
            click.echo(gate_json(result), nl=False)
        else:
            document = json.loads(gate_json(result))
            document["anomalies"] = [_anomaly_json(a) for a in anomalies]
            click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        click.echo(budgets_table(result), nl=False)
        click.echo(result.summary())
        for line in annotations:
            click.echo(line)
        if anomalies is not None:
            click.echo(_anomalies_text(anomalies), nl=False)
    if not result.passed:
        error = FindingError(result.failure_message())
        error.exit_code = result.exit_code  # 3 for refused calls, else 1
        raise error
    if anomalies:
        keys = ", ".join("/".join(a.key) for a in anomalies)
        error = FindingError(
            f"{len(anomalies)} budget key{'s' if len(anomalies) != 1 else ''} spending far "
            f"above their baseline this hour: {keys}"
        )
        error.exit_code = 4
        raise error


def _anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "tenant": anomaly.tenant,
        "context": anomaly.context,
        "purpose": anomaly.purpose,
        "hour": anomaly.hour.isoformat(),
        "calls": anomaly.calls,
        "spent_usd": str(anomaly.spent_usd),
        "median_usd": str(anomaly.median_usd),
        "mad_usd": str(anomaly.mad_usd),
        "threshold_usd": str(anomaly.threshold_usd),
        "ratio": anomaly.ratio,
        "history_days": anomaly.history_days,
    }


def _anomalies_text(anomalies: list[Anomaly]) -> str:
    if not anomalies:
        return "no spend anomalies this hour\n"
    import pyarrow as pa

    from comptroller.analytics import render_result
    from comptroller.money import usd_column

    # Each key's spend is read against its baseline: one precision for the three columns.
    money = usd_column([v for a in anomalies for v in (a.spent_usd, a.median_usd, a.threshold_usd)])
    rows = [
        {
            "tenant": a.tenant or "-",
            "context": a.context or "-",
            "purpose": a.purpose or "-",
            "hour": a.hour.strftime("%Y-%m-%d %H:00"),
            "spent_usd": money[3 * i],
            "usual_usd": money[3 * i + 1],
            "threshold_usd": money[3 * i + 2],
            "times_usual": "-" if a.ratio is None else f"{a.ratio:.1f}x",
            "days": str(a.history_days),
        }
        for i, a in enumerate(anomalies)
    ]
    title = f"Spend anomalies this hour ({len(anomalies)}):\n"
    return title + render_result(pa.Table.from_pylist(rows), "table")


@budget.command(name="forecast")
@ledger_options
@click.option(
    "--by",
    type=click.Choice(["key", "purpose"]),
    default="key",
    show_default=True,
    help="One line per budget key (tenant, context, purpose) or per purpose.",
)
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=7,
    show_default=True,
    help="Days of history the hour-of-day profile and the daily average use.",
)
@click.option("--tenant", help="Only this tenant.")
@click.option("--purpose", help="Only this purpose.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--now",
    type=click.DateTime(formats=_NOW_FORMATS),
    help="Project from this instant (ISO; naive means UTC) [default: now].",
)
@pass_app
def forecast_command(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    by: str,
    days: int,
    tenant: str | None,
    purpose: str | None,
    as_json: bool,
    now: dt.datetime | None,
) -> None:
    """Project today's spend to the end of the day and this month's to the end of the month.

    Day end: today's spend so far, plus the key's average spend over the last --days days
    at each hour of the day still to come (the burn-rate projection of `budget check` is
    shown beside it). Month end: the month's spend before today, plus today's day-end
    projection, plus each day left at the key's average daily spend. The numbers are those
    of the `forecast` panel (`comptroller sql` with its SQL gives the same); method and
    back-test: docs/FORECAST.md.

    \b
    Example:
      comptroller budget forecast --by purpose
    """
    from comptroller.analytics import forecast, reader_from_settings

    settings = app.settings()
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        found = forecast(
            reader,
            now=now,
            timezone=settings.timezone,
            by="purpose" if by == "purpose" else "key",
            days=days,
            tenant=tenant,
            purpose=purpose,
        )
    finally:
        reader.close()
    if as_json:
        click.echo(json.dumps([_forecast_json(f) for f in found], indent=2, ensure_ascii=False))
        return
    click.echo(_forecast_text(found), nl=False)


def _forecast_json(item: Forecast) -> dict[str, Any]:
    return {
        "tenant": item.tenant,
        "context": item.context,
        "purpose": item.purpose,
        "spent_usd": str(item.spent_usd),
        "day_end_usd": str(item.day_end_usd),
        "burn_usd": str(item.burn_usd),
        "cap_usd": None if item.cap_usd is None else str(item.cap_usd),
        "day_end_utilisation": item.day_end_utilisation,
        "month_to_date_usd": str(item.month_to_date_usd),
        "month_end_usd": str(item.month_end_usd),
        "daily_avg_usd": str(item.daily_avg_usd),
        "days_left": item.days_left,
        "history_days": item.history_days,
        "method": item.method,
    }


def _forecast_text(found: list[Forecast]) -> str:
    if not found:
        return "no spend to project\n"
    import pyarrow as pa

    from comptroller.analytics import render_result
    from comptroller.money import usd_column

    # Amounts of a day are read against each other, and so are those of the month.
    day = usd_column(v for f in found for v in (f.spent_usd, f.day_end_usd, f.burn_usd))
    cap = usd_column(f.cap_usd for f in found)
    month = usd_column(v for f in found for v in (f.month_to_date_usd, f.month_end_usd))
    rows = [
        {
            "tenant": f.tenant or "-",
            "context": f.context or "-",
            "purpose": f.purpose or "-",
            "spent_usd": day[3 * i],
            "day_end_usd": day[3 * i + 1],
            "burn_rate_usd": day[3 * i + 2],
            "cap_usd": cap[i],
            "over_cap": "OVER" if f.over_cap else "",
            "month_to_date_usd": month[2 * i],
            "month_end_usd": month[2 * i + 1],
        }
        for i, f in enumerate(found)
    ]
    days = found[0].history_days
    note = (
        f"day end: spend so far + the hour-of-day profile of the last {days} day"
        f"{'s' if days != 1 else ''}; month end: + {found[0].days_left} days at the daily average\n"
        if found[0].method == "hour_of_day"
        else "no history yet: day end at the burn rate since midnight\n"
    )
    return render_result(pa.Table.from_pylist(rows), "table") + note
