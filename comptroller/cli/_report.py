from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from comptroller.cli._app import LEDGER, AppContext, Ledger, pass_app

if TYPE_CHECKING:
    from comptroller.analytics import AttributedSpend, CacheSaving, FeeLine

_BY = re.compile(r"user|session|feature|tag\.[a-z][a-z0-9_.\-]*")


@click.command(name="report")
@click.option(
    "--db",
    type=LEDGER,
    help="The ledger of this run: a DuckDB file (read-only) or a PostgreSQL URL "
    "(postgresql://user@host/db?schema=name) [default: the db setting, else the data "
    "directory's file].",
)
@click.option("--url", help="Read this run through a running collector instead.")
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="DuckDB file to compare against (e.g. the eval suite's run on main).",
)
@click.option(
    "--what-if",
    "what_if_text",
    metavar="QUESTION",
    help='Re-price past calls at another model: "purpose=scoring model=openai:gpt-4.1-nano" '
    "(filters: purpose, tenant, context, org, from=provider:model).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
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
@click.option(
    "--by",
    "by",
    metavar="WHO",
    help="Also show spend per end user, session, feature or tag: user, session, feature, "
    "tag.<name>, or 'all' (users, features and every tag).",
)
@pass_app
def report(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    baseline: Path | None,
    what_if_text: str | None,
    fmt: str,
    as_json: bool,
    fail_above_pct: float | None,
    fail_above_usd: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    tenant: str | None,
    by: str | None,
) -> None:
    """Spend per purpose and model against a baseline, what past calls would have cost on
    another model, what prompt caching saved, the non-token fees (web searches, …), and
    with --by the spend per end user, session, feature or tag.

    With --baseline: absolute and percentage change per purpose and model, and the total;
    exits 1 when the total rose above --fail-above-pct or --fail-above-usd. With --what-if:
    the selected calls' actual cost against their cost at the target model (same token
    counts, each call priced at its own time). Either way, and alone, the prompt-cache
    savings per purpose and model: the cached tokens priced as plain input, minus their
    cache-read price.

    \b
    Examples:
      comptroller report --db pr.duckdb --baseline main.duckdb --fail-above-pct 10 >> "$GITHUB_STEP_SUMMARY"
      comptroller report --what-if "purpose=scoring model=openai:gpt-4.1-nano" --since 2026-11-01
      comptroller report --since 2026-11-01   # prompt-cache savings and fees
      comptroller report --by user --since 2026-11-01   # and spend per end user
    """
    from decimal import InvalidOperation

    from comptroller.analytics import (
        cache_savings,
        compare_spend,
        fee_spend,
        open_reader,
        reader_from_settings,
        report_json,
        report_markdown,
        spend_by_attribution,
    )
    from comptroller.errors import FindingError, UsageError
    from comptroller.pricing import Pricer

    if as_json:
        fmt = "json"
    if baseline is not None and what_if_text is not None:
        raise UsageError("--baseline and --what-if are two reports: give one of them")
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
    if by is not None and by != "all" and not _BY.fullmatch(by):
        raise UsageError(f"--by must be user, session, feature, tag.<name> or all, got {by!r}")
    if baseline is None and (fail_above_pct is not None or limit_usd is not None):
        raise UsageError("--fail-above-pct and --fail-above-usd compare against --baseline")
    first = since.date() if since else None
    last = until.date() if until else None
    if what_if_text is not None:
        _what_if(app, db, url, what_if_text, first, last, tenant, as_json=fmt == "json")
        return
    settings = app.settings()
    pricer = Pricer.from_settings(settings)
    current = reader_from_settings(settings, db=db, url=url)
    zone = settings.timezone
    try:
        savings = cache_savings(
            current, pricer, since=first, until=last, tenant=tenant, timezone=zone
        )
        fees = fee_spend(current, since=first, until=last, tenant=tenant, timezone=zone)
        who = (
            spend_by_attribution(
                current,
                None if by == "all" else by,
                since=first,
                until=last,
                tenant=tenant,
                timezone=zone,
            )
            if by is not None
            else None
        )
        if baseline is None:
            _savings_only(savings, fees, who, by, as_json=fmt == "json")
            return
        with open_reader(db=baseline) as base:
            diff = compare_spend(current, base, since=first, until=last, tenant=tenant)
    finally:
        current.close()
    problems = diff.crossed(fail_above_pct=fail_above_pct, fail_above_usd=limit_usd)
    if fmt == "json":
        doc = json.loads(report_json(diff, problems=problems, savings=savings))
        doc.update(_extra_json(fees, who))
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        click.echo(report_markdown(diff, problems=problems, savings=savings), nl=False)
        click.echo(_extra_markdown(fees, who, by), nl=False)
    if problems:
        raise FindingError("; ".join(problems))


def _savings_only(
    savings: Sequence[CacheSaving],
    fees: Sequence[FeeLine],
    who: Sequence[AttributedSpend] | None,
    by: str | None,
    *,
    as_json: bool,
) -> None:
    from comptroller.analytics import savings_json, savings_markdown

    if as_json:
        doc = {"cache_savings": savings_json(savings), **_extra_json(fees, who)}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        click.echo(savings_markdown(savings), nl=False)
        click.echo(_extra_markdown(fees, who, by), nl=False)


def _extra_json(
    fees: Sequence[FeeLine], who: Sequence[AttributedSpend] | None
) -> dict[str, object]:
    from comptroller.analytics import attribution_json, fees_json

    doc: dict[str, object] = {"fees": fees_json(fees)}
    if who is not None:
        doc["by_attribution"] = attribution_json(who)
    return doc


def _extra_markdown(
    fees: Sequence[FeeLine], who: Sequence[AttributedSpend] | None, by: str | None
) -> str:
    from comptroller.analytics import attribution_markdown, fees_markdown

    parts = [fees_markdown(fees)]
    if who is not None:
        parts.append(attribution_markdown(who, None if by == "all" else by))
    return "".join("\n" + part for part in parts if part)


def _what_if(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    text: str,
    since: dt.date | None,
    until: dt.date | None,
    tenant: str | None,
    *,
    as_json: bool,
) -> None:
    from comptroller.analytics import (
        WhatIf,
        reader_from_settings,
        what_if,
        what_if_json,
        what_if_markdown,
    )
    from comptroller.errors import UsageError
    from comptroller.pricing import Pricer

    question = WhatIf.parse(text)
    if tenant is not None:
        if question.tenant not in (None, tenant):
            raise UsageError(f"--tenant {tenant} and --what-if tenant={question.tenant} differ")
        question = dataclasses.replace(question, tenant=tenant)
    settings = app.settings()
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        result = what_if(
            reader,
            question,
            Pricer.from_settings(settings),
            since=since,
            until=until,
            timezone=settings.timezone,
        )
    finally:
        reader.close()
    click.echo(what_if_json(result) if as_json else what_if_markdown(result), nl=False)
