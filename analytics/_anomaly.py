"""Spend anomalies: a budget key spending far above its own baseline for this hour of day.

The rule is the shipped `anomalies` panel's (`dashboards/panels/anomalies.toml`): the key's
spend in the current local hour against the same hour of day on each of the last days the
ledger recorded — median plus k robust standard deviations (1.4826 x MAD), at least a few
times the median, with a floor on the spend and on the history. The ledger records each
anomaly once per key and hour as a `budget_events` row of kind `anomaly`
(`record_anomaly_events`, called as usage lands). docs/FORECAST.md has the details.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import duckdb

from comptroller.analytics._panels import builtin_panels, run_panel
from comptroller.analytics._reader import DuckDBReader, Reader

ANOMALY_KIND = "anomaly"
"""`budget_events.kind` of a recorded anomaly."""


@dataclass(frozen=True, kw_only=True)
class AnomalyRule:
    """When a key's spend this hour is anomalous (the `anomalies` panel's parameters)."""

    days: int = 7
    """Days of history the baseline of each hour of day is taken from."""
    min_days: int = 3
    """Fewest baseline days a key needs before it can be anomalous."""
    min_usd: float = 0.01
    """Least spend in the hour that can be anomalous (below it: noise)."""
    min_ratio: float = 2.0
    """The hour's spend must exceed this many times the baseline's median."""
    k: float = 4.0
    """Robust standard deviations (1.4826 x MAD) above the median."""

    def params(self) -> dict[str, object]:
        """The panel parameters of this rule."""
        return {
            "days": self.days,
            "min_days": self.min_days,
            "min_usd": self.min_usd,
            "min_ratio": self.min_ratio,
            "k": self.k,
        }


@dataclass(frozen=True, kw_only=True)
class Anomaly:
    """One budget key whose spend this hour departs upward from its baseline."""

    tenant: str
    context: str
    purpose: str
    hour: dt.datetime
    """Start of the local hour (wall clock in the rollup's time zone, no zone attached)."""
    calls: int
    spent_usd: Decimal
    """Spent in the hour so far."""
    median_usd: Decimal
    """Median spend of the same hour of day over the baseline days."""
    mad_usd: Decimal
    """Median absolute deviation from that median."""
    threshold_usd: Decimal
    """The spend the hour had to exceed."""
    ratio: float | None
    """`spent_usd` over `median_usd` (None when the median is 0)."""
    history_days: int
    event_id: str = field(default="")
    """Its `budget_events` id (set for anomalies `record_anomaly_events` recorded)."""

    @property
    def key(self) -> tuple[str, str, str]:
        """(tenant, context, purpose)."""
        return (self.tenant, self.context, self.purpose)


def spend_anomalies(
    reader: Reader,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    rule: AnomalyRule | None = None,
    tenant: str | None = None,
    purpose: str | None = None,
    context: str | None = None,
) -> list[Anomaly]:
    """The budget keys spending anomalously in the local hour of `now`, furthest over first.

    Reads the hourly rollup through the shipped `anomalies` panel.

    Args:
        reader: A DuckDB file or a running collector.
        now: The instant whose local hour is judged (default: now).
        timezone: Time zone of the rollup's hours (`settings.timezone`).
        rule: The thresholds (default: `AnomalyRule()`).
        tenant: Only this tenant.
        purpose: Only this purpose.
        context: Only this context.
    """
    rule = rule if rule is not None else AnomalyRule()
    rows = run_panel(
        reader,
        builtin_panels()["anomalies"],
        now=now,
        timezone=timezone,
        tenant=tenant,
        purpose=purpose,
        context=context,
        **rule.params(),
    ).to_pylist()
    return [_anomaly(row) for row in rows]


def _anomaly(row: dict[str, Any], event_id: str = "") -> Anomaly:
    return Anomaly(
        tenant=row["tenant"],
        context=row["context"],
        purpose=row["purpose"],
        hour=row["hour"],
        calls=int(row["calls"]),
        spent_usd=row["spent_usd"],
        median_usd=row["median_usd"],
        mad_usd=row["mad_usd"],
        threshold_usd=row["threshold_usd"],
        ratio=row["ratio"],
        history_days=int(row["history_days"]),
        event_id=event_id,
    )


def anomaly_event_id(anomaly: Anomaly) -> str:
    """The `budget_events` id of an anomaly: one per key and local hour."""
    return (
        f"budget:{anomaly.hour.strftime('%Y-%m-%dT%H')}:anomaly:"
        f"{anomaly.tenant}:{anomaly.context}:{anomaly.purpose}"
    )


def record_anomaly_events(
    con: duckdb.DuckDBPyConnection,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    rule: AnomalyRule | None = None,
) -> list[Anomaly]:
    """Record this hour's spend anomalies in `budget_events` (kind `anomaly`), once per key
    and hour: a key still anomalous at the next landing is not recorded again.

    Call it where `record_budget_events` is called (after the rollup is brought up to date,
    in the landing's transaction).

    Returns:
        The anomalies recorded by this call, with their `event_id`.
    """
    found = spend_anomalies(DuckDBReader(con, cursors=False), now=now, timezone=timezone, rule=rule)
    stamp = now or dt.datetime.now(dt.UTC)
    recorded: list[Anomaly] = []
    for anomaly in found:
        event_id = anomaly_event_id(anomaly)
        attributes = {
            "hour": anomaly.hour.isoformat(),
            "calls": anomaly.calls,
            "median_usd": str(anomaly.median_usd),
            "mad_usd": str(anomaly.mad_usd),
            "threshold_usd": str(anomaly.threshold_usd),
            "ratio": anomaly.ratio,
            "history_days": anomaly.history_days,
        }
        inserted = con.execute(
            "INSERT OR IGNORE INTO budget_events (event_id, ts, day, kind, tenant, context, "
            "purpose, cap_usd, spent_usd, service_name, attributes) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT budget_cap_usd FROM llm_budget_daily WHERE day = ? AND tenant = ? "
            "AND context = ? AND purpose = ?), ?, ?, ? RETURNING event_id",
            [
                event_id,
                stamp,
                anomaly.hour.date(),
                ANOMALY_KIND,
                anomaly.tenant,
                anomaly.context,
                anomaly.purpose,
                anomaly.hour.date(),
                anomaly.tenant,
                anomaly.context,
                anomaly.purpose,
                anomaly.spent_usd,
                "comptroller.analytics",
                json.dumps(attributes),
            ],
        ).fetchall()
        if inserted:
            recorded.append(replace(anomaly, event_id=event_id))
    return recorded
