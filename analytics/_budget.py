"""Budget state: today's spend per (tenant, context, purpose) against its cap."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from comptroller import semconv
from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import DuckDBReader, Reader
from comptroller.budget_alerts import (
    Crossing,
    WarningPolicy,
    crossings,
    day_bounds,
    warning_event_id,
)
from comptroller.dashboards import Clock
from comptroller.money import usd_column

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget

BudgetStatus: TypeAlias = Literal["ok", "warning", "exceeded", "refused"]
"""`refused` when the control plane refused calls of the key today, else how its spend
stands against the cap (`SpendStatus`)."""
SpendStatus: TypeAlias = Literal["ok", "warning", "exceeded"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

REQUESTED_USD = "comptroller.budget.requested_usd"
"""Attribute of a `comptroller.budget.rejected` event: the worst-case reservation the refused
call asked for (the attributes of each event are kept whole in `budget_events.attributes`)."""


@dataclass(frozen=True, kw_only=True)
class Refusals:
    """The calls of one budget key the control plane refused today, and why.

    A call is refused when its worst-case reservation does not fit in what is left of the
    cap (cap - spent - reserved in flight). The amounts are those of the last refusal, as
    the control plane saw them.
    """

    calls: int
    needed_usd: Decimal | None
    """The worst-case reservation the last refused call needed; None when the control
    plane did not record it (`comptroller.budget.requested_usd` on its event)."""
    left_usd: Decimal | None
    """What was left of the cap for it: cap - spent - reserved in flight (not below 0)."""
    cap_usd: Decimal | None
    spent_usd: Decimal | None
    """Settled spend the control plane counted at the refusal."""
    reserved_usd: Decimal | None
    """Reservations of other calls in flight at the refusal."""
    last_ts: dt.datetime | None

    @classmethod
    def from_last(cls, calls: int, last: Mapping[str, Any]) -> Refusals:
        """The refusals of a key from its count and its last refusal, the `last_refusal`
        struct of the `budget_state` and `budget_refusals` panels (cap_usd, spent_usd,
        reserved_usd, attributes, ts)."""
        cap, spent, reserved = last.get("cap_usd"), last.get("spent_usd"), last.get("reserved_usd")
        left = None if cap is None else max(cap - (spent or 0) - (reserved or 0), Decimal(0))
        return cls(
            calls=calls,
            needed_usd=_requested(last.get("attributes")),
            left_usd=left,
            cap_usd=cap,
            spent_usd=spent,
            reserved_usd=reserved,
            last_ts=last.get("ts"),
        )

    def why(self) -> str:
        """The numbers in one sentence, e.g. `3 calls refused: the last needed $0.00030
        (worst case) but only $0.00017 of the $0.00020 cap was left (spent $0.00003,
        reserved in flight $0.00000)`."""
        # One precision for the sentence: its amounts are read against each other.
        needed, left, cap, spent, reserved = usd_column(
            [self.needed_usd, self.left_usd, self.cap_usd, self.spent_usd, self.reserved_usd],
            none="?",
        )
        need = (
            f"needed {needed} (worst case)"
            if self.needed_usd is not None
            else "needed more (its worst-case reservation was not recorded)"
        )
        return (
            f"{self._count()} refused: the last {need} but only {left} of the {cap} cap was "
            f"left (spent {spent}, reserved in flight {reserved})"
        )

    def brief(self) -> str:
        """The numbers that matter, short: `3 refused, needed $0.00030 > $0.00017 left`."""
        needed, left = usd_column([self.needed_usd, self.left_usd], none="?")
        if self.needed_usd is None:
            return f"{self._count()} refused, {left} left of the cap"
        return f"{self._count()} refused, needed {needed} > {left} left"

    def _count(self) -> str:
        return f"{self.calls} call{'s' if self.calls != 1 else ''}"


def _requested(attributes: object) -> Decimal | None:
    """The worst-case reservation a refused call asked for, from its event's attributes
    (None when the control plane did not send it, or sent no amount)."""
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except ValueError:
            return None
    if not isinstance(attributes, Mapping):
        return None
    value = attributes.get(REQUESTED_USD)
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


@dataclass(frozen=True, kw_only=True)
class BudgetState:
    """Today's spend of one budget key against its daily cap.

    `""` stands for an absent tenant, context or purpose. Unpriced calls are not in
    `spent_usd` (their cost is unknown); they are counted, with their models, so that no
    budget looks safe only because its prices are missing.
    """

    tenant: str
    context: str
    purpose: str
    day: dt.date
    """The budget day, in the time zone the rollup is cut in."""
    spent_usd: Decimal
    """Landed spend of the day (0 for a key whose only calls today were refused)."""
    cap_usd: Decimal
    utilisation: float
    """spent / cap (inf for a zero cap)."""
    burn_usd_per_hour: float
    """Average spend per hour since local midnight."""
    projected_usd: float
    """Spend at the end of the day if the burn rate holds."""
    status: BudgetStatus
    spend_status: SpendStatus
    """The spend against the cap alone, whether or not calls were refused."""
    calls: int
    errors: int
    estimated_calls: int
    unpriced_calls: int
    unpriced_models: tuple[str, ...]
    last_ts: dt.datetime | None
    refusals: Refusals | None = None
    """The calls refused today, and why (None: none refused)."""
    attribute: str = ""
    """For a budget by attribution, what it counts (`user=alice`); "" for a profile budget."""

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose), the key the control plane's guard uses (with
        `attribute` for a budget by attribution)."""
        return (self.tenant, self.context, self.purpose)

    @property
    def refused_calls(self) -> int:
        """Calls of this key the control plane refused today."""
        return self.refusals.calls if self.refusals is not None else 0


def budget_state(
    reader: Reader,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    warn_ratio: float = 0.8,
    tenant: str | None = None,
    purpose: str | None = None,
    attribution_budgets: Sequence[AttributionBudget] = (),
) -> list[BudgetState]:
    """Every budget key with a cap, today, keys that refused calls first, then most used.

    Reads the daily rollup and the control plane's refusals through the shipped
    `budget_state` panel, so the TUI, the CI gate and this function agree; then, for each
    budget by attribution, the usage rows of the day through `attribution_budget_state`
    (one key per value seen, `attribute` set).

    Args:
        reader: A DuckDB file or a running collector.
        now: The instant "today" is taken from (default: now).
        timezone: Time zone of the budget day (`settings.timezone`).
        warn_ratio: Utilisation at which a key is in warning.
        tenant: Only this tenant.
        purpose: Only this purpose (of the key: a budget by attribution over every purpose
            has purpose `*`).
        attribution_budgets: The budgets by attribution (`settings.control.attribution_budgets`).
    """
    table = run_panel(
        reader,
        builtin_panels()["budget_state"],
        now=now,
        timezone=timezone,
        warn_ratio=warn_ratio,
        tenant=tenant,
        purpose=purpose,
    )
    day = Clock.at(now, timezone).today
    out = _states(table, day)
    for rule in attribution_budgets:
        if tenant is not None and rule.tenant is not None and rule.tenant != tenant:
            continue
        if purpose is not None and rule.key_purpose != purpose:
            continue
        found = _states(
            run_panel(
                reader,
                builtin_panels()["attribution_budget_state"],
                now=now,
                timezone=timezone,
                warn_ratio=warn_ratio,
                by=rule.by,
                cap=str(rule.daily_usd),
                value=rule.value,
                rule_tenant=rule.tenant if rule.tenant is not None else tenant,
                org=rule.org,
                context=rule.context,
                purpose=rule.purpose,
                key_context=rule.key_context,
                key_purpose=rule.key_purpose,
            ),
            day,
        )
        out.extend(found)
    return out


def _states(table: pa.Table, day: dt.date) -> list[BudgetState]:
    """The rows of a budget-state panel as `BudgetState`s."""
    # Column-wise conversion: one Python list per column is several times faster than a
    # dict per row. Every row has the same day, and timestamps go through integers: pyarrow
    # converts zoned timestamps to datetimes slowly.
    c: dict[str, list[Any]] = {}
    for name in table.column_names:
        if name not in ("day", "last_ts"):
            c[name] = table.column(name).to_pylist()
    stamps = _instants(table.column("last_ts"))
    attributes = c.get("attribute") or [""] * table.num_rows
    # Arrow already gives Decimal, int and float: no per-value conversion needed.
    out = [
        BudgetState(
            tenant=tenant,
            context=context,
            purpose=purpose,
            day=day,
            spent_usd=spent,
            cap_usd=cap,
            utilisation=utilisation,
            burn_usd_per_hour=burn,
            projected_usd=projected,
            status=status,
            spend_status=spend_status,
            calls=calls,
            errors=errors,
            estimated_calls=estimated,
            unpriced_calls=unpriced,
            unpriced_models=tuple(models) if models else (),
            last_ts=stamp,
            refusals=Refusals.from_last(refused, last) if refused and last else None,
            attribute=attribute,
        )
        for (
            tenant,
            context,
            purpose,
            spent,
            cap,
            utilisation,
            burn,
            projected,
            status,
            spend_status,
            calls,
            errors,
            estimated,
            unpriced,
            models,
            stamp,
            refused,
            last,
            attribute,
        ) in zip(
            c["tenant"],
            c["context"],
            c["purpose"],
            c["spent_usd"],
            c["cap_usd"],
            c["utilisation"],
            c["burn_usd_per_hour"],
            c["projected_usd"],
            c["status"],
            c["spend_status"],
            c["calls"],
            c["errors"],
            c["estimated_calls"],
            c["unpriced_calls"],
            c["unpriced_models"],
            stamps,
            c["refused_calls"],
            c["last_refusal"],
            attributes,
            strict=True,
        )
    ]
    return out


def _instants(column: pa.ChunkedArray) -> list[dt.datetime | None]:
    return [
        None if stamp is None else _EPOCH + dt.timedelta(microseconds=stamp)
        for stamp in pc.cast(column, pa.int64()).to_pylist()
    ]


@dataclass(frozen=True, kw_only=True)
class KeyRefusals:
    """The refusals of one budget key over a range of days (`budget_refusals`)."""

    tenant: str
    context: str
    purpose: str
    refusals: Refusals
    first_ts: dt.datetime | None

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose)."""
        return (self.tenant, self.context, self.purpose)


def budget_refusals(
    reader: Reader,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    tenant: str | None = None,
) -> list[KeyRefusals]:
    """The calls the control plane refused per budget key over budget days `since` ..
    `until` (inclusive; None: open), most refused first, through the `budget_refusals`
    panel."""
    rows = run_panel(
        reader, builtin_panels()["budget_refusals"], since=since, until=until, tenant=tenant
    ).to_pylist()
    return [
        KeyRefusals(
            tenant=row["tenant"],
            context=row["context"],
            purpose=row["purpose"],
            first_ts=row["first_refused_ts"],
            refusals=Refusals.from_last(int(row["refused_calls"]), row["last_refusal"]),
        )
        for row in rows
    ]


@dataclass(frozen=True, kw_only=True)
class BudgetEvent:
    """A budget crossing that `record_budget_events` recorded."""

    event_id: str
    kind: Literal["warning", "exceeded"]
    day: dt.date
    tenant: str
    context: str
    purpose: str
    cap_usd: Decimal
    spent_usd: Decimal
    threshold: float | None = None
    """For a warning: the share of the cap crossed (None for a projected overrun)."""
    projected_usd: Decimal | None = None
    """For a projected-overrun warning: the day's spend at the burn rate so far."""
    attribute: str = ""
    """For a budget by attribution, what it counts (`user=alice`)."""


def budget_crossings(
    states: Sequence[BudgetState],
    *,
    exceeded_seen: Set[tuple[str, str, str, str]],
    stamp: dt.datetime,
    timezone: str,
    policy: WarningPolicy,
    warn_ratio: float = 0.8,
) -> list[tuple[BudgetEvent, dict[str, Any]]]:
    """The budget events today's `states` call for, with the attributes each is stored with.

    One decision for every ledger (DuckDB here, PostgreSQL in the collector): each key's
    warnings under its policy (`WarningPolicy.for_key`), each under the id the control plane
    gives the same warning (`warning_event_id`: the ledger keeps one row whoever raised it
    first), and the cap's crossing once per key and day unless one is recorded already
    (`exceeded_seen`: (tenant, context, purpose, attribute) of the day's `exceeded` events).
    The caller inserts them, skipping those recorded before.
    """
    if not states:
        return []
    day = states[0].day
    start, end = day_bounds(day, timezone)
    out: list[tuple[BudgetEvent, dict[str, Any]]] = []
    for state in states:
        attribute = state.attribute  # "" for a profile budget
        key_policy = policy.for_key(state.tenant, state.context, state.purpose, attribute)
        found: list[tuple[str, str, Crossing | None]] = [
            (
                warning_event_id(
                    state.tenant,
                    state.context,
                    state.purpose,
                    day.isoformat(),
                    c.label,
                    attribute=attribute,
                ),
                "warning",
                c,
            )
            for c in crossings(
                state.spent_usd,
                state.cap_usd,
                now=stamp.timestamp(),
                day_start=start,
                day_end=end,
                policy=key_policy,
            )
        ]
        if state.spend_status == "exceeded" and (*state.key, attribute) not in exceeded_seen:
            event_id = (
                f"budget:{day.isoformat()}:exceeded:{state.tenant}:{state.context}:{state.purpose}"
            )
            if attribute:
                event_id += f":{attribute}"
            found.append((event_id, "exceeded", None))
        for event_id, kind, crossing in found:
            attributes: dict[str, Any] = {
                "utilisation": state.utilisation,
                "warn_ratio": warn_ratio,
                "unpriced_calls": state.unpriced_calls,
                "unpriced_models": list(state.unpriced_models),
            }
            if crossing is not None:
                attributes[semconv.BUDGET_WARNING_KIND] = crossing.kind
                if crossing.threshold is not None:
                    attributes[semconv.BUDGET_THRESHOLD] = crossing.threshold
                if crossing.projected_usd is not None:
                    attributes[semconv.BUDGET_PROJECTED_USD] = str(crossing.projected_usd)
            event = BudgetEvent(
                event_id=event_id,
                kind=kind,  # type: ignore[arg-type]
                day=day,
                tenant=state.tenant,
                context=state.context,
                purpose=state.purpose,
                cap_usd=state.cap_usd,
                spent_usd=state.spent_usd,
                threshold=crossing.threshold if crossing is not None else None,
                projected_usd=crossing.projected_usd if crossing is not None else None,
                attribute=attribute,
            )
            out.append((event, attributes))
    return out


def record_budget_events(
    con: duckdb.DuckDBPyConnection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    warn_ratio: float = 0.8,
    policy: WarningPolicy | None = None,
    attribution_budgets: Sequence[AttributionBudget] = (),
) -> list[BudgetEvent]:
    """Record today's budget warnings and cap crossings of each budget key.

    Warnings follow `policy` (`comptroller.budget_alerts`; default: 50, 80 and 100 % of the
    cap and a projected overrun), resolved per key as the control plane resolves it
    (`WarningPolicy.for_key`: a `[[alerts.budgets]]` rule over the global shares), each
    once per key, threshold and day under the id the control plane gives the same warning,
    so a warning it raised first is not repeated. The cap's crossing (`exceeded`) is recorded once per key and day, unless the control plane
    recorded one. Call it after `apply_usage_batch`, in the same transaction.

    Args:
        warn_ratio: The utilisation the budget state calls `warning` (the status shown).

    Returns:
        The events recorded by this call.
    """
    policy = policy if policy is not None else WarningPolicy()
    states = budget_state(
        DuckDBReader(con, cursors=False),
        now=now,
        timezone=timezone,
        warn_ratio=warn_ratio,
        attribution_budgets=attribution_budgets,
    )
    if not states:
        return []
    day = states[0].day
    exceeded_seen = {
        (str(tenant), str(context), str(purpose), str(attribute))
        for tenant, context, purpose, attribute in con.execute(
            "SELECT coalesce(tenant, ''), coalesce(context, ''), coalesce(purpose, ''), "
            "coalesce(attribute, '') FROM budget_events WHERE day = ? AND kind = 'exceeded'",
            [day],
        ).fetchall()
    }
    stamp = now or dt.datetime.now(dt.UTC)
    recorded: list[BudgetEvent] = []
    for event, attributes in budget_crossings(
        states,
        exceeded_seen=exceeded_seen,
        stamp=stamp,
        timezone=timezone,
        policy=policy,
        warn_ratio=warn_ratio,
    ):
        inserted = con.execute(
            "INSERT OR IGNORE INTO budget_events (event_id, ts, day, kind, tenant, context, "
            "purpose, cap_usd, spent_usd, service_name, attributes, attribute) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING event_id",
            [
                event.event_id,
                stamp,
                event.day,
                event.kind,
                event.tenant,
                event.context,
                event.purpose,
                event.cap_usd,
                event.spent_usd,
                "comptroller.analytics",
                json.dumps(attributes),
                event.attribute or None,
            ],
        ).fetchall()
        if inserted:  # else raised before, here or by the control plane
            recorded.append(event)
    return recorded
