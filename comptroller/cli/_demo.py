from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import click

from comptroller.cli._app import AppContext, pass_app


def _usd(value: Decimal) -> str:
    return f"${value:,.6f}"


def _table(title: str, rows: list[tuple[str, int, Decimal]], total: Decimal) -> list[str]:
    width = max([len(title), *(len(name) for name, _, _ in rows)])
    lines = [f"{title:<{width}}  {'rows':>6}  {'cost (USD)':>14}  share"]
    for name, count, cost in rows:
        share = (cost / total * 100) if total else Decimal(0)
        lines.append(f"{name:<{width}}  {count:>6}  {_usd(cost):>14}  {share:5.1f}%")
    return lines


@click.command(name="demo")
@click.option(
    "--calls",
    type=click.IntRange(1, 100_000),
    default=400,
    show_default=True,
    help="Application calls to make.",
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
    concurrency: int,
    seed: int,
    db_file: Path | None,
    open_tui: bool | None,
) -> None:
    """Run a multi-tenant workload on the embedded default and print the spend.

    A local OpenAI-compatible endpoint starts in-process; calls go through the control plane
    with langchain-openai over HTTP; spans and usage rows land in DuckDB. No server to start,
    no API key.
    """
    from comptroller.demo import run_demo

    settings = app.settings()
    interactive = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if interactive and (done % 20 == 0 or done == total):
            click.echo(f"\r  {done}/{total} calls", nl=done == total, err=True)

    click.echo(f"comptroller demo: {calls} calls, {concurrency} at a time …", err=True)
    report = run_demo(
        settings,
        db_file=db_file,
        calls=calls,
        concurrency=concurrency,
        seed=seed,
        progress=progress,
    )
    outcomes = ", ".join(
        f"{k} {v}" for k, v in sorted(report.outcomes.items(), key=lambda kv: -kv[1])
    )
    lines = [
        f"Ran {report.calls} calls in {report.seconds:.1f} s: {outcomes}.",
        f"Landed in {report.db_file}",
        "",
        *_table("purpose", report.spend_by_purpose, report.total_usd),
        "",
        *_table("tenant", report.spend_by_tenant, report.total_usd),
        "",
        f"total: {_usd(report.total_usd)}  (= select sum(cost_usd) from llm_usage)",
    ]
    if report.circuit_events:
        lines.append("")
        lines.append(
            "circuits: "
            + "; ".join(f"{m} {s}" + (f" ({r})" if r else "") for m, s, r in report.circuit_events)
        )
    lines.append(f"profile changes recorded: {report.profile_events}")
    db_opt = f" --db {report.db_file}" if db_file else ""
    lines += [
        "",
        "Next:",
        f'  comptroller sql{db_opt} "select purpose, sum(cost_usd) from llm_usage group by 1"',
        f"  comptroller tui{db_opt}",
        f"  comptroller budget check{db_opt}",
        f"  COMPTROLLER_CONTROL_PROFILE_STORE_URL={report.profile_store_url} "
        "comptroller profiles history agent_turn --org acme",
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
