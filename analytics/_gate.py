"""The CI budget gate: budget state judged against a threshold, reported for people and CI."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal, TypeAlias
from xml.etree import ElementTree as ET

import pyarrow as pa

from comptroller.analytics._budget import BudgetState, budget_state
from comptroller.analytics._output import render_table
from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import Reader

FailOn: TypeAlias = Literal["warn", "exceeded"]


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """What `budget check` found.

    Attributes:
        day: The budget day.
        fail_on: The threshold that fails the gate.
        budgets: Every capped key, most used first.
        failing: The keys at or over the threshold.
        unpriced_calls: Calls today whose cost is unknown (all keys, capped or not).
        unpriced_models: Their models, `provider:model`.
    """

    day: dt.date
    fail_on: FailOn
    warn_ratio: float
    budgets: tuple[BudgetState, ...]
    failing: tuple[BudgetState, ...]
    unpriced_calls: int
    unpriced_models: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """No key is at or over the threshold."""
        return not self.failing

    def summary(self) -> str:
        """One line: how many budgets, how many over which threshold, unpriced calls."""
        counts = {
            s: sum(1 for b in self.budgets if b.status == s) for s in ("exceeded", "warning", "ok")
        }
        text = (
            f"{len(self.budgets)} budget{'s' if len(self.budgets) != 1 else ''} on {self.day}: "
            f"{counts['exceeded']} exceeded, {counts['warning']} warning, {counts['ok']} ok"
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
        worst = self.failing[0]
        threshold = (
            "cap" if self.fail_on == "exceeded" else f"warning threshold ({self.warn_ratio:.0%})"
        )
        return (
            f"{len(self.failing)} budget{'s' if len(self.failing) != 1 else ''} at or over the "
            f"{threshold}; worst: {label(worst)} spent ${usd(worst.spent_usd)} of "
            f"${usd(worst.cap_usd)} ({worst.utilisation:.0%})"
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
            "budgets": [_jsonable(asdict(b)) for b in self.budgets],
        }


def check_budgets(
    reader: Reader,
    *,
    fail_on: FailOn = "exceeded",
    warn_ratio: float = 0.8,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
) -> GateResult:
    """Judge today's budget state against `fail_on`.

    `warn` fails on any key at or over `warn_ratio` of its cap; `exceeded` only on keys at
    or over their cap.
    """
    states = budget_state(reader, now=now, timezone=timezone, warn_ratio=warn_ratio)
    bad = {"exceeded"} if fail_on == "exceeded" else {"exceeded", "warning"}
    failing = tuple(s for s in states if s.status in bad)
    unpriced = run_panel(
        reader,
        builtin_panels()["unpriced_usage"],
        now=now,
        timezone=timezone,
        since="today",
        until="today",
    ).to_pylist()
    from comptroller.dashboards import Clock

    return GateResult(
        day=Clock.at(now, timezone).today,
        fail_on=fail_on,
        warn_ratio=warn_ratio,
        budgets=tuple(states),
        failing=failing,
        unpriced_calls=sum(int(r["unpriced_calls"]) for r in unpriced),
        unpriced_models=tuple(f"{r['provider']}:{r['model']}" for r in unpriced),
    )


def label(state: BudgetState) -> str:
    """`tenant/context/purpose`, with `-` for an absent part."""
    return "/".join(part or "-" for part in state.key)


def usd(value: Decimal | float) -> str:
    """Dollars with cents, more digits only where they matter (`0.0042`)."""
    amount = Decimal(str(value))
    if amount != 0 and abs(amount) < Decimal("0.01"):
        return f"{amount:.4f}"
    return f"{amount:,.2f}"


def budgets_table(result: GateResult) -> str:
    """The budget state as an aligned text table (for the terminal)."""
    rows = [
        {
            "tenant": b.tenant or "-",
            "context": b.context or "-",
            "purpose": b.purpose or "-",
            "spent_usd": usd(b.spent_usd),
            "cap_usd": usd(b.cap_usd),
            "used": f"{b.utilisation:.0%}",
            "burn_usd_h": usd(b.burn_usd_per_hour),
            "projected_usd": usd(b.projected_usd),
            "status": b.status.upper() if b.status != "ok" else "ok",
            "unpriced": _unpriced(b),
        }
        for b in result.budgets
    ]
    if not rows:
        return f"no budget with a cap has usage on {result.day}\n"
    return render_table(pa.Table.from_pylist(rows))


def github_annotations(result: GateResult) -> list[str]:
    """GitHub Actions workflow commands: `::error` for failing keys, `::warning` for others
    in warning, and a warning for unpriced usage."""
    lines: list[str] = []
    for b in result.budgets:
        if b.status == "ok":
            continue
        level = "error" if b in result.failing else "warning"
        title = "Budget exceeded" if b.status == "exceeded" else "Budget warning"
        message = (
            f"{label(b)} spent ${usd(b.spent_usd)} of ${usd(b.cap_usd)} "
            f"({b.utilisation:.0%}) on {b.day}; projected ${usd(b.projected_usd)} by end of day"
        )
        lines.append(f"::{level} title={_escape_property(title)}::{_escape_data(message)}")
    if result.unpriced_calls:
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
        for b in result.budgets:
            status = {"exceeded": "🔴 exceeded", "warning": "🟠 warning"}.get(b.status, "🟢 ok")
            out.append(
                f"| {_md(b.tenant)} | {_md(b.context)} | {_md(b.purpose)} | ${usd(b.spent_usd)} "
                f"| ${usd(b.cap_usd)} | {b.utilisation:.0%} | ${usd(b.projected_usd)} "
                f"| {status} | {_md(_unpriced(b))} |"
            )
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
        detail = (
            f"spent ${usd(b.spent_usd)} of ${usd(b.cap_usd)} ({b.utilisation:.1%}), "
            f"projected ${usd(b.projected_usd)}, status {b.status}"
            + (
                f", {b.unpriced_calls} unpriced calls ({', '.join(b.unpriced_models)})"
                if b.unpriced_calls
                else ""
            )
        )
        if b in result.failing:
            failure = ET.SubElement(
                case, "failure", {"type": f"budget.{b.status}", "message": detail}
            )
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


def _unpriced(b: BudgetState) -> str:
    if not b.unpriced_calls:
        return ""
    return f"{b.unpriced_calls} ({', '.join(b.unpriced_models)})"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _md(text: str) -> str:
    return (text or "-").replace("|", "\\|")


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
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
