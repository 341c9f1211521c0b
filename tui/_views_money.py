"""The money views: Overview, Spend (with drill-down) and Budgets."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.widgets import DataTable, Label

from comptroller.tui import _format as fmt
from comptroller.tui._model import TimeFrame, ViewData
from comptroller.tui._queries import QuerySpec, view_queries
from comptroller.tui._view_base import View
from comptroller.tui._widgets import Column, Context, DataGrid, Stat

if TYPE_CHECKING:
    from comptroller.pricing import Pricer

_COST = Column(key="cost_usd", label="Cost", kind="money")
_CALLS = Column(key="calls", label="Calls", kind="count")


class OverviewView(View):
    """Today and the month at a glance, with what needs attention now."""

    VIEW_ID = "overview"
    TITLE = "Overview"

    DEFAULT_CSS = """
    OverviewView > #stats { height: 3; }
    OverviewView > #tiles { grid-size: 2 3; grid-gutter: 0 1; height: 1fr; }
    OverviewView #tile-profile-changes { column-span: 2; }
    """

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="stats"):
            yield Stat("Today", id="stat-today")
            yield Stat("Month to date", id="stat-month")
            yield Stat("Burn rate", id="stat-burn")
            yield Stat("Calls today", id="stat-calls")
        with Grid(id="tiles"):
            yield DataGrid(
                "Top purposes today",
                [Column(key="purpose", label="Purpose"), _COST, _CALLS],
                id="tile-top-purposes",
            )
            yield DataGrid(
                "Top tenants today",
                [Column(key="tenant", label="Tenant"), _COST, _CALLS],
                id="tile-top-tenants",
            )
            yield DataGrid(
                "Budgets near cap or refusing calls",
                [
                    Column(key="tenant", label="Tenant"),
                    Column(key="context", label="Context"),
                    Column(key="purpose", label="Purpose"),
                    # Status before Used: on 80 columns the tile cuts its last column.
                    Column(key="status", label="Status"),
                    Column(key="utilisation", label="Used", kind="pct"),
                ],
                id="tile-budgets",
                empty="none",
            )
            yield DataGrid(
                "Circuits open now",
                [
                    Column(key="provider", label="Provider"),
                    Column(key="model", label="Model"),
                    Column(key="state", label="State"),
                    Column(key="since", label="For", kind="ago"),
                ],
                id="tile-circuits",
                empty="none",
            )
            yield DataGrid(
                "Latest profile changes",
                [
                    Column(key="ts", label="When", kind="instant"),
                    Column(key="action", label="Action"),
                    Column(key="purpose", label="Purpose"),
                    Column(key="scope", label="Scope"),
                    Column(key="version", label="Ver", kind="count"),
                    Column(key="model", label="Model"),
                    Column(key="actor", label="By"),
                ],
                id="tile-profile-changes",
            )

    def queries(self) -> list[QuerySpec]:
        return view_queries("overview")

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        today = self._first_row("spend_today")
        burn = self._first_row("burn_rate")
        # "today → projected" is read as one pair: one precision for both, from one query.
        spent, projected = fmt.money_column(
            [burn.get("spent_usd", 0), burn.get("projected_usd", 0)]
        )
        self.query_one("#stat-today", Stat).set_value(f"{spent} → {projected} eod")
        self.query_one("#stat-month", Stat).set_value(
            fmt.money(self._first_row("spend_month").get("cost_usd", 0))
        )
        self.query_one("#stat-burn", Stat).set_value(f"{fmt.money(burn.get('usd_per_hour', 0))}/h")
        errors = today.get("errors") or 0
        unpriced = today.get("unpriced_calls") or 0
        calls_stat = self.query_one("#stat-calls", Stat)
        calls_stat.border_title = (
            f"Calls today · {unpriced} unpriced" if unpriced else "Calls today"
        )
        calls_stat.set_value(
            fmt.count(today.get("calls", 0)) + (f" · {fmt.count(errors)} err" if errors else "")
        )
        for key, grid_id in (
            ("top_purposes", "#tile-top-purposes"),
            ("top_tenants", "#tile-top-tenants"),
            ("budgets_near_cap", "#tile-budgets"),
            ("circuits_open", "#tile-circuits"),
        ):
            rows, truncated = self.rows_of(key)
            if key == "budgets_near_cap":
                for row in rows:
                    _mark_refused(row)
            self.query_one(grid_id, DataGrid).set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("profile_changes")
        for row in rows:
            row["scope"] = _scope(row)
        self.query_one("#tile-profile-changes", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )

    def _first_row(self, key: str) -> dict[str, object]:
        rows = self.rows_of(key)[0]
        return rows[0] if rows else {}


def _mark_refused(row: dict[str, object]) -> None:
    """Show a key that refused calls today in red, like a cap reached."""
    if row.get("status") == "refused":
        row["status"] = Text("refused", style="bold red")


def refusal_why(row: dict[str, object]) -> str:
    """Why a budget key refused calls, from its `budget_state` row: the worst-case
    reservation of the last refused call against what was left of the cap."""
    calls, last = row.get("refused_calls"), row.get("last_refusal")
    if not calls or not isinstance(last, Mapping):
        return ""
    # Read where the rows came from (analytics is loaded by then): the one reading of a
    # refusal, shared with `budget check` and the report.
    from comptroller.analytics import Refusals

    refusals = Refusals.from_last(int(str(calls)), last)
    needed, left = fmt.money_column([refusals.needed_usd, refusals.left_usd])
    if refusals.needed_usd is None:
        return f"worst case > {left} left"
    return f"needed {needed} > {left} left"


def _scope(row: dict[str, object]) -> str:
    kind = str(row.get("scope_kind") or "global")
    ident = row.get("scope_id")
    return kind if not ident else f"{kind}:{ident}"


def series(
    rows: list[dict[str, object]], frame: TimeFrame, key: str, *, bucket_key: str = "bucket"
) -> dict[str, list[float]]:
    """Spend per `key` per bucket of `frame` (the row's `bucket_key`), buckets without rows
    at 0."""
    index: dict[object, int] = {}
    for n, start in enumerate(frame.buckets):
        index[start.date() if frame.bucket == "day" else start] = n
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(frame.buckets))
    for row in rows:
        bucket = row.get(bucket_key)
        if isinstance(bucket, dt.datetime) and frame.bucket == "day":
            bucket = bucket.date()
        if isinstance(bucket, dt.datetime) and bucket.tzinfo is not None:
            bucket = bucket.replace(tzinfo=None)
        position = index.get(bucket)
        if position is not None:
            out[str(row.get(key))][position] += float(row.get("cost_usd") or 0.0)  # type: ignore[arg-type]
    return out


class SpendView(View):
    """Spend by purpose over the range, with a trend per purpose; enter drills into one."""

    VIEW_ID = "spend"
    TITLE = "Spend"

    def __init__(self) -> None:
        super().__init__()
        self.drill: str | None = None
        self._savings_prices: str | None = None
        """The `$prices` of the cache_savings panel: the per-token savings of the models
        seen reading from a prompt cache (None until the first refresh found some)."""
        self._priced: dict[tuple[str, str | None, str | None], tuple[dt.date, dt.date]] = {}
        """UTC days whose prices `_savings_prices` holds, per (provider, response model,
        request model)."""
        self._pricer: Pricer | None = None

    def compose_body(self) -> ComposeResult:
        yield Label("", classes="crumb", id="spend-crumb")
        yield DataGrid(
            "Spend by purpose",
            [
                Column(key="purpose", label="Purpose"),
                _COST,
                _CALLS,
                Column(key="tokens", label="Tokens", kind="count"),
                Column(key="unpriced_calls", label="Unpriced", kind="count"),
                Column(key="trend", label="Trend", kind="raw"),
            ],
            id="spend-purposes",
        )
        yield DataGrid(
            "Tenants and contexts",
            [
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                _COST,
                _CALLS,
                Column(key="tokens", label="Tokens", kind="count"),
            ],
            id="spend-tenants",
        )
        yield DataGrid(
            "Models",
            [
                Column(key="provider", label="Provider"),
                Column(key="model", label="Model"),
                _COST,
                _CALLS,
                Column(key="tokens", label="Tokens", kind="count"),
            ],
            id="spend-models",
        )
        # Shown only while some call in the range carried an end user, a feature or a tag.
        yield DataGrid(
            "By end user, feature and tag (from the calls; f: filter on one)",
            [
                Column(key="dimension", label="Who"),
                Column(key="value", label="Value"),
                _COST,
                _CALLS,
                Column(key="fees_usd", label="Fees", kind="money"),
                Column(key="unpriced_calls", label="Unpriced", kind="count"),
            ],
            id="spend-attribution",
        )
        # Shown only while some call in the range reported non-token fees.
        yield DataGrid(
            "Non-token fees (web searches, file searches, code runs; part of the spend)",
            [
                Column(key="purpose", label="Purpose"),
                Column(key="model", label="Model"),
                _CALLS,
                Column(key="web_searches", label="Web searches", kind="count"),
                Column(key="storage_searches", label="File searches", kind="count"),
                Column(key="code_executions", label="Code runs", kind="count"),
                Column(key="fees_usd", label="Fees", kind="money"),
            ],
            id="spend-fees",
        )
        # Shown only while some call in the range read from a prompt cache.
        yield DataGrid(
            "Prompt-cache savings (cached tokens priced as input, minus their cache-read price)",
            [
                Column(key="purpose", label="Purpose"),
                Column(key="model", label="Model"),
                _CALLS,
                Column(key="cache_read_tokens", label="Cached tokens", kind="count"),
                Column(key="saved_usd", label="Saved", kind="money"),
            ],
            id="spend-cache-savings",
        )

    def on_mount(self) -> None:
        self.query_one("#spend-cache-savings").display = False
        self.query_one("#spend-attribution").display = False
        self.query_one("#spend-fees").display = False
        self._layout()

    def _layout(self) -> None:
        drilled = self.drill is not None
        self.query_one("#spend-purposes").display = not drilled
        self.query_one("#spend-tenants").display = drilled
        self.query_one("#spend-models").display = drilled
        crumb = self.query_one("#spend-crumb", Label)
        crumb.update(
            f"Spend › {self.drill}   (esc: back to all purposes)"
            if drilled
            else "Spend by purpose   (enter: drill into tenants and models)"
        )

    def queries(self) -> list[QuerySpec]:
        # The savings need prices the ledger does not hold: the panel gets those of the
        # models it found with cache reads last time (`_learn_prices`).
        savings: dict[str, object] = {"prices": self._savings_prices}
        if self.drill is not None:
            savings["purpose"] = self.drill
        fees: dict[str, object] = {} if self.drill is None else {"purpose": self.drill}
        return [
            *view_queries("spend", drill=self.drill),
            QuerySpec(key="cache_savings", panel="cache_savings", params=savings),
            QuerySpec(key="fees", panel="fees", params=fees),
        ]

    def drill_into(self, purpose: str) -> None:
        """Show the tenants and models of `purpose`."""
        self.drill = purpose
        self._layout()
        self.call_after_refresh(self.focus_default)  # once the tables are shown
        self.post_message(View.StateChanged(self))

    def back(self) -> bool:
        if self.drill is None:
            return False
        self.drill = None
        self._layout()
        self.call_after_refresh(self.focus_default)
        self.post_message(View.StateChanged(self))
        return True

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        grid = event.data_table.parent
        if isinstance(grid, DataGrid) and grid.id == "spend-purposes":
            event.stop()
            row = grid.current_row()
            if row is not None and row.get("purpose") is not None:
                self.drill_into(str(row["purpose"]))

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        frame = data.frame
        rows, truncated = self.rows_of("spend_by_purpose")
        if frame is not None:
            hourly = frame.bucket == "hour"
            trend_rows = self.rows_of("spend_hourly" if hourly else "spend_daily")[0]
            trends = series(trend_rows, frame, "purpose", bucket_key="bucket" if hourly else "day")
            for row in rows:
                values = trends.get(str(row.get("purpose")), [0.0] * len(frame.buckets))
                row["trend"] = Text(fmt.sparkline(values), style="green")
        for row in rows:
            row["tokens"] = _tokens(row)
        self.query_one("#spend-purposes", DataGrid).set_rows(rows, truncated=truncated, context=ctx)
        if self.drill is not None:
            for key, grid_id in (
                ("spend_tenants", "#spend-tenants"),
                ("spend_models", "#spend-models"),
            ):
                rows, truncated = self.rows_of(key)
                for row in rows:
                    row["tokens"] = _tokens(row)
                grid = self.query_one(grid_id, DataGrid)
                grid.title_text = f"{self.drill} · {'tenants and contexts' if key == 'spend_tenants' else 'models'}"
                grid.set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("spend_by_attribution")
        attributed = self.query_one("#spend-attribution", DataGrid)
        attributed.display = bool(rows) and self.drill is None
        if rows:
            attributed.set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("fees")
        fee_grid = self.query_one("#spend-fees", DataGrid)
        fee_grid.display = bool(rows)
        if rows:
            fee_grid.set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("cache_savings")
        savings = self.query_one("#spend-cache-savings", DataGrid)
        savings.display = bool(rows)
        if rows:
            savings.set_rows(rows, truncated=truncated, context=ctx)
            if self._learn_prices(rows):
                self.post_message(View.StateChanged(self))  # refresh now, with the prices

    def _learn_prices(self, rows: list[dict[str, Any]]) -> bool:
        """Price the models of `rows` not priced yet (or on UTC days not covered yet);
        True when the prices changed."""
        wanted = dict(self._priced)
        for row in rows:
            first, last = row.get("first_ts"), row.get("last_ts")
            if not isinstance(first, dt.datetime) or not isinstance(last, dt.datetime):
                continue
            key = (
                str(row.get("provider") or ""),
                row.get("response_model"),
                row.get("request_model"),
            )
            start, end = first.astimezone(dt.UTC).date(), last.astimezone(dt.UTC).date()
            known = wanted.get(key)
            wanted[key] = (
                (start, end) if known is None else (min(start, known[0]), max(end, known[1]))
            )
        if wanted == self._priced:
            return False
        from comptroller.analytics import savings_prices
        from comptroller.pricing import Pricer

        if self._pricer is None:
            # genai-prices only: the dashboard has no fallback registry (`report` has).
            self._pricer = Pricer()
        keys = [
            {
                "provider": provider,
                "response_model": response_model,
                "request_model": request_model,
                "first_ts": dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC),
                "last_ts": dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC),
            }
            for (provider, response_model, request_model), (start, end) in wanted.items()
        ]
        self._savings_prices = savings_prices(self._pricer, keys)
        self._priced = wanted
        return True


def _tokens(row: dict[str, Any]) -> int:
    return int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)


class BudgetsView(View):
    """Every budget's use today, the keys spending far above their baseline this hour, where
    spend is heading by the end of the day and of the month, and the budget events."""

    VIEW_ID = "budgets"
    TITLE = "Budgets"

    def compose_body(self) -> ComposeResult:
        yield DataGrid(
            "Budgets today",
            [
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                Column(key="purpose", label="Purpose"),
                # Status first after the key: a refused key must be seen on an 80-column
                # terminal too, where the columns on the right scroll out of view.
                Column(key="status", label="Status"),
                Column(key="bar", label="Use", kind="raw"),
                Column(key="utilisation", label="Used", kind="pct"),
                Column(key="spent_usd", label="Spent", kind="money"),
                Column(key="cap_usd", label="Cap", kind="money"),
                Column(key="projected_usd", label="Proj. eod", kind="money"),
                Column(key="refused_calls", label="Refused", kind="count"),
                Column(key="why", label="Why refused (last call)"),
            ],
            id="budget-state",
            empty="no budget has a cap today",
        )
        yield DataGrid(
            "Spend anomalies this hour (far above the same hour on past days)",
            [
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                Column(key="purpose", label="Purpose"),
                Column(key="flag", label="Flag"),
                Column(key="spent_usd", label="This hour", kind="money"),
                Column(key="median_usd", label="Usual", kind="money"),
                Column(key="times", label="× usual"),
                Column(key="calls", label="Calls", kind="count"),
            ],
            id="budget-anomalies",
            empty="none",
        )
        yield DataGrid(
            "Forecast: day end (hour-of-day profile) and month end",
            [
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                Column(key="purpose", label="Purpose"),
                Column(key="spent_usd", label="Today", kind="money"),
                Column(key="day_end_usd", label="Day end", kind="money"),
                Column(key="cap_usd", label="Cap", kind="money"),
                Column(key="over", label="At day end"),
                Column(key="month_to_date_usd", label="Month", kind="money"),
                Column(key="month_end_usd", label="Month end", kind="money"),
            ],
            id="budget-forecast",
            empty="no spend to project",
        )
        yield DataGrid(
            "Budget events",
            [
                Column(key="ts", label="When", kind="instant"),
                Column(key="kind", label="Event"),
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                Column(key="purpose", label="Purpose"),
                Column(key="attribute", label="Who"),
                Column(key="spent_usd", label="Spent", kind="money"),
                Column(key="cap_usd", label="Cap", kind="money"),
                Column(key="reserved_usd", label="Reserved", kind="money"),
            ],
            id="budget-events",
        )

    def on_mount(self) -> None:
        self.query_one("#budget-anomalies").display = False

    def queries(self) -> list[QuerySpec]:
        return [
            *view_queries("budgets"),
            QuerySpec(key="anomalies", panel="anomalies"),
            QuerySpec(key="forecast", panel="forecast"),
        ]

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        rows, truncated = self.rows_of("anomalies")
        for row in rows:
            row["flag"] = Text("ANOMALY", style="bold magenta")
            ratio = row.get("ratio")
            row["times"] = "new" if ratio is None else f"{float(str(ratio)):.1f}×"
        anomalies = self.query_one("#budget-anomalies", DataGrid)
        # Shown only while some key is anomalous: the budgets keep the room otherwise.
        anomalies.display = bool(rows)
        anomalies.set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("forecast")
        for row in rows:
            cap, day_end = row.get("cap_usd"), row.get("day_end_usd")
            over = isinstance(cap, Decimal) and isinstance(day_end, Decimal) and day_end > cap
            row["over"] = Text("over cap", style="bold red") if over else ""
        self.query_one("#budget-forecast", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )
        rows, truncated = self.rows_of("budget_state")
        for row in rows:
            used = float(row.get("utilisation") or 0.0)
            refused = row.get("status") == "refused"
            colour = (
                "red"
                if used >= 1.0 or refused
                else "yellow"
                if row.get("status") == "warning"
                else "green"
            )
            row["bar"] = Text(fmt.bar(used, 10), style=colour)
            row["why"] = refusal_why(row)
            if not row.get("refused_calls"):
                row["refused_calls"] = None  # a dash, not a 0 to read past
            _mark_refused(row)
        self.query_one("#budget-state", DataGrid).set_rows(rows, truncated=truncated, context=ctx)
        rows, truncated = self.rows_of("budget_events")
        self.query_one("#budget-events", DataGrid).set_rows(rows, truncated=truncated, context=ctx)
