"""Cost diff: spend per purpose and model of one database against a baseline."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from comptroller.analytics._budget import KeyRefusals, budget_refusals
from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import Reader
from comptroller.analytics._savings import CacheSaving
from comptroller.money import usd_column

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
    """Every line, and the totals, of a comparison, and the current run's refused calls."""

    lines: tuple[SpendLine, ...]
    total: SpendLine
    refused: tuple[KeyRefusals, ...] = ()
    """Budget keys whose calls the control plane refused in the current run's range: their
    work did not run, so their spend is missing from the comparison."""

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
            rise, limit = usd_column([self.total.change_usd, fail_above_usd])
            problems.append(f"total spend rose {rise}, above the {limit} limit")
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
    database's daily rollup (the `spend_by_purpose_model` panel), largest change first, and
    the budget keys that refused calls in `current` over the range."""
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
    refused = budget_refusals(current, since=since, until=until, tenant=tenant)
    return SpendDiff(lines=tuple(lines), total=total, refused=tuple(refused))


def markdown(
    diff: SpendDiff,
    *,
    problems: list[str] | None = None,
    savings: Sequence[CacheSaving] = (),
) -> str:
    """The comparison as a Markdown report (a PR comment, a step summary), with the current
    run's prompt-cache `savings` when there are any."""
    t = diff.total
    icon = "❌" if problems else ("📈" if t.change_usd > 0 else "📉" if t.change_usd < 0 else "➖")
    everything = [*diff.lines, t]
    # Each column shares one precision (the totals row included), so no amount reads as zero.
    baseline = usd_column(line.baseline_usd for line in everything)
    current = usd_column(line.current_usd for line in everything)
    change = _signed(usd_column((line.change_usd for line in everything), sign=True))
    # The total sentence shares one precision too; only the change carries a sign.
    totals = [t.current_usd, t.baseline_usd, t.change_usd]
    now, then = usd_column(totals)[:2]
    delta = usd_column(totals, sign=True)[2]
    out = [
        f"## {icon} LLM spend vs baseline",
        "",
        f"Total: **{now}** vs {then} ({_signed([delta])[0]}, {_pct(t.change_pct)}); "
        f"calls {t.current_calls} vs {t.baseline_calls}.",
        "",
        "| purpose | model | baseline | current | change | change % | calls (base → now) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, line in enumerate(diff.lines):
        model = f"{line.provider}:{line.model}" if line.provider else line.model
        out.append(
            f"| {_md(line.purpose)} | {_md(model)} | {baseline[i]} | {current[i]} "
            f"| {change[i]} | {_pct(line.change_pct)} "
            f"| {line.baseline_calls} → {line.current_calls} |"
        )
    out.append(
        f"| **total** | | **{baseline[-1]}** | **{current[-1]}** "
        f"| **{change[-1]}** | **{_pct(t.change_pct)}** "
        f"| {t.baseline_calls} → {t.current_calls} |"
    )
    if t.current_unpriced or t.baseline_unpriced:
        out += [
            "",
            f"⚠️ Unpriced calls (cost unknown, not in the totals): {t.current_unpriced} now, "
            f"{t.baseline_unpriced} in the baseline.",
        ]
    if diff.refused:
        calls = sum(r.refusals.calls for r in diff.refused)
        out += [
            "",
            f"⛔ Budgets refused {calls} call{'s' if calls != 1 else ''} in this run (their work "
            "did not run, so their spend is not in the comparison):",
            "",
            *(f"- **{_md(_label(r))}**: {_md(r.refusals.why())}" for r in diff.refused),
        ]
    if savings:
        out += ["", savings_markdown(savings).rstrip("\n")]
    if problems:
        out += ["", *[f"**Failed:** {p}" for p in problems]]
    return "\n".join(out) + "\n"


def savings_markdown(savings: Sequence[CacheSaving]) -> str:
    """Prompt-cache savings per purpose and model as a Markdown section."""
    head = "## 💾 Prompt-cache savings"
    if not savings:
        return f"{head}\n\nNo call read from a prompt cache in the range.\n"
    known = [s.saved_usd for s in savings if s.saved_usd is not None]
    total = sum(known, _ZERO) if known else None
    amounts = usd_column([*(s.saved_usd for s in savings), total])
    calls = sum(s.calls for s in savings)
    out = [
        head,
        "",
        f"Prompt caching saved **{amounts[-1]}** over {calls} call{'s' if calls != 1 else ''} "
        "(the cached tokens priced as plain input, minus their cache-read price).",
        "",
        "| purpose | model | calls | cached tokens | of input | saved |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for i, item in enumerate(savings):
        model = f"{item.provider}:{item.model}" if item.provider else item.model
        share = item.cache_read_tokens / item.input_tokens * 100 if item.input_tokens else 0.0
        out.append(
            f"| {_md(item.purpose)} | {_md(model)} | {item.calls} | {item.cache_read_tokens:,} "
            f"| {share:.0f}% | {amounts[i]} |"
        )
    unknown = sum(s.unpriced_calls for s in savings)
    if unknown:
        out += [
            "",
            f"⚠️ {unknown} call{'s' if unknown != 1 else ''} with cache reads ha"
            f"{'ve' if unknown != 1 else 's'} no known price: "
            "their saving is unknown, not in the total.",
        ]
    return "\n".join(out) + "\n"


def savings_json(savings: Sequence[CacheSaving]) -> dict[str, object]:
    """Prompt-cache savings as a JSON-ready object (decimals as exact strings)."""
    known = [s.saved_usd for s in savings if s.saved_usd is not None]
    return {
        "saved_usd": _text(sum(known, _ZERO) if known else None),
        "unpriced_calls": sum(s.unpriced_calls for s in savings),
        "lines": [
            {
                "purpose": s.purpose,
                "provider": s.provider,
                "model": s.model,
                "calls": s.calls,
                "cache_read_tokens": s.cache_read_tokens,
                "input_tokens": s.input_tokens,
                "saved_usd": _text(s.saved_usd),
                "unpriced_calls": s.unpriced_calls,
            }
            for s in savings
        ],
    }


def to_json(
    diff: SpendDiff,
    *,
    problems: list[str] | None = None,
    savings: Sequence[CacheSaving] = (),
) -> str:
    """The comparison as JSON (decimals as exact strings), with the prompt-cache savings."""

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

    def refused(item: KeyRefusals) -> dict[str, object]:
        r = item.refusals
        return {
            "tenant": item.tenant,
            "context": item.context,
            "purpose": item.purpose,
            "status": "refused",
            "refused_calls": r.calls,
            "needed_usd": _text(r.needed_usd),
            "left_usd": _text(r.left_usd),
            "cap_usd": _text(r.cap_usd),
            "spent_usd": _text(r.spent_usd),
            "reserved_usd": _text(r.reserved_usd),
            "first_ts": item.first_ts.isoformat() if item.first_ts else None,
            "last_ts": r.last_ts.isoformat() if r.last_ts else None,
            "why": r.why(),
        }

    payload = {
        "total": line(diff.total),
        "lines": [line(item) for item in diff.lines],
        "refused": [refused(item) for item in diff.refused],
        "failed": bool(problems),
        "problems": problems or [],
        "cache_savings": savings_json(savings),
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _signed(texts: list[str]) -> list[str]:
    """Signed amounts, with `±` marking no change (a bare `$0.00` reads like a price)."""
    return [t if t[0] in "+-<>" else "±" + t for t in texts]


def _label(item: KeyRefusals) -> str:
    return "/".join(part or "-" for part in item.key)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


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
