"""When a budget warns before it stops calls: one definition for control plane and ledger.

A budget key (tenant, context, purpose) with a daily cap warns once per day for each share of
the cap its spend crosses (`AlertSettings.budget_warn_at`, 50 %, 80 % and 100 % by default),
and once a day when its burn rate — the spend so far over the elapsed part of the budget day
— will cross the cap before the day ends. The control plane raises them as calls settle
(`control/_budget_watch.py`, its own view of the spend); the ledger raises them as usage lands
(`analytics.record_budget_events`, every process's spend). Both name a warning with
`warning_event_id`, made from (key, day, threshold), so the ledger keeps one row per warning
whichever raised it first, and notifications go out once.

Each budget may warn at its own shares (`[[alerts.budgets]]`, `BudgetRule`): the policy of a
key is `WarningPolicy.for_key`, resolved the same way by both, so they still raise the same
warnings under the same ids.

Pure functions of decimals and seconds: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from comptroller.config import AlertSettings

PROJECTED: Final = "projected"
"""The label of a projected-overrun warning (a threshold's label is its share: `0.8`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetRule:
    """The warnings of the budget keys one `[[alerts.budgets]]` entry matches.

    A matcher left None matches any value; `attribute` matches exactly, or every attribute
    starting with its prefix when it ends in `*` (`user=*`: every per-user budget). A field
    of the warnings left None is the global one (`[alerts]`).
    """

    tenant: str | None = None
    context: str | None = None
    purpose: str | None = None
    attribute: str | None = None
    """`""`: ordinary (tenant, context, purpose) budgets only; `user=alice`: that budget by
    attribution; `user=*`: every budget of the attribute `user`."""
    thresholds: tuple[float, ...] | None = None
    projected: bool | None = None

    @property
    def specificity(self) -> int:
        """How many of the key's fields this rule names (the most specific rule wins)."""
        return (
            (self.tenant is not None)
            + (self.context is not None)
            + (self.purpose is not None)
            + (self.attribute is not None)
        )

    def matches(self, tenant: str, context: str, purpose: str, attribute: str) -> bool:
        """Whether the budget key (tenant, context, purpose, attribute) is one of this rule's."""
        if self.tenant is not None and self.tenant != tenant:
            return False
        if self.context is not None and self.context != context:
            return False
        if self.purpose is not None and self.purpose != purpose:
            return False
        wanted = self.attribute
        if wanted is None or wanted == attribute:
            return True
        return wanted.endswith("*") and attribute.startswith(wanted[:-1])

    @property
    def active(self) -> bool:
        """Whether this rule can make a key warn (given the global policy's own)."""
        return bool(self.thresholds) or bool(self.projected)


@dataclass(frozen=True, kw_only=True, slots=True)
class WarningPolicy:
    """When budgets warn (see `AlertSettings` for each field).

    `budgets` gives some keys warnings of their own: resolve a key's with `for_key` before
    `crossings`; the other fields are the policy of every key no rule matches.
    """

    thresholds: Sequence[float] = (0.5, 0.8, 1.0)
    projected: bool = True
    projected_min_share: float = 0.1
    projected_min_elapsed_s: float = 3600.0
    budgets: tuple[BudgetRule, ...] = ()
    """Per-budget rules (`[[alerts.budgets]]`), in the order written: of those matching a key,
    the one naming most of its fields wins, and of equally specific ones the last."""

    @classmethod
    def from_settings(cls, alerts: AlertSettings) -> WarningPolicy:
        """The policy of `settings.alerts`."""
        return cls(
            thresholds=tuple(alerts.budget_warn_at),
            projected=alerts.budget_warn_projected,
            projected_min_share=alerts.projected_min_share,
            projected_min_elapsed_s=alerts.projected_min_elapsed_s,
            budgets=tuple(
                BudgetRule(
                    tenant=entry.tenant,
                    context=entry.context,
                    purpose=entry.purpose,
                    attribute=entry.attribute,
                    thresholds=entry.warn_at,
                    projected=entry.warn_projected,
                )
                for entry in alerts.budgets
            ),
        )

    @property
    def active(self) -> bool:
        """Whether anything can warn at all (for some key)."""
        if self.thresholds or self.projected:
            return True
        return any(rule.active for rule in self.budgets)

    def rule_for(
        self, tenant: str, context: str, purpose: str, attribute: str = ""
    ) -> BudgetRule | None:
        """The rule that sets the warnings of a budget key; None: the global ones."""
        best: BudgetRule | None = None
        best_specificity = -1
        for rule in self.budgets:
            specificity = rule.specificity
            # `>=`: of equally specific rules, the one written last wins.
            if specificity >= best_specificity and rule.matches(
                tenant, context, purpose, attribute
            ):
                best, best_specificity = rule, specificity
        return best

    def for_key(
        self, tenant: str, context: str, purpose: str, attribute: str = ""
    ) -> WarningPolicy:
        """The policy of one budget key: its most specific rule over the global fields.

        The result has no rules of its own (`crossings` takes it as is); with no rules at
        all it is this policy itself. `attribute` is `""` for an ordinary budget.

        Example:
            >>> policy = WarningPolicy(budgets=(BudgetRule(tenant="acme", thresholds=(0.9,)),))
            >>> policy.for_key("acme", "support", "chat").thresholds
            (0.9,)
            >>> policy.for_key("globex", "support", "chat").thresholds
            (0.5, 0.8, 1.0)
        """
        if not self.budgets:
            return self
        rule = self.rule_for(tenant, context, purpose, attribute)
        thresholds, projected = self.thresholds, self.projected
        if rule is not None:
            if rule.thresholds is not None:
                thresholds = rule.thresholds
            if rule.projected is not None:
                projected = rule.projected
        return WarningPolicy(
            thresholds=thresholds,
            projected=projected,
            projected_min_share=self.projected_min_share,
            projected_min_elapsed_s=self.projected_min_elapsed_s,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Crossing:
    """One warning a key's spend calls for."""

    label: str
    """The share crossed (`"0.8"`) or `PROJECTED`."""
    threshold: float | None
    """The share crossed; None for a projection."""
    projected_usd: Decimal | None = None
    """The day's spend at the current burn rate (projections only)."""

    @property
    def kind(self) -> str:
        """`threshold` or `projected` (the event's `comptroller.budget.warning_kind`)."""
        return PROJECTED if self.threshold is None else "threshold"


def day_bounds(day: str | date, timezone: str) -> tuple[float, float]:
    """The start and end (epoch seconds) of budget day `day` in `timezone`.

    23 or 25 hours apart on the days clocks change.
    """
    local = date.fromisoformat(day) if isinstance(day, str) else day
    tz = ZoneInfo(timezone)
    start = datetime(local.year, local.month, local.day, tzinfo=tz)
    after = local + timedelta(days=1)
    end = datetime(after.year, after.month, after.day, tzinfo=tz)
    return start.timestamp(), end.timestamp()


def crossings(
    spent: Decimal,
    cap: Decimal,
    *,
    now: float,
    day_start: float,
    day_end: float,
    policy: WarningPolicy,
) -> list[Crossing]:
    """Every warning that `spent` against `cap` calls for at `now` (already raised or not).

    Example:
        >>> policy = WarningPolicy(thresholds=(0.5, 0.8), projected=False)
        >>> [c.label for c in crossings(Decimal("0.9"), Decimal(1), now=0, day_start=0,
        ...                              day_end=86400, policy=policy)]
        ['0.5', '0.8']
    """
    if cap <= 0:
        return []
    share = spent / cap
    found = [
        Crossing(label=_label(t), threshold=float(t))
        for t in sorted(policy.thresholds)
        if share >= Decimal(str(t))
    ]
    if policy.projected and Decimal(str(policy.projected_min_share)) <= share < 1:
        elapsed = now - day_start
        length = day_end - day_start
        if policy.projected_min_elapsed_s <= elapsed < length and elapsed > 0:
            projection = spent * Decimal(length) / Decimal(elapsed)
            if projection > cap:
                found.append(
                    Crossing(
                        label=PROJECTED,
                        threshold=None,
                        projected_usd=projection.quantize(Decimal("0.0000000001")),
                    )
                )
    return found


def warning_event_id(
    tenant: str, context: str, purpose: str, day: str, label: str, *, attribute: str = ""
) -> str:
    """The identity of one warning: the same for every process that raises it.

    `attribute` is the budget key's (`""` for an ordinary budget, whose ids it leaves as
    they were; a budget by attribution, `user=alice`, warns under ids of its own).
    """
    parts = [tenant, context, purpose, day, label]
    if attribute:
        parts.append(attribute)
    identity = "\x1f".join(parts)
    return "budget-warning-" + hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _label(share: float) -> str:
    return format(Decimal(str(share)).normalize(), "f")
