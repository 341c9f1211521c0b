"""Which dashboard panels each view runs, and how the global filters reach them.

Every figure on screen comes from a panel of `comptroller.dashboards`, the same panels the
CLI and CI reports read: one panel per question, with optional `tenant`/`purpose`/`context`
parameters for the dashboard's global filters (no copy of a panel for the dashboard). A
filter a panel does not declare is applied to its rows afterwards when the rows carry that
column (e.g. `context` on `budget_state`, whose rows are one per key, so the result stays
exact). Money comes as the panels give it (DECIMAL); the views write it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from comptroller.dashboards import Panel, PanelSet
from comptroller.tui._model import Filters, QueryResult, TimeFrame, ViewId
from comptroller.tui._source import Reader

if TYPE_CHECKING:
    import pyarrow as pa

_FILTERS = ("tenant", "purpose", "context", "attribute")


@dataclass(frozen=True, kw_only=True, slots=True)
class QuerySpec:
    """One query of a view: the panel it runs and the parameters beyond the filters."""

    key: str
    """The name the view knows the result by."""
    panel: str
    params: Mapping[str, object] = field(default_factory=dict)
    cap: int | None = None
    """Row cap; None means the dashboard's `max_rows`."""
    filtered: bool = True
    """Whether the global filters apply (circuits and profile scopes do not have them)."""


def view_queries(
    view: ViewId,
    *,
    drill: str | None = None,
    trace_id: str | None = None,
    history: Mapping[str, object] | None = None,
) -> list[QuerySpec]:
    """The queries one refresh of `view` runs, given its drill-down state."""
    if view == "overview":
        # The overview is about today whatever range the spend view shows.
        today = {"since": "today", "until": "today"}
        return [
            QuerySpec(key="spend_today", panel="spend_today"),
            QuerySpec(key="spend_month", panel="spend_month"),
            QuerySpec(key="burn_rate", panel="burn_rate"),
            QuerySpec(key="top_purposes", panel="top_purposes", params=today, cap=10),
            QuerySpec(key="top_tenants", panel="top_tenants", params=today, cap=10),
            QuerySpec(
                key="budgets_near_cap", panel="budget_state", params={"min_utilisation": 0.8}
            ),
            QuerySpec(key="circuits_open", panel="circuits_open", filtered=False),
            QuerySpec(key="profile_changes", panel="profile_changes", cap=10),
        ]
    if view == "spend":
        specs = [
            QuerySpec(key="spend_by_purpose", panel="top_purposes"),
            QuerySpec(key="spend_by_attribution", panel="spend_by_attribution", cap=50),
            QuerySpec(key="spend_daily", panel="spend_daily", cap=5000),
            QuerySpec(key="spend_hourly", panel="spend_hourly", cap=5000),
        ]
        if drill is not None:
            # The drill-down is the purpose filter of the shared panels, set to the purpose.
            specs += [
                QuerySpec(
                    key="spend_tenants",
                    panel="spend_by_tenant_context",
                    params={"purpose": drill},
                ),
                QuerySpec(key="spend_models", panel="spend_by_model", params={"purpose": drill}),
            ]
        return specs
    if view == "budgets":
        return [
            QuerySpec(key="budget_state", panel="budget_state"),
            QuerySpec(key="budget_events", panel="budget_events"),
        ]
    if view == "circuits":
        return [
            QuerySpec(key="circuits_open", panel="circuits_open", filtered=False),
            QuerySpec(key="circuit_state", panel="circuit_state", filtered=False),
            QuerySpec(key="circuit_timeline", panel="circuit_timeline", filtered=False),
        ]
    if view == "alerts":
        # Warnings are per budget day: today's, whatever range the deliveries show.
        return [
            QuerySpec(
                key="budget_warnings",
                panel="budget_events",
                params={"kind": "warning", "since": "day_start"},
            ),
            QuerySpec(key="alert_webhooks", panel="alert_webhooks", filtered=False),
            QuerySpec(
                key="alert_failures",
                panel="alert_deliveries",
                params={"status": "failed"},
                filtered=False,
            ),
        ]
    if view == "profiles":
        # A profile's versions are read whole (no range): a diff or a rollback may need a
        # version older than the range on screen.
        return [
            QuerySpec(key="profiles_active", panel="profiles_active"),
            QuerySpec(
                key="profile_history",
                panel="profile_history",
                params={"since": None, **(history or {})},
            ),
        ]
    specs = [QuerySpec(key="calls", panel="recent_calls")]
    if trace_id is not None:
        specs.append(
            QuerySpec(key="trace_spans", panel="trace_spans", params={"trace_id": trace_id})
        )
    return specs


def panel_params(
    panel: Panel, spec: QuerySpec, filters: Filters, frame: TimeFrame, cap: int
) -> dict[str, object]:
    """The values to bind `panel` with: the filters and range it declares, and `spec`'s own."""
    declared = {p.name for p in panel.params}
    given: dict[str, object] = {}
    if spec.filtered:
        for name in _FILTERS:
            if name in declared:
                given[name] = getattr(filters, name)
    if "since" in declared:
        given["since"] = frame.since
    if "until" in declared:
        given["until"] = frame.now
    if "tz" in declared:
        given["tz"] = frame.timezone
    if "limit" in declared:
        given["limit"] = cap + 1
    given.update({k: v for k, v in spec.params.items() if k in declared})
    return given


def run_query(
    reader: Reader,
    panels: PanelSet,
    spec: QuerySpec,
    *,
    filters: Filters,
    frame: TimeFrame,
    max_rows: int,
) -> QueryResult:
    """Run `spec`'s panel through `reader`, capped at `max_rows` (or the spec's cap).

    The cap is applied in SQL (the panel's `$limit`, or an outer LIMIT), one row more than
    shown, so a big result is never materialised and truncation is known.

    Raises:
        comptroller.errors.ComptrollerError: The panel is missing, or its query failed.
        duckdb.Error: The query failed on a DuckDB reader.
    """
    panel = panels[spec.panel]
    cap = spec.cap or max_rows
    bound = panel.bind(
        panel_params(panel, spec, filters, frame, cap), now=frame.now, timezone=frame.timezone
    )
    sql = panel.sql.strip().rstrip(";")
    if not any(p.name == "limit" for p in panel.params):
        sql = f"SELECT * FROM ({sql}) AS _capped LIMIT {cap + 1}"
    table = reader.query(sql, bound)
    truncated = table.num_rows > cap
    if spec.filtered:
        table = _post_filter(table, panel, filters)
    return QueryResult(table=table.slice(0, cap), truncated=truncated)


def _post_filter(table: pa.Table, panel: Panel, filters: Filters) -> pa.Table:
    import pyarrow as pa  # only when a filter is set: keeps start-up light
    import pyarrow.compute as pc

    declared = {p.name for p in panel.params}
    for name in _FILTERS:
        value = getattr(filters, name)
        if value is not None and name not in declared and name in table.column_names:
            table = table.filter(pc.equal(table[name], pa.scalar(value)))
    return table
