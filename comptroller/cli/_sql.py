from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from comptroller.cli._app import DB_HELP, LEDGER, AppContext, Ledger, in_existing_folder, pass_app

if TYPE_CHECKING:
    import pyarrow as pa

    from comptroller.analytics import Reader

_PROMPT = "comptroller> "
_MORE = "        ...> "


@click.command(name="sql")
@click.argument("query", required=False)
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
    help="Output format (Parquet needs --output or a pipe).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    callback=in_existing_folder,
    help="Write the result to FILE instead of stdout.",
)
@click.option("--db", type=LEDGER, help=DB_HELP)
@click.option(
    "--url",
    help="Read through a running collector, e.g. http://127.0.0.1:4318 [default: "
    "analytics.read_url].",
)
@pass_app
def sql(
    app: AppContext,
    query: str | None,
    fmt: str,
    output: Path | None,
    db: Ledger | None,
    url: str | None,
) -> None:
    """Run QUERY (one read-only statement) over the usage data.

    Without QUERY, statements are read from stdin: an interactive prompt on a terminal
    (end each statement with `;`, quit with Ctrl-D), else the whole input, statement by
    statement. While a collector writes the database, reads go through it (--url, or
    found on the configured collector port). A float that is not a number (`1/0`, `0/0`)
    is written as `Infinity`, `-Infinity` or `NaN` in every format (a string in JSON).

    \b
    Examples:
      comptroller sql "select purpose, sum(cost_usd) from llm_usage_daily group by 1"
      comptroller sql -f csv "from llm_usage limit 10" > usage.csv
      comptroller sql -f parquet -o spend.parquet "from llm_usage_daily"
      comptroller sql --url http://127.0.0.1:4318 "from budget_events"
      comptroller sql --db postgresql://ops@db.internal/ledger "from llm_usage_daily"
    """
    from comptroller.analytics import reader_from_settings

    settings = app.settings()
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        if query is not None:
            _run_one(reader, query, fmt, output)
        elif sys.stdin.isatty():
            _interactive(reader, fmt)
        else:
            for statement in _split(sys.stdin.read()):
                _run_one(reader, statement, fmt, output)
    finally:
        reader.close()


def _run_one(reader: Reader, query: str, fmt: str, output: Path | None) -> None:
    from comptroller.analytics import write_result

    table = reader.query(query)
    binary = None if sys.stdout.isatty() else sys.stdout.buffer
    write_result(table, fmt, text=sys.stdout, binary=binary, output=output)  # type: ignore[arg-type]
    _note_truncated(table)


def _note_truncated(table: pa.Table) -> None:
    from comptroller.analytics import truncated_at

    cap = truncated_at(table)
    if cap is not None:
        click.echo(
            f"note: {cap} of more than {cap} rows: the collector cuts answers at "
            "collector.query_max_rows; aggregate, filter or add a LIMIT",
            err=True,
        )


def _interactive(reader: Reader, fmt: str) -> None:
    from comptroller.analytics import AnalyticsError
    from comptroller.analytics import render_result as render

    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    shown = "table" if fmt == "parquet" else fmt
    buffer: list[str] = []
    while True:
        try:
            line = input(_MORE if buffer else _PROMPT)
        except EOFError:
            click.echo(err=True)
            return
        except KeyboardInterrupt:
            buffer.clear()
            click.echo(err=True)
            continue
        if not buffer and line.strip() in {"", ".quit", ".exit", "\\q"}:
            if line.strip():
                return
            continue
        buffer.append(line)
        if not line.rstrip().endswith(";"):
            continue
        text = "\n".join(buffer)
        buffer.clear()
        for statement in _split(text):
            try:
                table = reader.query(statement)
                click.echo(render(table, shown), nl=False)  # type: ignore[arg-type]
                _note_truncated(table)
            except AnalyticsError as exc:
                click.echo(f"error: {exc}", err=True)


def _split(text: str) -> list[str]:
    import duckdb

    from comptroller.analytics import QueryError

    try:
        return [str(s.query).strip() for s in duckdb.extract_statements(text)]
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip().splitlines()[0]) from exc
