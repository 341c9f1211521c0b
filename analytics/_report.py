"""Cost diff: spend per purpose and model of one database against a baseline."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal

from comptroller.analytics._gate import usd
from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import Reader

_ZERO = Decimal(0)


@dataclass(frozen=True, kw_only=True)
class SpendLine:
    """Spend of one (purpose, provider, model) in the current run and in the baseline."""

    purpose: str
    provider: str
    model: str
    current_usd: Decimal
    baseline_usd: Decimal
    current_calls: int
    baseline_calls: int
    current_unpriced: int
    baseline_unpriced: int

    @property
    def change_usd(self) -> Decimal:
        """Current minus baseline."""
        return self.current_usd - self.baseline_usd

    @property
    def change_pct(self) -> float | None:
        """Change as a percentage of the baseline (None when the baseline spent nothing)."""
        if self.baseline_usd == 0:
            return None if self.current_usd != 0 else 0.0
        return float(self.change_usd / self.baseline_usd * 100)


@dataclass(frozen=True, kw_only=True)
class SpendDiff:
    """Every line, and the totals, of a comparison."""

    lines: tuple[SpendLine, ...]
    total: SpendLine

    def crossed(self, *, fail_above_pct: float | None, fail_above_usd: Decimal | None) -> list[str]:
        """The thresholds the total change crossed, as sentences (empty: none)."""
        problems: list[str] = []
        pct = self.total.change_pct
        if fail_above_pct is not None and (
            (pct is None and self.total.change_usd > 0)
            or (pct is not None and pct > fail_above_pct)
        ):
            shown = "new spend" if pct is None else f"+{pct:.1f}%"
            problems.append(f"total spend changed {shown}, above the {fail_above_pct:g}% limit")
        if fail_above_usd is not None and self.total.change_usd > fail_above_usd:
            problems.append(
                f"total spend rose ${usd(self.total.change_usd)}, above the "
                f"${usd(fail_above_usd)} limit"
            )
        return problems


def compare_spend(
    current: Reader,
    baseline: Reader,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    tenant: str | None = None,
) -> SpendDiff:
    """Spend per (purpose, provider, model) of `current` against `baseline`, from each
    database's daily rollup (the `spend_by_purpose_model` panel), largest change first."""
    panel = builtin_panels()["spend_by_purpose_model"]
    now = run_panel(current, panel, since=since, until=until, tenant=tenant).to_pylist()
    then = run_panel(baseline, panel, since=since, until=until, tenant=tenant).to_pylist()
    keys: dict[tuple[str, str, str], dict[str, dict[str, object]]] = {}
    for side, rows in (("current", now), ("baseline", then)):
        for row in rows:
            key = (str(row["purpose"]), str(row["provider"]), str(row["model"]))
            keys.setdefault(key, {})[side] = row
    lines = [
        SpendLine(
            purpose=key[0],
            provider=key[1],
            model=key[2],
            current_usd=_dec(sides.get("current", {}).get("cost_usd")),
            baseline_usd=_dec(sides.get("baseline", {}).get("cost_usd")),
            current_calls=_int(sides.get("current", {}).get("calls")),
            baseline_calls=_int(sides.get("baseline", {}).get("calls")),
            current_unpriced=_int(sides.get("current", {}).get("unpriced_calls")),
            baseline_unpriced=_int(sides.get("baseline", {}).get("unpriced_calls")),
        )
        for key, sides in keys.items()
    ]
    lines.sort(key=lambda line: (-abs(line.change_usd), line.purpose, line.provider, line.model))
    total = SpendLine(
        purpose="total",
        provider="",
        model="",
        current_usd=sum((line.current_usd for line in lines), _ZERO),
        baseline_usd=sum((line.baseline_usd for line in lines), _ZERO),
        current_calls=sum(line.current_calls for line in lines),
        baseline_calls=sum(line.baseline_calls for line in lines),
        current_unpriced=sum(line.current_unpriced for line in lines),
        baseline_unpriced=sum(line.baseline_unpriced for line in lines),
    )
    return SpendDiff(lines=tuple(lines), total=total)


def markdown(diff: SpendDiff, *, problems: list[str] | None = None) -> str:
    """The comparison as a Markdown report (a PR comment, a step summary)."""
    t = diff.total
    icon = "❌" if problems else ("📈" if t.change_usd > 0 else "📉" if t.change_usd < 0 else "➖")
    out = [
        f"## {icon} LLM spend vs baseline",
        "",
        f"Total: **${usd(t.current_usd)}** vs ${usd(t.baseline_usd)} "
        f"({_signed_usd(t.change_usd)}, {_pct(t.change_pct)}); "
        f"calls {t.current_calls} vs {t.baseline_calls}.",
        "",
        "| purpose | model | baseline | current | change | change % | calls (base → now) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for line in diff.lines:
        model = f"{line.provider}:{line.model}" if line.provider else line.model
        out.append(
            f"| {_md(line.purpose)} | {_md(model)} | ${usd(line.baseline_usd)} | ${usd(line.current_usd)} "
            f"| {_signed_usd(line.change_usd)} | {_pct(line.change_pct)} "
            f"| {line.baseline_calls} → {line.current_calls} |"
        )
    out.append(
        f"| **total** | | **${usd(t.baseline_usd)}** | **${usd(t.current_usd)}** "
        f"| **{_signed_usd(t.change_usd)}** | **{_pct(t.change_pct)}** "
        f"| {t.baseline_calls} → {t.current_calls} |"
    )
    if t.current_unpriced or t.baseline_unpriced:
        out += [
            "",
            f"⚠️ Unpriced calls (cost unknown, not in the totals): {t.current_unpriced} now, "
            f"{t.baseline_unpriced} in the baseline.",
        ]
    if problems:
        out += ["", *[f"**Failed:** {p}" for p in problems]]
    return "\n".join(out) + "\n"


def to_json(diff: SpendDiff, *, problems: list[str] | None = None) -> str:
    """The comparison as JSON (decimals as exact strings)."""

    def line(item: SpendLine) -> dict[str, object]:
        return {
            "purpose": item.purpose,
            "provider": item.provider,
            "model": item.model,
            "baseline_usd": str(item.baseline_usd),
            "current_usd": str(item.current_usd),
            "change_usd": str(item.change_usd),
            "change_pct": item.change_pct,
            "baseline_calls": item.baseline_calls,
            "current_calls": item.current_calls,
            "baseline_unpriced_calls": item.baseline_unpriced,
            "current_unpriced_calls": item.current_unpriced,
        }

    payload = {
        "total": line(diff.total),
        "lines": [line(item) for item in diff.lines],
        "failed": bool(problems),
        "problems": problems or [],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _signed_usd(value: Decimal) -> str:
    sign = "+" if value > 0 else "-" if value < 0 else "±"
    return f"{sign}${usd(abs(value))}"


def _pct(value: float | None) -> str:
    return "new" if value is None else f"{value:+.1f}%"


def _md(text: str) -> str:
    return (text or "-").replace("|", "\\|")


def _dec(value: object) -> Decimal:
    if value is None:
        return _ZERO
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float | Decimal) else 0
