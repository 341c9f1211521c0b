from __future__ import annotations

import shlex
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click

from comptroller.cli._app import AppContext, in_existing_folder, pass_app
from comptroller.money import usd, usd_column

if TYPE_CHECKING:
    from comptroller.demo import DemoReport


def _table(title: str, rows: list[tuple[str, int, Decimal]], total: Decimal) -> list[str]:
    width = max([len(title), *(len(name) for name, _, _ in rows)])
    # The rows and their total are read against each other: one precision for all of them.
    costs = usd_column([cost for _, _, cost in rows])
    cost_width = max([len("cost (USD)"), *(len(c) for c in costs)])
    # Rows of llm_usage are priced attempts: a call that retried or fell back has several.
    lines = [f"{title:<{width}}  {'attempts':>8}  {'cost (USD)':>{cost_width}}  share"]
    for (name, count, cost), text in zip(rows, costs, strict=True):
        share = (cost / total * 100) if total else Decimal(0)
        lines.append(f"{name:<{width}}  {count:>8}  {text:>{cost_width}}  {share:5.1f}%")
    return lines


def _total(report: DemoReport) -> str:
    # Read against the purpose table above it: the same precision.
    return usd_column([*(cost for _, _, cost in report.spend_by_purpose), report.total_usd])[-1]


def _story(report: DemoReport, tz: ZoneInfo) -> list[str]:
    """What happened, in simulated time: budgets hit, circuits, profile changes."""

    def at(ts: datetime) -> str:
        return ts.astimezone(tz).strftime("%a %H:%M")

    lines = ["What happened:"]
    for tenant, purpose, refused, days, cap in report.budget_refusals:
        lines.append(
            f"  budget   {tenant} {purpose}: {refused} calls refused (budget_exceeded) over "
            f"{days} day{'s' if days != 1 else ''}: its {usd(cap)} daily cap could not "
            "cover them"
        )
    by_model: dict[str, list[tuple[datetime, str, str]]] = {}
    for ts, model, state, reason in report.circuit_events:
        by_model.setdefault(model, []).append((ts, state, reason))
    for model, events in by_model.items():
        opened = [(ts, reason) for ts, state, reason in events if state == "opened"]
        closed = [ts for ts, state, _ in events if state == "closed"]
        if not opened:
            continue
        text = f"  circuit  {model} opened {at(opened[0][0])} ({opened[0][1]})"
        if len(opened) > 1:
            text += f", {len(opened) - 1} failed probe{'s' if len(opened) > 2 else ''}"
        text += f", closed {at(closed[-1])}" if closed else ", still open"
        lines.append(text)
    for ts, action, scope, purpose, version, reason in report.profile_events:
        if scope.startswith("global"):
            continue  # the platform's defaults, set at the start
        verb = "rolled back as" if action == "rolled_back" else "set"
        lines.append(f"  profile  {at(ts)} {scope} {purpose} {verb} v{version}: {reason}")
    return lines


def _hints(app: AppContext, report: DemoReport, db_file: Path | None) -> list[str]:
    """Commands to paste next; each names the same data directory and database."""
    base = ["uv", "run", "comptroller"]
    if app.config_file is not None:
        base += ["--config", str(app.config_file.resolve())]
    if app.data_dir is not None:
        base += ["--data-dir", str(app.data_dir.resolve())]
    db = ["--db", str(report.db_file.resolve())] if db_file is not None else []
    hints = [
        ([*base, "tui", *db], "spend trends, budgets, circuits, profile history"),
        (
            [*base, "profiles", "history", "reasoning", "--org", "acme"],
            "the switch off the failing model and its rollback",
        ),
        ([*base, "profiles", "show", "--org", "acme"], "what acme's admin has set now"),
        (
            [
                *base,
                "sql",
                *db,
                "select day, purpose, sum(cost_usd) from llm_usage_daily group by all order by all",
            ],
            "spend per day and purpose",
        ),
        (
            [*base, "sql", *db, "select ts, model, state, reason from circuit_events order by ts"],
            "the outage",
        ),
    ]
    # Comments line up unless a command is too long for it to read well.
    width = min(60, max(len(shlex.join(args)) for args, _ in hints))
    return [f"  {shlex.join(args):<{width}}  # {why}" for args, why in hints]


@click.command(name="demo")
@click.option(
    "--calls",
    type=click.IntRange(1, 100_000),
    default=800,
    show_default=True,
    help="Application calls to make.",
)
@click.option(
    "--days",
    type=click.IntRange(0, 30),
    default=2,
    show_default=True,
    help="Simulated whole days before today (today so far comes on top).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1_000),
    default=16,
    show_default=True,
    help="Calls in flight at once.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the workload.")
@click.option(
    "--db",
    "db_file",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=in_existing_folder,
    help="DuckDB file [default: comptroller.duckdb in the data directory].",
)
@click.option(
    "--tui/--no-tui",
    "open_tui",
    default=None,
    help="Open the dashboard afterwards [default: ask when interactive].",
)
@pass_app
def demo(
    app: AppContext,
    calls: int,
    days: int,
    concurrency: int,
    seed: int,
    db_file: Path | None,
    open_tui: bool | None,
) -> None:
    """Play simulated days of a multi-tenant workload on the embedded default and tell the story.

    A local Anthropic, Gemini and OpenAI endpoint start in-process, one chain of models per
    provider; calls go through the control plane with the providers' LangChain models over
    HTTP at simulated moments ending now; spans and usage rows land in DuckDB, profiles in the
    default profile store. A budget is hit, a circuit opens and closes, a profile is changed
    and rolled back. No server to start, no API key.
    """
    from comptroller.demo import run_demo

    settings = app.settings()
    interactive = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if interactive and (done % 20 == 0 or done == total):
            click.echo(f"\r  {done}/{total} calls", nl=done == total, err=True)

    span = f"{days} simulated day{'s' if days != 1 else ''} and today so far" if days else "today"
    click.echo(f"comptroller demo: {calls} calls over {span} …", err=True)
    report = run_demo(
        settings,
        db_file=db_file,
        calls=calls,
        days=days,
        concurrency=concurrency,
        seed=seed,
        progress=progress,
    )
    tz = ZoneInfo(settings.timezone)
    outcomes = ", ".join(
        f"{k} {v}" for k, v in sorted(report.outcomes.items(), key=lambda kv: -kv[1])
    )
    hours = (report.end - report.start).total_seconds() / 3600
    fresh = " (the previous demo's, started afresh)" if report.store_reset else ""
    lines = [
        f"Simulated {report.start.astimezone(tz):%Y-%m-%d %H:%M} to "
        f"{report.end.astimezone(tz):%Y-%m-%d %H:%M} {settings.timezone} ({hours:.0f} h) "
        f"in {report.seconds:.1f} s: {report.calls} calls, {outcomes}.",
        f"Calls in {report.db_file}",
        f"Profiles in {report.profile_store}{fresh}",
        "",
        *_story(report, tz),
        "",
        *_table("day", report.spend_by_day, report.total_usd),
        "",
        *_table("purpose", report.spend_by_purpose, report.total_usd),
        "",
        *_table("tenant", report.spend_by_tenant, report.total_usd),
        "",
        f"total: {_total(report)}  (= select sum(cost_usd) from llm_usage)",
        "",
        "Next (paste a line):",
        *_hints(app, report, db_file),
    ]
    if report.refused_today:
        lines += [
            "",
            "The CI budget gate, `uv run comptroller budget check`, fails on this data (exit 3): "
            f"{report.refused_today} calls were refused for budget today.",
        ]
    click.echo("\n".join(lines))
    if open_tui is None:
        open_tui = (
            sys.stdin.isatty()
            and sys.stdout.isatty()
            and click.confirm("Open the dashboard on this data now?", default=False, err=True)
        )
    if open_tui:
        ctx = click.get_current_context()
        from comptroller.cli._app import cli

        tui = cli.get_command(ctx, "tui")
        if tui is not None:
            ctx.invoke(tui, db=report.db_file)
