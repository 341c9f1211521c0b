"""The CI budget gate: budget state judged against a threshold, reported for people and CI.

Besides the threshold, the gate fails when a budgeted key has unpriced calls today (their
cost is unknown, so the key's spend is a floor, not a figure; `allow_unpriced` downgrades
that to a warning), counted by the definition `comptroller reprice` uses
(analytics/_unpriced.py), and when the control plane refused a key's calls today (its
`rejected` budget events, read by the `budget_state` panel): such a key's spend stays under
its cap, yet its work did not run. A refusal is its own status (`refused`) and exit code
(`EXIT_REFUSED`), with the numbers of why.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias
from xml.etree import ElementTree as ET

import pyarrow as pa

from comptroller.analytics._budget import BudgetState, budget_state
from comptroller.analytics._output import render_table
from comptroller.analytics._reader import Reader
from comptroller.analytics._unpriced import unpriced_calls
from comptroller.money import usd_column

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget

FailOn: TypeAlias = Literal["warn", "exceeded"]

EXIT_OVER = 1
"""`budget check`'s exit code for a key over the threshold or with unpriced calls."""
EXIT_REFUSED = 3
"""`budget check`'s exit code when the control plane refused a key's calls today (it wins
over `EXIT_OVER`: work did not run, which a spend figure alone does not show)."""


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """What `budget check` found.

    Attributes:
        day: The budget day.
        fail_on: The threshold that fails the gate.
        budgets: Every capped key: those that refused calls first, then the most used.
        failing: The keys at or over the threshold, or refused.
        unpriced_calls: Calls today whose cost is unknown (all keys, capped or not).
        unpriced_models: Their models, `provider:model`.
        allow_unpriced: Unpriced calls of budgeted keys only warn.
    """

    day: dt.date
    fail_on: FailOn
    warn_ratio: float
    budgets: tuple[BudgetState, ...]
    failing: tuple[BudgetState, ...]
    unpriced_calls: int
    unpriced_models: tuple[str, ...] = field(default=())
    allow_unpriced: bool = False

    @property
    def refused(self) -> dict[tuple[str, str, str], int]:
        """Calls the control plane refused today, per budget key that refused any."""
        return {b.key: b.refused_calls for b in self.budgets if b.refused_calls}

    @property
    def unpriced_budgets(self) -> tuple[BudgetState, ...]:
        """The budgeted keys with unpriced calls today."""
        return tuple(b for b in self.budgets if b.unpriced_calls)

    @property
    def passed(self) -> bool:
        """No key is at or over the threshold or refused, and (unless allowed) no budgeted
        key has unpriced calls."""
        return not self.failing and (self.allow_unpriced or not self.unpriced_budgets)

    @property
    def exit_code(self) -> int:
        """0 passed, `EXIT_REFUSED` when a key refused calls, else `EXIT_OVER`."""
        if self.passed:
            return 0
        return EXIT_REFUSED if self.refused else EXIT_OVER

    def status(self, state: BudgetState) -> str:
        """`refused` for a key whose calls were refused today, else its spend's status."""
        return state.status

    def summary(self) -> str:
        """One line: how many budgets, how many over which threshold, unpriced calls."""
        counts = {
            s: sum(1 for b in self.budgets if self.status(b) == s)
            for s in ("refused", "exceeded", "warning", "ok")
        }
        text = (
            f"{len(self.budgets)} budget{'s' if len(self.budgets) != 1 else ''} on {self.day}: "
            + (f"{counts['refused']} refused, " if counts["refused"] else "")
            + f"{counts['exceeded']} exceeded, {counts['warning']} warning, {counts['ok']} ok"
        )
        if self.unpriced_calls:
            text += (
                f"; {self.unpriced_calls} unpriced call{'s' if self.unpriced_calls != 1 else ''} "
                f"not counted ({', '.join(self.unpriced_models)})"
            )
        return text

    def failure_message(self) -> str:
        """The one-line reason the gate failed (empty when it passed)."""
        if self.passed:
            return ""
        reasons: list[str] = []
        refused = [b for b in self.failing if b.refusals is not None]
        over = [b for b in self.failing if b.refusals is None]
        if refused:
            reasons.append(
                f"{len(refused)} budget{'s' if len(refused) != 1 else ''} refused calls: "
                + ", ".join(f"{label(b)} ({b.refusals.brief()})" for b in refused if b.refusals)
                + " (the worst-case reservation did not fit under the cap); raise the cap, "
                "lower max_tokens, or rerun on the next budget day"
            )
        if over:
            worst = over[0]
            threshold = (
                "cap"
                if self.fail_on == "exceeded"
                else f"warning threshold ({self.warn_ratio:.0%})"
            )
            reasons.append(
                f"{len(over)} budget{'s' if len(over) != 1 else ''} at or over the "
                f"{threshold}; worst: {label(worst)} {spent_of(worst)}"
            )
        if self.unpriced_budgets and not self.allow_unpriced:
            reasons.append(self.unpriced_message())
        return "; ".join(reasons)

    def unpriced_message(self) -> str:
        """Which budgeted keys have unpriced calls, how many, and what to do."""
        keys = self.unpriced_budgets
        return (
            f"{len(keys)} budget{'s' if len(keys) != 1 else ''} with unpriced calls, "
            "their spend unknown: "
            + ", ".join(f"{label(b)} {b.unpriced_calls} ({_unpriced(b)[1]})" for b in keys)
            + "; add their prices ([control.prices]) and run 'comptroller reprice', "
            "or pass --allow-unpriced"
        )

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict of the whole result."""
        return {
            "day": self.day.isoformat(),
            "fail_on": self.fail_on,
            "warn_ratio": self.warn_ratio,
            "passed": self.passed,
            "summary": self.summary(),
            "unpriced_calls": self.unpriced_calls,
            "unpriced_models": list(self.unpriced_models),
            "allow_unpriced": self.allow_unpriced,
            "unpriced_budgets": [
                {"key": label(b), "unpriced_calls": b.unpriced_calls} for b in self.unpriced_budgets
            ],
            "budgets": [
                {
                    **_jsonable_dict(asdict(b)),
                    "status": b.status,
                    "refused_calls": b.refused_calls,
                    "refused_why": b.refusals.why() if b.refusals else None,
                }
                for b in self.budgets
            ],
        }


def check_budgets(
    reader: Reader,
    *,
    fail_on: FailOn = "exceeded",
    warn_ratio: float = 0.8,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    allow_unpriced: bool = False,
    attribution_budgets: Sequence[AttributionBudget] = (),
) -> GateResult:
    """Judge today's budget state against `fail_on`.

    `warn` fails on any key at or over `warn_ratio` of its cap; `exceeded` only on keys at
    or over their cap. Either way a key whose calls were refused today fails, and so does a
    budgeted key with unpriced calls unless `allow_unpriced`.
    """
    from comptroller.dashboards import Clock

    clock = Clock.at(now, timezone)
    states = budget_state(
        reader,
        now=now,
        timezone=timezone,
        warn_ratio=warn_ratio,
        attribution_budgets=attribution_budgets,
    )
    unpriced = unpriced_calls(reader, since=clock.day_start, until=clock.day_end)
    bad = {"exceeded"} if fail_on == "exceeded" else {"exceeded", "warning"}
    failing = tuple(s for s in states if s.spend_status in bad or s.refusals is not None)
    models = sorted({u.name for u in unpriced})
    return GateResult(
        day=clock.today,
        fail_on=fail_on,
        warn_ratio=warn_ratio,
        budgets=tuple(states),
        failing=failing,
        unpriced_calls=sum(u.calls for u in unpriced),
        unpriced_models=tuple(models),
        allow_unpriced=allow_unpriced,
    )


def label(state: BudgetState) -> str:
    """`tenant/context/purpose` (then `[user=alice]` for a budget by attribution), with `-`
    for an absent part."""
    text = "/".join(part or "-" for part in state.key)
    return f"{text} [{state.attribute}]" if state.attribute else text


def spent_of(state: BudgetState) -> str:
    """`spent $X of $Y (N%)`, both amounts at one precision."""
    spent, cap = usd_column([state.spent_usd, state.cap_usd])
    return f"spent {spent} of {cap} ({state.utilisation:.0%})"


def budgets_table(result: GateResult) -> str:
    """The budget state as an aligned text table (for the terminal), then one line per key
    that refused calls saying why."""
    budgets = result.budgets
    if not budgets:
        return f"no budget with a cap has usage on {result.day}\n"
    # Each money column shares one precision, so no amount in it reads as zero.
    spent = usd_column(b.spent_usd for b in budgets)
    cap = usd_column(b.cap_usd for b in budgets)
    burn = usd_column(b.burn_usd_per_hour for b in budgets)
    projected = usd_column(b.projected_usd for b in budgets)
    rows = [
        {
            "tenant": b.tenant or "-",
            "context": b.context or "-",
            "purpose": b.purpose or "-",
            **({"attribute": b.attribute or "-"} if any(x.attribute for x in budgets) else {}),
            "spent_usd": spent[i],
            "cap_usd": cap[i],
            "used": f"{b.utilisation:.0%}",
            "burn_usd_h": burn[i],
            "projected_usd": projected[i],
            "status": b.status.upper() if b.status != "ok" else "ok",
            "refused": str(b.refused_calls) if b.refused_calls else "",
            "unpriced": _unpriced(b)[0],
        }
        for i, b in enumerate(budgets)
    ]
    why = [f"{label(b)}: {b.refusals.why()}\n" for b in budgets if b.refusals is not None]
    return render_table(pa.Table.from_pylist(rows)) + "".join(why)


def github_annotations(result: GateResult) -> list[str]:
    """GitHub Actions workflow commands: `::error` for failing keys, `::warning` for others
    in warning, and a warning for unpriced usage."""
    lines: list[str] = []
    for b in result.budgets:
        status = b.status
        if status == "ok":
            continue
        level = "error" if b in result.failing else "warning"
        title = {"refused": "Budget refused calls", "exceeded": "Budget exceeded"}.get(
            status, "Budget warning"
        )
        spent, cap, projected = usd_column([b.spent_usd, b.cap_usd, b.projected_usd])
        message = (
            f"{label(b)} spent {spent} of {cap} ({b.utilisation:.0%}) on {b.day}; "
            f"projected {projected} by end of day"
        )
        if b.refusals is not None:
            message += f"; {b.refusals.why()}"
        lines.append(f"::{level} title={_escape_property(title)}::{_escape_data(message)}")
    if result.unpriced_budgets and not result.allow_unpriced:
        lines.append(
            "::error title=Unpriced budgeted usage::" + _escape_data(result.unpriced_message())
        )
    elif result.unpriced_calls:
        lines.append(
            "::warning title=Unpriced usage::"
            + _escape_data(
                f"{result.unpriced_calls} calls have no price and are not in the spend "
                f"({', '.join(result.unpriced_models)}); add fallback prices and run "
                "'comptroller reprice'"
            )
        )
    return lines


def markdown_summary(result: GateResult) -> str:
    """A Markdown report for `$GITHUB_STEP_SUMMARY`."""
    icon = "✅" if result.passed else "❌"
    out = [f"## {icon} Budget check — {result.day}", "", result.summary(), ""]
    if result.budgets:
        out += [
            "| tenant | context | purpose | spent | cap | used | projected | status | unpriced |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        budgets = result.budgets
        spent = usd_column(b.spent_usd for b in budgets)
        cap = usd_column(b.cap_usd for b in budgets)
        projected = usd_column(b.projected_usd for b in budgets)
        for i, b in enumerate(budgets):
            status = {
                "refused": f"⛔ refused ({b.refused_calls})",
                "exceeded": "🔴 exceeded",
                "warning": "🟠 warning",
            }.get(b.status, "🟢 ok")
            out.append(
                f"| {_md(b.tenant)} | {_md(b.context)} | {_md(b.purpose)} | {spent[i]} "
                f"| {cap[i]} | {b.utilisation:.0%} | {projected[i]} "
                f"| {status} | {_md(_unpriced(b)[0])} |"
            )
        out.append("")
        out += [
            f"- ⛔ **{_md(label(b))}**: {_md(b.refusals.why())}"
            for b in budgets
            if b.refusals is not None
        ]
        if any(b.refusals is not None for b in budgets):
            out.append("")
    if not result.passed:
        out += [f"**{result.failure_message()}**", ""]
    return "\n".join(out) + "\n"


def junit_xml(result: GateResult) -> str:
    """A JUnit XML report: one test case per budget key, failed at or over the threshold."""
    suite = ET.Element(
        "testsuite",
        {
            "name": "comptroller budget check",
            "tests": str(len(result.budgets)),
            "failures": str(len(result.failing)),
            "errors": "0",
            "skipped": "0",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("day", result.day.isoformat()),
        ("fail_on", result.fail_on),
        ("warn_ratio", str(result.warn_ratio)),
        ("unpriced_calls", str(result.unpriced_calls)),
    ):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for b in result.budgets:
        case = ET.SubElement(
            suite, "testcase", {"classname": "comptroller.budget", "name": label(b), "time": "0"}
        )
        spent, cap, projected = usd_column([b.spent_usd, b.cap_usd, b.projected_usd])
        detail = (
            f"spent {spent} of {cap} ({b.utilisation:.1%}), "
            f"projected {projected}, status {b.status}"
            + (f"; {b.refusals.why()}" if b.refusals is not None else "")
            + (
                f", {b.unpriced_calls} unpriced calls ({', '.join(b.unpriced_models)})"
                if b.unpriced_calls
                else ""
            )
        )
        unpriced_fails = bool(b.unpriced_calls) and not result.allow_unpriced
        if b in result.failing or unpriced_fails:
            kind = b.status if b in result.failing else "unpriced"
            failure = ET.SubElement(case, "failure", {"type": f"budget.{kind}", "message": detail})
            failure.text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(suite)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
    )


def report_to_github(result: GateResult, env: Mapping[str, str] | None = None) -> list[str]:
    """Under GitHub Actions: append the Markdown summary to `$GITHUB_STEP_SUMMARY` and
    return the annotation lines to print. Elsewhere: nothing."""
    environ = os.environ if env is None else env
    if environ.get("GITHUB_ACTIONS") != "true":
        return []
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with Path(summary).open("a", encoding="utf-8") as fh:
            fh.write(markdown_summary(result))
    return github_annotations(result)


def _unpriced(b: BudgetState) -> tuple[str, str]:
    """(`N (models)` for a table cell, the models alone); empty without unpriced calls."""
    if not b.unpriced_calls:
        return "", ""
    models = ", ".join(b.unpriced_models)
    return f"{b.unpriced_calls} ({models})", models


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _md(text: str) -> str:
    return (text or "-").replace("|", "\\|")


def _jsonable_dict(value: Mapping[str, object]) -> dict[str, object]:
    return {str(k): _jsonable(v) for k, v in value.items()}


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, and a zero is "0.0000000000", not "0E-10"
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value == float("inf"):
        return None
    return value


def dumps(result: GateResult) -> str:
    """`result` as indented JSON."""
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
