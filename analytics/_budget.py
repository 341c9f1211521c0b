"""Budget state: today's spend per (tenant, context, purpose) against its cap."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeAlias

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import DuckDBReader, Reader
from comptroller.dashboards import Clock

BudgetStatus: TypeAlias = Literal["ok", "warning", "exceeded"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
    cap_usd: Decimal
    utilisation: float
    """spent / cap (inf for a zero cap)."""
    burn_usd_per_hour: float
    """Average spend per hour since local midnight."""
    projected_usd: float
    """Spend at the end of the day if the burn rate holds."""
    status: BudgetStatus
    calls: int
    errors: int
    estimated_calls: int
    unpriced_calls: int
    unpriced_models: tuple[str, ...]
    last_ts: dt.datetime | None

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose), the key the control plane's guard uses."""
        return (self.tenant, self.context, self.purpose)


def budget_state(
    reader: Reader,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    warn_ratio: float = 0.8,
    tenant: str | None = None,
    purpose: str | None = None,
) -> list[BudgetState]:
    """Every budget key with a cap, today, most used first.

    Reads the daily rollup through the shipped `budget_state` panel, so the TUI, the CI
    gate and this function agree.

    Args:
        reader: A DuckDB file or a running collector.
        now: The instant "today" is taken from (default: now).
        timezone: Time zone of the budget day (`settings.timezone`).
        warn_ratio: Utilisation at which a key is in warning.
        tenant: Only this tenant.
        purpose: Only this purpose.
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
    # Column-wise conversion: one Python list per column is several times faster than a
    # dict per row. Every row has the same day, and timestamps go through integers: pyarrow
    # converts zoned timestamps to datetimes slowly.
    c: dict[str, list[Any]] = {}
    for name in table.column_names:
        if name not in ("day", "last_ts"):
            c[name] = table.column(name).to_pylist()
    day = Clock.at(now, timezone).today
    stamps = pc.cast(table.column("last_ts"), pa.int64()).to_pylist()
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
            calls=calls,
            errors=errors,
            estimated_calls=estimated,
            unpriced_calls=unpriced,
            unpriced_models=tuple(models) if models else (),
            last_ts=None if stamp is None else _EPOCH + dt.timedelta(microseconds=stamp),
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
            calls,
            errors,
            estimated,
            unpriced,
            models,
            stamp,
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
            c["calls"],
            c["errors"],
            c["estimated_calls"],
            c["unpriced_calls"],
            c["unpriced_models"],
            stamps,
            strict=True,
        )
    ]
    return out


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


def record_budget_events(
    con: duckdb.DuckDBPyConnection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    warn_ratio: float = 0.8,
) -> list[BudgetEvent]:
    """Record each budget key's crossing of the warning threshold and of its cap, today.

    Each crossing is recorded once per day and key: a key already holding a `warning` (or
    `exceeded`) event for the day — recorded here or by the control plane — gets no second
    one. A key that jumps past its cap in one batch records both. Call it after
    `apply_usage_batch`, in the same transaction.

    Returns:
        The events recorded by this call.
    """
    states = budget_state(
        DuckDBReader(con, cursors=False), now=now, timezone=timezone, warn_ratio=warn_ratio
    )
    crossings = [
        (state, kind)
        for state in states
        for kind in ("warning", "exceeded")
        if state.status == "exceeded" or (kind == "warning" and state.status == "warning")
    ]
    if not crossings:
        return []
    day = states[0].day
    seen = {
        (str(kind), str(tenant), str(context), str(purpose))
        for kind, tenant, context, purpose in con.execute(
            "SELECT kind, coalesce(tenant, ''), coalesce(context, ''), coalesce(purpose, '') "
            "FROM budget_events WHERE day = ? AND kind IN ('warning', 'exceeded')",
            [day],
        ).fetchall()
    }
    stamp = now or dt.datetime.now(dt.UTC)
    recorded: list[BudgetEvent] = []
    for state, kind in crossings:
        if (kind, *state.key) in seen:
            continue
        event = BudgetEvent(
            event_id=f"budget:{state.day.isoformat()}:{kind}:{state.tenant}:{state.context}:{state.purpose}",
            kind=kind,  # type: ignore[arg-type]
            day=state.day,
            tenant=state.tenant,
            context=state.context,
            purpose=state.purpose,
            cap_usd=state.cap_usd,
            spent_usd=state.spent_usd,
        )
        attributes = {
            "utilisation": state.utilisation,
            "warn_ratio": warn_ratio,
            "unpriced_calls": state.unpriced_calls,
            "unpriced_models": list(state.unpriced_models),
        }
        con.execute(
            "INSERT OR IGNORE INTO budget_events (event_id, ts, day, kind, tenant, context, "
            "purpose, cap_usd, spent_usd, service_name, attributes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                event.event_id,
                stamp,
                event.day,
                kind,
                state.tenant,
                state.context,
                state.purpose,
                state.cap_usd,
                state.spent_usd,
                "comptroller.analytics",
                json.dumps(attributes),
            ],
        ).fetchall()
        recorded.append(event)
    return recorded
