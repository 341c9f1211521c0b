"""The operations views: Circuits, Profiles (history, diff, rollback), Calls (live tail) and
Alerts (budget warnings, webhook deliveries)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable, Label

from comptroller.tui import _format as fmt
from comptroller.tui._admin import ProfileRef
from comptroller.tui._model import TimeFrame, ViewData
from comptroller.tui._queries import QuerySpec, view_queries
from comptroller.tui._view_base import View
from comptroller.tui._widgets import Column, Context, DataGrid, Row

_STRIP = {"opened": ("█", "red"), "half_opened": ("▄", "yellow"), "closed": ("▁", "green")}
_RANK = {"closed": 0, "half_opened": 1, "opened": 2}


def circuit_strip(events: list[dict[str, object]], frame: TimeFrame) -> Text:
    """One character per bucket of `frame`: the worst state the circuit was in during it.

    `events` are one circuit's changes in the range; before the first one the state is
    unknown (`·`).
    """
    zone = dt.UTC if frame.timezone == "UTC" else None
    from zoneinfo import ZoneInfo

    tz = zone or ZoneInfo(frame.timezone)
    changes = sorted(
        (e["ts"], str(e["state"])) for e in events if isinstance(e.get("ts"), dt.datetime)
    )
    starts = [b.replace(tzinfo=tz) for b in frame.buckets]
    step = dt.timedelta(hours=1) if frame.bucket == "hour" else dt.timedelta(days=1)
    out = Text()
    state: str | None = None
    i = 0
    for start in starts:
        end = start + step
        worst = state
        while i < len(changes) and changes[i][0] < end:  # type: ignore[operator]
            state = changes[i][1]
            if worst is None or _RANK.get(state, 0) > _RANK.get(worst, 0):
                worst = state
            i += 1
        if start > frame.now:
            out.append(" ")
        elif worst is None:
            out.append("·", style="dim")
        else:
            char, style = _STRIP.get(worst, ("?", ""))
            out.append(char, style=style)
    return out


class CircuitsView(View):
    """What is open now and since when; a strip per circuit over the range; every change."""

    VIEW_ID = "circuits"
    TITLE = "Circuits"

    def compose_body(self) -> ComposeResult:
        yield DataGrid(
            "Open now",
            [
                Column(key="provider", label="Provider"),
                Column(key="model", label="Model"),
                Column(key="state", label="State"),
                Column(key="since", label="Since", kind="instant"),
                Column(key="for", label="For", kind="ago"),
                Column(key="reason", label="Reason"),
                Column(key="failures", label="Fails", kind="count"),
            ],
            id="circuits-open",
            empty="all closed",
        )
        yield DataGrid(
            "Timeline",
            [
                Column(key="provider", label="Provider"),
                Column(key="model", label="Model"),
                Column(key="strip", label="Timeline", kind="raw"),
                Column(key="state", label="Now"),
                Column(key="opened_in_range", label="Opened", kind="count"),
            ],
            id="circuits-state",
        )
        yield DataGrid(
            "Changes",
            [
                Column(key="ts", label="When", kind="instant"),
                Column(key="provider", label="Provider"),
                Column(key="model", label="Model"),
                Column(key="state", label="State"),
                Column(key="reason", label="Reason"),
                Column(key="failures", label="Fails", kind="count"),
                Column(key="calls", label="Calls", kind="count"),
            ],
            id="circuits-events",
        )

    def queries(self) -> list[QuerySpec]:
        return view_queries("circuits")

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        rows, truncated = self.rows_of("circuits_open")
        for row in rows:
            row["for"] = row.get("since")
        self.query_one("#circuits-open", DataGrid).set_rows(rows, truncated=truncated, context=ctx)
        events, events_truncated = self.rows_of("circuit_timeline")
        per_key: dict[tuple[object, object], list[dict[str, object]]] = defaultdict(list)
        for event in events:
            per_key[(event.get("provider"), event.get("model"))].append(event)
        rows, truncated = self.rows_of("circuit_state")
        if data.frame is not None:
            for row in rows:
                row["strip"] = circuit_strip(
                    per_key.get((row.get("provider"), row.get("model")), []), data.frame
                )
        self.query_one("#circuits-state", DataGrid).set_rows(rows, truncated=truncated, context=ctx)
        self.query_one("#circuits-events", DataGrid).set_rows(
            events, truncated=events_truncated, context=ctx
        )


class ProfilesView(View):
    """Active profile per purpose and scope; its versions; diff two; roll one back."""

    VIEW_ID = "profiles"
    TITLE = "Profiles"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "mark", "Mark for diff", id="profiles.mark"),
        Binding("d", "diff", "Diff", id="profiles.diff"),
        Binding("R", "rollback", "Roll back", id="profiles.rollback"),
    ]

    class DiffRequested(Message):
        """Show the differences between two versions."""

        def __init__(
            self, older: ProfileRef, newer: ProfileRef, details: dict[int, str | None]
        ) -> None:
            super().__init__()
            self.older = older
            self.newer = newer
            self.details = details

    class RollbackRequested(Message):
        """Roll the profile back to `target` (the app confirms and checks the operator)."""

        def __init__(self, target: ProfileRef, current: int | None) -> None:
            super().__init__()
            self.target = target
            self.current = current

    def __init__(self) -> None:
        super().__init__()
        self.selected: tuple[str, str, str | None] | None = None
        self.marked: int | None = None

    def compose_body(self) -> ComposeResult:
        yield DataGrid(
            "Active profiles",
            [
                Column(key="purpose", label="Purpose"),
                Column(key="scope", label="Scope"),
                Column(key="version", label="Ver", kind="count"),
                Column(key="model", label="Model"),
                Column(key="since", label="Since", kind="instant"),
                Column(key="actor", label="By"),
                Column(key="action", label="How"),
            ],
            id="profiles-active",
        )
        yield Label("", classes="crumb", id="profiles-crumb")
        yield DataGrid(
            "History",
            [
                Column(key="ts", label="When", kind="instant"),
                Column(key="mark", label="", kind="raw"),
                Column(key="version", label="Ver", kind="count"),
                Column(key="action", label="Action"),
                Column(key="previous_version", label="From", kind="count"),
                Column(key="model", label="Model"),
                Column(key="actor", label="By"),
                Column(key="reason", label="Why"),
                Column(key="scope", label="Scope"),
            ],
            id="profiles-history",
        )

    def on_mount(self) -> None:
        self._crumb()

    def _crumb(self) -> None:
        if self.selected is None:
            text = "History of every profile   (enter on a profile: its versions · m mark · d diff · R roll back)"
        else:
            purpose, kind, ident = self.selected
            scope = kind if not ident else f"{kind}:{ident}"
            text = f"Versions of {purpose} @ {scope}   (esc: all · m mark · d diff · R roll back)"
        if self.marked is not None:
            text += f"   marked v{self.marked}"
        self.query_one("#profiles-crumb", Label).update(text)

    def queries(self) -> list[QuerySpec]:
        history: dict[str, object] = {}
        if self.selected is not None:
            purpose, kind, ident = self.selected
            history = {"purpose": purpose, "scope_kind": kind, "scope_id": ident}
        return view_queries("profiles", history=history)

    def select(self, purpose: str, scope_kind: str, scope_id: str | None) -> None:
        """Show the versions of one profile."""
        self.selected = (purpose, scope_kind, scope_id)
        self.marked = None
        self._crumb()
        self.call_after_refresh(self.query_one("#profiles-history", DataGrid).table.focus)
        self.post_message(View.StateChanged(self))

    def back(self) -> bool:
        if self.selected is None and self.marked is None:
            return False
        self.selected = None
        self.marked = None
        self._crumb()
        self.call_after_refresh(self.focus_default)
        self.post_message(View.StateChanged(self))
        return True

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        grid = event.data_table.parent
        if isinstance(grid, DataGrid) and grid.id == "profiles-active":
            event.stop()
            row = grid.current_row()
            if row is not None:
                scope_id = row.get("scope_id")
                self.select(
                    str(row["purpose"]), str(row["scope_kind"]), str(scope_id) if scope_id else None
                )

    def _history_row(self) -> Row | None:
        return self.query_one("#profiles-history", DataGrid).current_row()

    def _ref(self, row: dict[str, object], version: int) -> ProfileRef:
        scope_id = row.get("scope_id")
        return ProfileRef(
            purpose=str(row.get("purpose")),
            scope_kind=str(row.get("scope_kind") or "global"),
            scope_id=str(scope_id) if scope_id else None,
            version=version,
        )

    def action_mark(self) -> None:
        """Mark the version under the cursor as one side of a diff."""
        row = self._history_row()
        if row is None or row.get("version") is None:
            self.notify("put the cursor on a version in the history first", severity="warning")
            return
        self.marked = int(row["version"])
        self._crumb()
        self._redraw_history()

    def action_diff(self) -> None:
        """Diff the version under the cursor with the marked one (or the one it replaced)."""
        row = self._history_row()
        if row is None or row.get("version") is None:
            self.notify("put the cursor on a version in the history first", severity="warning")
            return
        version = int(row["version"])
        other = (
            self.marked
            if self.marked is not None and self.marked != version
            else row.get("previous_version")
        )
        if other is None:
            self.notify(f"v{version} has no earlier version: mark one with m", severity="warning")
            return
        other_version = int(other)
        details: dict[int, str | None] = {}
        for candidate in self.query_one("#profiles-history", DataGrid).rows:
            # A warning row carries the version it warns about but not that version's diff.
            if candidate.get("warning") is not None:
                continue
            if candidate.get("version") is not None and self._same_profile(candidate, row):
                details.setdefault(int(candidate["version"]), candidate.get("detail"))
        low, high = sorted((version, other_version))
        self.post_message(self.DiffRequested(self._ref(row, low), self._ref(row, high), details))

    def action_rollback(self) -> None:
        """Ask to make the version under the cursor active again."""
        row = self._history_row()
        if row is None or row.get("version") is None:
            self.notify("put the cursor on the version to roll back to", severity="warning")
            return
        current = None
        for active in self.query_one("#profiles-active", DataGrid).rows:
            if self._same_profile(active, row):
                current = active.get("version")
        self.post_message(
            self.RollbackRequested(
                self._ref(row, int(row["version"])), int(current) if current is not None else None
            )
        )

    @staticmethod
    def _same_profile(a: dict[str, object], b: dict[str, object]) -> bool:
        return all(a.get(k) == b.get(k) for k in ("purpose", "scope_kind", "scope_id"))

    def _version_mark(self, row: dict[str, object]) -> Text:
        marked = self.selected is not None and row.get("version") == self.marked
        return Text("◆", style="bold") if marked else Text("")

    def _redraw_history(self) -> None:
        grid = self.query_one("#profiles-history", DataGrid)
        for row in grid.rows:
            row["mark"] = self._version_mark(row)
        if grid.context is not None:
            grid.set_rows(grid.rows, truncated=grid.truncated, context=grid.context)

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        rows, truncated = self.rows_of("profiles_active")
        for row in rows:
            row["scope"] = _scope(row)
        self.query_one("#profiles-active", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )
        rows, truncated = self.rows_of("profile_history")
        for row in rows:
            row["scope"] = _scope(row)
            row["mark"] = self._version_mark(row)
            if row.get("action") == "warning":
                _show_warning(row)
        self.query_one("#profiles-history", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )


_WARNINGS = {"embedding_model_changed": "embedding model changed"}
"""What a profile warning (the `warning` of its detail) is called in the history."""


def _show_warning(row: dict[str, object]) -> None:
    """Make a warning row readable at a glance: what it warns of, the models before and
    after the change, and what to do about it, in the warning style."""
    kind = row.get("warning")
    name = _WARNINGS.get(str(kind), str(kind).replace("_", " ")) if kind else "warning"
    row["action"] = Text(f"⚠ {name}", style="bold yellow")
    before, after = row.get("warning_before"), row.get("warning_after")
    if before and after:
        row["model"] = Text(f"{before} → {after}", style="yellow")
    message = row.get("warning_message")
    if message:
        # The admin's reason is on the activation row next to it; here, what to do now.
        row["reason"] = Text(str(message), style="yellow")


def _scope(row: dict[str, object]) -> str:
    kind = str(row.get("scope_kind") or "global")
    ident = row.get("scope_id")
    return kind if not ident else f"{kind}:{ident}"


class CallsView(View):
    """The live tail of calls; enter opens the spans of a call's trace."""

    VIEW_ID = "calls"
    TITLE = "Calls"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "copy_trace", "Copy trace id", id="calls.copy_trace"),
    ]

    class TraceRequested(Message):
        """Open the spans of one trace."""

        def __init__(self, trace_id: str, call: dict[str, object]) -> None:
            super().__init__()
            self.trace_id = trace_id
            self.call = call

    def compose_body(self) -> ComposeResult:
        yield DataGrid(
            "Calls",
            [
                Column(key="ts", label="Time", kind="instant"),
                Column(key="tenant", label="Tenant"),
                Column(key="purpose", label="Purpose"),
                Column(key="model", label="Model"),
                Column(key="outcome", label="Outcome"),
                Column(key="latency_ms", label="Latency", kind="ms"),
                Column(key="tokens", label="Tokens", kind="count"),
                Column(key="cost_usd", label="Cost", kind="money"),
                Column(key="context", label="Context"),
                Column(key="user_id", label="User"),
                Column(key="feature", label="Feature"),
                Column(key="attempt", label="Try", kind="count"),
                Column(key="fallback_depth", label="Fb", kind="count"),
                Column(key="trace_id", label="Trace"),
            ],
            id="calls-tail",
        )

    def queries(self) -> list[QuerySpec]:
        return view_queries("calls")

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        rows, truncated = self.rows_of("calls")
        for row in rows:
            row["tokens"] = int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0)
        self.query_one("#calls-tail", DataGrid).set_rows(rows, truncated=truncated, context=ctx)

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        row = self.query_one("#calls-tail", DataGrid).current_row()
        if row is not None and row.get("trace_id"):
            self.post_message(self.TraceRequested(str(row["trace_id"]), row))
        elif row is not None:
            self.notify("this call has no trace id", severity="warning")

    def action_copy_trace(self) -> None:
        """Copy the trace id of the call under the cursor."""
        row = self.query_one("#calls-tail", DataGrid).current_row()
        if row is None or not row.get("trace_id"):
            self.notify("no trace id here", severity="warning")
            return
        self.app.copy_to_clipboard(str(row["trace_id"]))
        self.notify(f"copied trace id {row['trace_id']}")


class AlertsView(View):
    """Today's budget warnings, and what became of the alerts sent to webhooks."""

    VIEW_ID = "alerts"
    TITLE = "Alerts"

    def compose_body(self) -> ComposeResult:
        yield DataGrid(
            "Budget warnings today",
            [
                Column(key="ts", label="When", kind="instant"),
                Column(key="tenant", label="Tenant"),
                Column(key="context", label="Context"),
                Column(key="purpose", label="Purpose"),
                Column(key="warning", label="Warning", kind="raw"),
                Column(key="spent_usd", label="Spent then", kind="money"),
            ],
            id="alerts-warnings",
            empty="no budget warned today",
        )
        yield DataGrid(
            "Webhooks",
            [
                Column(key="webhook", label="Webhook"),
                Column(key="delivered", label="Delivered", kind="count"),
                Column(key="failed", label="Failed", kind="count"),
                Column(key="last_delivered_ts", label="Last delivery", kind="instant"),
                Column(key="last_error", label="Last error"),
            ],
            id="alerts-webhooks",
            empty="no alert sent in the range (none configured, or nothing to tell)",
        )
        yield DataGrid(
            "Failed alerts",
            [
                Column(key="ts", label="When", kind="instant"),
                Column(key="alert", label="Alert"),
                Column(key="subject", label="About"),
                Column(key="webhook", label="Webhook"),
                Column(key="attempts", label="Tries", kind="count"),
                Column(key="error", label="Error"),
            ],
            id="alerts-failed",
            empty="none failed",
        )

    def queries(self) -> list[QuerySpec]:
        return view_queries("alerts")

    def show(self, data: ViewData, ctx: Context) -> None:
        self.data = data
        rows, truncated = self.rows_of("budget_warnings")
        for row in rows:
            row["warning"] = warning_text(row)
        self.query_one("#alerts-warnings", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )
        rows, truncated = self.rows_of("alert_webhooks")
        for row in rows:
            if not row.get("failed"):
                row["failed"] = None  # a dash, not a 0 to read past
        self.query_one("#alerts-webhooks", DataGrid).set_rows(
            rows, truncated=truncated, context=ctx
        )
        rows, truncated = self.rows_of("alert_failures")
        self.query_one("#alerts-failed", DataGrid).set_rows(rows, truncated=truncated, context=ctx)


def warning_text(row: dict[str, object]) -> Text:
    """What a budget warning warns of, readably: `80 % of $1.00` (a share of the cap
    crossed) or `projected $1.24 by midnight` (the day's burn rate will cross the cap)."""
    cap = row.get("cap_usd")
    projected = row.get("projected_usd")
    threshold = row.get("threshold")
    if row.get("warning_kind") == "projected" or (projected is not None and threshold is None):
        shown = (
            f"projected {fmt.money(projected)} by midnight"
            if projected is not None
            else "projected"
        )
        return Text(shown, style="yellow")
    if isinstance(threshold, int | float):
        style = "bold red" if threshold >= 1 else "yellow"
        return Text(f"{threshold * 100:g} % of {fmt.money(cap)}", style=style)
    # A warning from before warnings said what they crossed: the share spent when raised.
    spent = row.get("spent_usd")
    if isinstance(cap, int | float | Decimal) and isinstance(spent, int | float | Decimal) and cap:
        return Text(f"{float(spent) / float(cap) * 100:.0f} % of {fmt.money(cap)}", style="yellow")
    return Text("warning", style="yellow")
