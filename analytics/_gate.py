"""The CI budget gate: budget state judged against a threshold, reported for people and CI.

Besides the threshold, the gate fails when a budgeted key has unpriced calls today (their
cost is unknown, so the key's spend is a floor, not a figure; `allow_unpriced` downgrades
that to a warning), counted by the definition `comptroller reprice` uses
(analytics/_unpriced.py), and when the control plane refused a key's calls today (its
`rejected` budget events): such a key's spend stays under its cap, yet its work did not run.
"""

from __future__ import annotations

import dataclasses
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
from comptroller.analytics._reader import Reader
from comptroller.analytics._unpriced import UnpricedCalls, unpriced_calls

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
        refused: Calls the control plane refused today, per budget key.
        allow_unpriced: Unpriced calls of budgeted keys only warn.
    """

    day: dt.date
    fail_on: FailOn
    warn_ratio: float
    budgets: tuple[BudgetState, ...]
    failing: tuple[BudgetState, ...]
    unpriced_calls: int
    unpriced_models: tuple[str, ...] = field(default=())
    refused: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    allow_unpriced: bool = False

    @property
    def unpriced_budgets(self) -> tuple[BudgetState, ...]:
        """The budgeted keys with unpriced calls today."""
        return tuple(b for b in self.budgets if b.unpriced_calls)

    @property
    def passed(self) -> bool:
        """No key is at or over the threshold or refused, and (unless allowed) no budgeted
        key has unpriced calls."""
        return not self.failing and (self.allow_unpriced or not self.unpriced_budgets)

    def status(self, state: BudgetState) -> str:
        """`refused` for a key whose calls were refused today, else the state's status."""
        return "refused" if self.refused.get(state.key) else state.status

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
        refused = [b for b in self.failing if self.refused.get(b.key)]
        over = [b for b in self.failing if not self.refused.get(b.key)]
        if refused:
            reasons.append(
                f"{len(refused)} budget{'s' if len(refused) != 1 else ''} refused calls: "
                + ", ".join(f"{label(b)} ({self.refused[b.key]})" for b in refused)
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
                f"{threshold}; worst: {label(worst)} spent ${usd(worst.spent_usd)} of "
                f"${usd(worst.cap_usd)} ({worst.utilisation:.0%})"
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
                    "status": self.status(b),
                    "refused_calls": self.refused.get(b.key, 0),
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
) -> GateResult:
    """Judge today's budget state against `fail_on`.

    `warn` fails on any key at or over `warn_ratio` of its cap; `exceeded` only on keys at
    or over their cap. Either way a key whose calls were refused today fails, and so does a
    budgeted key with unpriced calls unless `allow_unpriced`.
    """
    from comptroller.dashboards import Clock

    clock = Clock.at(now, timezone)
    states = budget_state(reader, now=now, timezone=timezone, warn_ratio=warn_ratio)
    unpriced = unpriced_calls(reader, since=clock.day_start, until=clock.day_end)
    refusals = _refusals(reader, clock.today, timezone)
    known = {s.key for s in states}
    states += [_refused_state(r, clock.today, warn_ratio) for r in refusals if r.key not in known]
    states = [_with_unpriced(s, unpriced) for s in states]
    refused = {r.key: r.calls for r in refusals}
    bad = {"exceeded"} if fail_on == "exceeded" else {"exceeded", "warning"}
    failing = tuple(s for s in states if s.status in bad or s.key in refused)
    models = sorted({u.name for u in unpriced})
    return GateResult(
        day=clock.today,
        fail_on=fail_on,
        warn_ratio=warn_ratio,
        budgets=tuple(states),
        failing=failing,
        unpriced_calls=sum(u.calls for u in unpriced),
        unpriced_models=tuple(models),
        refused=refused,
        allow_unpriced=allow_unpriced,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Refusal:
    key: tuple[str, str, str]
    calls: int
    cap_usd: Decimal
    spent_usd: Decimal
    last_ts: dt.datetime | None


def _refusals(reader: Reader, day: dt.date, timezone: str) -> list[_Refusal]:
    """The control plane's refusals of `day` per key (its `rejected` budget events)."""
    rows = reader.query(
        """
        SELECT coalesce(tenant, '') AS tenant, coalesce(context, '') AS context,
               coalesce(purpose, '') AS purpose, count(*) AS calls,
               arg_max(cap_usd, ts) AS cap_usd, arg_max(spent_usd, ts) AS spent_usd,
               max(ts) AS last_ts
        FROM budget_events
        WHERE kind = 'rejected' AND coalesce(day, timezone($tz, ts)::DATE) = $day::DATE
        GROUP BY ALL
        ORDER BY ALL
        """,
        {"day": day.isoformat(), "tz": timezone},
    ).to_pylist()
    return [
        _Refusal(
            key=(r["tenant"], r["context"], r["purpose"]),
            calls=int(r["calls"]),
            cap_usd=Decimal(r["cap_usd"] or 0),
            spent_usd=Decimal(r["spent_usd"] or 0),
            last_ts=r["last_ts"],
        )
        for r in rows
    ]


def _refused_state(refusal: _Refusal, day: dt.date, warn_ratio: float) -> BudgetState:
    """The state of a key with no usage today, only refusals (as their events saw it)."""
    cap, spent = refusal.cap_usd, refusal.spent_usd
    utilisation = float(spent / cap) if cap > 0 else float("inf")
    status: Literal["ok", "warning", "exceeded"] = (
        "exceeded" if spent >= cap else "warning" if utilisation >= warn_ratio else "ok"
    )
    tenant, context, purpose = refusal.key
    return BudgetState(
        tenant=tenant,
        context=context,
        purpose=purpose,
        day=day,
        spent_usd=spent,
        cap_usd=cap,
        utilisation=utilisation,
        burn_usd_per_hour=0.0,
        projected_usd=float(spent),
        status=status,
        calls=0,
        errors=0,
        estimated_calls=0,
        unpriced_calls=0,
        unpriced_models=(),
        last_ts=refusal.last_ts,
    )


def _with_unpriced(state: BudgetState, unpriced: Sequence[UnpricedCalls]) -> BudgetState:
    """`state` with its unpriced calls as the shared definition counts them."""
    mine = [u for u in unpriced if u.key == state.key]
    return dataclasses.replace(
        state,
        unpriced_calls=sum(u.calls for u in mine),
        unpriced_models=tuple(sorted({u.model for u in mine})),
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
            "status": result.status(b).upper() if result.status(b) != "ok" else "ok",
            "unpriced": _unpriced(b)[0],
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
        status = result.status(b)
        if status == "ok":
            continue
        level = "error" if b in result.failing else "warning"
        title = {"refused": "Budget refused calls", "exceeded": "Budget exceeded"}.get(
            status, "Budget warning"
        )
        message = (
            f"{label(b)} spent ${usd(b.spent_usd)} of ${usd(b.cap_usd)} "
            f"({b.utilisation:.0%}) on {b.day}; projected ${usd(b.projected_usd)} by end of day"
        )
        if status == "refused":
            message += f"; {result.refused[b.key]} calls refused"
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
        for b in result.budgets:
            status = {
                "refused": "⛔ refused",
                "exceeded": "🔴 exceeded",
                "warning": "🟠 warning",
            }.get(result.status(b), "🟢 ok")
            out.append(
                f"| {_md(b.tenant)} | {_md(b.context)} | {_md(b.purpose)} | ${usd(b.spent_usd)} "
                f"| ${usd(b.cap_usd)} | {b.utilisation:.0%} | ${usd(b.projected_usd)} "
                f"| {status} | {_md(_unpriced(b)[0])} |"
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
            f"projected ${usd(b.projected_usd)}, status {result.status(b)}"
            + (
                f", {b.unpriced_calls} unpriced calls ({', '.join(b.unpriced_models)})"
                if b.unpriced_calls
                else ""
            )
        )
        unpriced_fails = bool(b.unpriced_calls) and not result.allow_unpriced
        if b in result.failing or unpriced_fails:
            kind = result.status(b) if b in result.failing else "unpriced"
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
