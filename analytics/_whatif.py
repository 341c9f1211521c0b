"""What-if re-pricing: what past usage would have cost on another model.

`comptroller report --what-if "purpose=scoring model=openai:gpt-4.1-nano"` selects the
ledger's calls by the filters (purpose, tenant, context, org, and `from=` the model they ran
on) and prices each one's token counts at the target model with the one `Pricer`, at the
call's own time (prices change with the date, tiers with the input count). Token counts are
kept as they were: another model's tokenizer would count the same text differently, so this
is the price difference of the same usage, not a forecast.

Actual cost is the ledger's `cost_usd`, so the actual total equals `SELECT sum(cost_usd) FROM
llm_usage WHERE …` over the same calls. A call without an actual cost (unpriced) is left out
of both totals and counted; so is a call the target cannot price (inconsistent counts).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from comptroller.analytics._reader import truncated_at
from comptroller.errors import UsageError
from comptroller.money import usd_column

if TYPE_CHECKING:
    from comptroller.analytics._reader import Reader
    from comptroller.pricing import Pricer

_ZERO = Decimal(0)
_FILTERS = ("purpose", "tenant", "context", "org")
_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True, kw_only=True)
class WhatIf:
    """A what-if question: which past calls, re-priced at which model."""

    provider: str
    """The target's provider."""
    model: str
    """The target model."""
    purpose: str | None = None
    tenant: str | None = None
    context: str | None = None
    org: str | None = None
    from_provider: str | None = None
    """Only calls to this provider (`from=provider:model`)."""
    from_model: str | None = None
    """Only calls that ran on (or asked for) this model."""

    @classmethod
    def parse(cls, text: str) -> WhatIf:
        """Read `"purpose=scoring from=openai:gpt-4o model=openai:gpt-4.1-nano"`.

        `model=provider:model` (required) is the target; the other words filter the calls.

        Raises:
            UsageError: A word is not `key=value`, a key is unknown, or the target is missing.
        """
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise UsageError(f"--what-if: cannot read {text!r}: {exc}") from None
        values: dict[str, str] = {}
        allowed = (*_FILTERS, "from", "model")
        for word in words:
            key, sep, value = word.partition("=")
            if not sep or not value:
                raise UsageError(
                    f"--what-if: {word!r} is not key=value (keys: {', '.join(allowed)})"
                )
            if key not in allowed:
                raise UsageError(f"--what-if: unknown key {key!r} (keys: {', '.join(allowed)})")
            if key in values:
                raise UsageError(f"--what-if: {key} given twice")
            values[key] = value
        target = values.pop("model", None)
        if target is None:
            raise UsageError(
                "--what-if needs the model to re-price at, e.g. "
                '"purpose=scoring model=openai:gpt-4.1-nano"'
            )
        provider, sep, model = target.partition(":")
        if not sep or not provider or not model:
            raise UsageError(f"--what-if: model must be provider:model, got {target!r}")
        source = values.pop("from", None)
        from_provider: str | None = None
        from_model = source
        if source is not None and ":" in source:
            from_provider, _, from_model = source.partition(":")
        return cls(
            provider=provider,
            model=model,
            from_provider=from_provider or None,
            from_model=from_model or None,
            **values,
        )

    @property
    def target(self) -> str:
        """`provider:model` of the target."""
        return f"{self.provider}:{self.model}"

    def describe(self) -> str:
        """The filters as the user wrote them ("every call" when none)."""
        parts = [f"{key}={getattr(self, key)}" for key in _FILTERS if getattr(self, key)]
        if self.from_model:
            source = f"{self.from_provider}:{self.from_model}" if self.from_provider else ""
            parts.append(f"from={source or self.from_model}")
        return " ".join(parts) or "every call"


@dataclass(frozen=True, kw_only=True)
class WhatIfLine:
    """Actual and what-if cost of one purpose's selected calls."""

    purpose: str
    calls: int
    """Calls compared (priced both ways)."""
    actual_usd: Decimal
    what_if_usd: Decimal
    unpriced_calls: int = 0
    """Selected calls without an actual cost: left out of both totals."""
    target_unpriced_calls: int = 0
    """Calls the target cannot price (inconsistent counts): left out of both totals."""

    @property
    def change_usd(self) -> Decimal:
        """What-if minus actual: negative when the target is cheaper."""
        return self.what_if_usd - self.actual_usd

    @property
    def change_pct(self) -> float | None:
        """The change as a percentage of the actual cost (None when it was 0)."""
        return None if self.actual_usd == 0 else float(self.change_usd / self.actual_usd * 100)


@dataclass(frozen=True, kw_only=True)
class WhatIfResult:
    """The answer to a `WhatIf`, per purpose and in total."""

    question: WhatIf
    lines: tuple[WhatIfLine, ...]
    total: WhatIfLine

    @property
    def matched(self) -> bool:
        """Whether the filters selected any call."""
        t = self.total
        return bool(t.calls or t.unpriced_calls or t.target_unpriced_calls)


def what_if(
    reader: Reader,
    question: WhatIf,
    pricer: Pricer,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    timezone: str = "UTC",
) -> WhatIfResult:
    """Re-price the calls `question` selects at its target model, per purpose.

    Args:
        reader: Where the ledger is.
        question: Which calls, and the target.
        pricer: The pricer (`Pricer.from_settings(settings)`: the fallback registry too).
        since: First local day.
        until: Last local day, inclusive.
        timezone: The zone the days are cut in (the rollup's).

    Raises:
        UsageError: No price is known for the target model (the message names it), or the
            reader cut the calls at its row cap.
    """
    if not pricer.knows(question.provider, question.model):
        raise UsageError(
            f"--what-if: no price is known for {question.target}: check the spelling, or add "
            f'its price to the configuration ([control.prices."{question.target}"])'
        )
    zone = ZoneInfo(timezone)
    params: dict[str, object] = {
        "since": None if since is None else _midnight(since, zone),
        "until": None if until is None else _midnight(until + dt.timedelta(days=1), zone),
        **{key: getattr(question, key) for key in _FILTERS},
        "from_provider": question.from_provider,
        "from_model": question.from_model,
    }
    table = reader.query(
        f"""
        SELECT coalesce(purpose, '') AS purpose, epoch_us(ts) AS at_us,
               {", ".join(_COUNTS)}, cost_usd
        FROM llm_usage
        WHERE ($since IS NULL OR ts >= $since::TIMESTAMPTZ)
          AND ($until IS NULL OR ts < $until::TIMESTAMPTZ)
          {"".join(f"AND (${k} IS NULL OR {k} = ${k}) " for k in _FILTERS)}
          AND ($from_provider IS NULL OR provider = $from_provider)
          AND ($from_model IS NULL OR response_model = $from_model
               OR request_model = $from_model)
        ORDER BY purpose, ts
        """,
        params,
    )
    cap = truncated_at(table)
    if cap is not None:
        raise UsageError(
            f"--what-if: the reader returned at most {cap} calls; narrow the question "
            "(--since/--until, a purpose) or read the database file with --db"
        )
    columns = table.to_pydict()
    counts = list(zip(*(columns[name] for name in _COUNTS), strict=True))
    prices = pricer.price_counts(question.provider, question.model, counts, columns["at_us"])
    sums: dict[str, list[Decimal | int]] = {}
    for purpose, cost, price in zip(columns["purpose"], columns["cost_usd"], prices, strict=True):
        line = sums.setdefault(purpose, [0, _ZERO, _ZERO, 0, 0])
        if cost is None:
            line[3] += 1
        elif price.cost_usd is None:
            line[4] += 1
        else:
            line[0] += 1
            line[1] += cost
            line[2] += price.cost_usd
    lines = tuple(
        WhatIfLine(
            purpose=purpose,
            calls=int(v[0]),
            actual_usd=Decimal(v[1]),
            what_if_usd=Decimal(v[2]),
            unpriced_calls=int(v[3]),
            target_unpriced_calls=int(v[4]),
        )
        for purpose, v in sums.items()
    )
    lines = tuple(sorted(lines, key=lambda line: (line.change_usd, line.purpose)))
    total = WhatIfLine(
        purpose="total",
        calls=sum(line.calls for line in lines),
        actual_usd=sum((line.actual_usd for line in lines), _ZERO),
        what_if_usd=sum((line.what_if_usd for line in lines), _ZERO),
        unpriced_calls=sum(line.unpriced_calls for line in lines),
        target_unpriced_calls=sum(line.target_unpriced_calls for line in lines),
    )
    return WhatIfResult(question=question, lines=lines, total=total)


def what_if_markdown(result: WhatIfResult) -> str:
    """The answer as Markdown: actual vs what-if per purpose and in total."""
    q = result.question
    head = f"## What if {q.describe()} had run on {q.target}?"
    if not result.matched:
        return f"{head}\n\nNo call matches {q.describe()} in the range: nothing to re-price.\n"
    everything = [*result.lines, result.total]
    actual = usd_column(line.actual_usd for line in everything)
    would = usd_column(line.what_if_usd for line in everything)
    change = usd_column((line.change_usd for line in everything), sign=True)
    t = result.total
    out = [
        head,
        "",
        f"Actual **{actual[-1]}**, on {q.target} **{would[-1]}** "
        f"({_signed(change[-1])}, {_pct(t.change_pct)}) over {t.calls} "
        f"call{'s' if t.calls != 1 else ''}, the same token counts.",
        "",
        "| purpose | calls | actual | what-if | change | change % |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, line in enumerate(result.lines):
        out.append(
            f"| {_md(line.purpose)} | {line.calls} | {actual[i]} | {would[i]} "
            f"| {_signed(change[i])} | {_pct(line.change_pct)} |"
        )
    out.append(
        f"| **total** | {t.calls} | **{actual[-1]}** | **{would[-1]}** "
        f"| **{_signed(change[-1])}** | **{_pct(t.change_pct)}** |"
    )
    if t.unpriced_calls:
        out += ["", f"⚠️ {t.unpriced_calls} unpriced call(s) (no actual cost) left out."]
    if t.target_unpriced_calls:
        out += [
            "",
            f"⚠️ {t.target_unpriced_calls} call(s) {q.target} cannot price "
            "(inconsistent token counts) left out.",
        ]
    return "\n".join(out) + "\n"


def what_if_json(result: WhatIfResult) -> str:
    """The answer as JSON (amounts as exact decimal strings)."""

    def line(item: WhatIfLine) -> dict[str, object]:
        return {
            "purpose": item.purpose,
            "calls": item.calls,
            "actual_usd": str(item.actual_usd),
            "what_if_usd": str(item.what_if_usd),
            "change_usd": str(item.change_usd),
            "change_pct": item.change_pct,
            "unpriced_calls": item.unpriced_calls,
            "target_unpriced_calls": item.target_unpriced_calls,
        }

    q = result.question
    payload = {
        "target": q.target,
        "filters": q.describe(),
        "matched": result.matched,
        "total": line(result.total),
        "lines": [line(item) for item in result.lines],
    }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _midnight(day: dt.date, zone: ZoneInfo) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).isoformat()


def _signed(text: str) -> str:
    return text if text[0] in "+-<>" else "±" + text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _md(text: str) -> str:
    return (text or "-").replace("|", "\\|")
