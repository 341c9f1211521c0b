"""The dashboard application: views, keys, global filters and the refresh machinery.

Refresh rules (Harlequin's and k9s's habits):
- every query runs in a thread worker that never touches a widget; it posts a message and
  the handler, on the UI thread, owns the state;
- each view reads through a reader of its own (its own DuckDB cursor);
- only the visible view refreshes, on an interval; a tick is skipped while that view's
  previous refresh still runs; hidden views catch up when shown;
- a refresh that returns the same rows redraws nothing;
- a failed query keeps the last good data on screen, marked stale with the error inline,
  and the next tick retries.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Footer, Input

from comptroller.dashboards import PanelSet, load_panels
from comptroller.tui._admin import ProfileAdmin, require_operator
from comptroller.tui._model import (
    RANGES,
    VIEW_IDS,
    Clock,
    Filters,
    Operator,
    QueryResult,
    TimeFrame,
    ViewData,
    ViewId,
    system_clock,
    time_frame,
)
from comptroller.tui._queries import QuerySpec, run_query, view_queries
from comptroller.tui._screens import (
    ConfirmScreen,
    DiffScreen,
    ExportScreen,
    FilterScreen,
    KeysScreen,
    TraceScreen,
)
from comptroller.tui._source import Reader, ReaderFactory
from comptroller.tui._view_base import View
from comptroller.tui._views_money import BudgetsView, OverviewView, SpendView
from comptroller.tui._views_ops import AlertsView, CallsView, CircuitsView, ProfilesView
from comptroller.tui._widgets import Context, DataGrid, NavBar, StatusBar

if TYPE_CHECKING:
    # Export pulls in Arrow's CSV and Parquet writers: imported when used, not at start.
    from comptroller.tui._export import ExportFormat

_VIEW_CLASSES: tuple[type[View], ...] = (
    OverviewView,
    SpendView,
    BudgetsView,
    CircuitsView,
    ProfilesView,
    CallsView,
    AlertsView,
)
_VIEW_BY_ID: dict[str, type[View]] = {cls.VIEW_ID: cls for cls in _VIEW_CLASSES}
_REDRAW_AFTER_S = 60.0
"""Redraw unchanged data this often anyway, so relative times ("for 3m") stay true."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AppOptions:
    """How the dashboard runs (from settings and the command line)."""

    refresh_s: float = 2.0
    max_rows: int = 500
    timezone: str = "UTC"
    theme: str = "textual-dark"
    export_dir: Path = Path(".")
    keys: Mapping[str, str] | None = None
    """Binding id → keys, overriding the defaults (`[tui.keys]`)."""
    panel_dirs: tuple[Path, ...] = ()
    """Extra panel folders (a user's own panels override shipped ones of the same name)."""


class RefreshDone(Message):
    """A refresh worker finished (posted from its thread)."""

    def __init__(
        self,
        view_id: ViewId,
        generation: int,
        data: ViewData,
        errors: dict[str, str],
        elapsed_s: float,
    ) -> None:
        super().__init__()
        self.view_id = view_id
        self.generation = generation
        self.data = data
        self.errors = errors
        self.elapsed_s = elapsed_s


class TraceLoaded(Message):
    """The spans of a trace were read (or failed to be)."""

    def __init__(self, trace_id: str, result: QueryResult | None, error: str | None) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.result = result
        self.error = error


class WriteDone(Message):
    """A write worker (rollback) or a diff lookup finished."""

    def __init__(
        self, kind: str, message: str, *, ok: bool, lines: list[str] | None = None
    ) -> None:
        super().__init__()
        self.kind = kind
        self.message = message
        self.ok = ok
        self.lines = lines or []


class ComptrollerApp(App[None]):
    """The terminal dashboard over the usage database.

    Args:
        source: Makes a reader per worker (a DuckDB cursor, or a collector client).
        options: Refresh interval, row cap, time zone, theme, keys.
        clock: What 'now' is (injected by tests and snapshots).
        operator: Who may write; None keeps the dashboard read-only.
        admin: The profile store seam used for diffs and rollbacks.
        panels: The panel set (default: `load_panels(options.panel_dirs)`).
        interval_refresh: Refresh on the interval (tests turn it off and force refreshes).
    """

    TITLE = "comptroller"
    CSS_PATH = Path(__file__).with_name("comptroller.tcss")  # absolute: subclasses live elsewhere
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(
                str(n),
                f"show_view('{view_id}')",
                view_id.capitalize(),
                id=f"view.{view_id}",
                show=False,
            )
            for n, view_id in enumerate(VIEW_IDS, start=1)
        ),
        Binding("f", "filters", "Filters", id="filters"),
        Binding("t", "cycle_range", "Range", id="range"),
        Binding("slash", "table_filter", "Find", id="table_filter"),
        Binding("s", "sort", "Sort", id="sort"),
        Binding("c", "copy_cell", "Copy", id="copy"),
        Binding("e", "export", "Export", id="export"),
        Binding("r", "refresh", "Refresh", id="refresh"),
        Binding("p", "pause", "Pause", id="pause"),
        Binding("escape", "back_out", "Back", id="back"),
        Binding("question_mark", "keys", "Keys", id="keys"),
        Binding("T", "toggle_theme", "Theme", id="theme", show=False),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        source: ReaderFactory,
        *,
        options: AppOptions | None = None,
        clock: Clock = system_clock,
        operator: Operator | None = None,
        admin: ProfileAdmin | None = None,
        panels: PanelSet | None = None,
        interval_refresh: bool = True,
    ) -> None:
        super().__init__()
        self.source = source
        self.options = options or AppOptions()
        self.clock = clock
        self.operator = operator
        self.admin = admin
        self.panels = panels if panels is not None else load_panels(self.options.panel_dirs)
        self.interval_refresh = interval_refresh
        self.filters = Filters()
        self.paused = False
        self.current: ViewId = "overview"
        self.generation: Counter[str] = Counter()
        self.loaded_generation: dict[str, int] = {}
        self.last_shown_at: dict[str, float] = {}
        self.inflight: set[str] = set()
        self.refreshes: Counter[str] = Counter()
        """Refreshes handled per view (tests wait on it)."""
        self.redraws: Counter[str] = Counter()
        """Refreshes that changed the screen, per view."""
        self.skipped_ticks: Counter[str] = Counter()
        """Ticks skipped because the view's previous refresh still ran."""
        self.errors: dict[str, dict[str, str]] = {}
        self.last_ok: dict[str, str] = {}
        """Per view, the local time of the last refresh whose every read succeeded."""
        self.last_failed: dict[str, str] = {}
        """Per view, the local time of the last refresh with a failed read."""
        self._view_readers: dict[str, Reader] = {}
        self._readers_lock = threading.Lock()
        self._queries_idle = threading.Condition()
        self._queries_running = 0
        self._refresh_timer: Timer | None = None
        self._view_widgets: dict[str, View] = {}
        self._table_filter_target: str | None = None
        self.theme = self.options.theme
        if self.options.keys:
            self.set_keymap(dict(self.options.keys))

    # ---- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield NavBar([(cls.VIEW_ID, cls.TITLE) for cls in _VIEW_CLASSES], id="nav")
        with Vertical(id="body"):
            # Only the first view is built at start (first paint); the others on first visit.
            with ContentSwitcher(initial=f"view-{self.current}", id="views"):
                yield self.view(self.current)
            yield Input(placeholder="find in table (enter: keep · esc: clear)", id="table-filter")
        yield StatusBar("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        for problem in self.panels.errors:
            # A broken panel file must not stop the dashboard: say which and carry on.
            self.notify(f"panel not loaded: {problem}", severity="warning", timeout=10)
        self.query_one("#table-filter", Input).display = False
        self._update_chrome()
        self.view(self.current).focus_default()
        self.start_refresh(self.current)
        if self.interval_refresh:
            self._refresh_timer = self.set_interval(self.options.refresh_s, self._tick)

    def on_unmount(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
        # Thread workers cannot be killed: let running queries finish before closing the
        # cursors they use (bounded, so a stuck query never blocks quitting for long).
        with self._queries_idle:
            self._queries_idle.wait_for(lambda: self._queries_running == 0, timeout=5.0)
        with self._readers_lock:
            readers, self._view_readers = list(self._view_readers.values()), {}
        for reader in readers:
            reader.close()

    def view(self, view_id: str) -> View:
        """The view widget called `view_id` (made, not yet mounted, on first use)."""
        view = self._view_widgets.get(view_id)
        if view is None:
            view = self._view_widgets[view_id] = _VIEW_BY_ID[view_id]()
        return view

    def _fmt_context(self, data: ViewData | None = None) -> Context:
        now = data.frame.now if data is not None and data.frame is not None else self.clock()
        return Context(now=now, tz=self.options.timezone)

    def _update_chrome(self) -> None:
        self.query_one("#nav", NavBar).show(self.current, self.filters.describe())
        parts = ["⏸ paused" if self.paused else f"● every {self.options.refresh_s:g}s"]
        view_errors = self.errors.get(self.current)
        # "updated" is the last read that succeeded; a failed read says when it failed.
        if self.current in self.last_ok:
            parts.append(f"updated {self.last_ok[self.current]}")
        if view_errors:
            failed = self.last_failed.get(self.current)
            parts.append(f"⚠ STALE: read failed {failed}" if failed else "⚠ STALE")
        where = getattr(getattr(self.source, "reader", None), "where", None)
        if isinstance(where, str) and where.startswith("collector"):
            parts.append(f"via {where}")
        parts.append(
            f"operator {self.operator.name} ({self.operator.role})"
            if self.operator
            else "read-only"
        )
        status = self.query_one("#status", StatusBar)
        status.set_class(bool(view_errors), "-stale")
        status.update(" · ".join(parts))

    # ---- refresh machinery ---------------------------------------------------------------

    def _tick(self) -> None:
        if not self.paused:
            self.start_refresh(self.current)

    def start_refresh(self, view_id: ViewId) -> bool:
        """Refresh `view_id` in a worker unless its previous refresh still runs.

        Returns:
            Whether a refresh was started (False: skipped, one is in flight).
        """
        if view_id in self.inflight:
            self.skipped_ticks[view_id] += 1
            return False
        self.inflight.add(view_id)
        with self._queries_idle:
            self._queries_running += 1  # counted before the thread starts: on_unmount waits for it
        specs = self.view(view_id).queries()
        frame = time_frame(self.clock(), self.filters.range, self.options.timezone)
        # The group is per view: a refresh of one view never cancels another's. That is
        # @work(thread=True, exclusive=True, exit_on_error=False, group=…) with a dynamic group.
        # Captured now, not when the thread runs: the answer must match the question.
        filters, generation = self.filters, self.generation[view_id]
        self.run_worker(
            lambda: self._refresh_worker(view_id, specs, filters, frame, generation),
            name=f"refresh {view_id}",
            group=f"refresh-{view_id}",
            thread=True,
            exclusive=True,
            exit_on_error=False,
        )
        return True

    def _reader(self, key: str) -> Reader:
        # Called from worker threads: one reader (one cursor) per view, made on first use.
        with self._readers_lock:
            reader = self._view_readers.get(key)
        if reader is None:
            reader = self.source()
            with self._readers_lock:
                self._view_readers[key] = reader
        return reader

    def _refresh_worker(
        self,
        view_id: ViewId,
        specs: list[QuerySpec],
        filters: Filters,
        frame: TimeFrame,
        generation: int,
    ) -> None:
        # Runs in a thread: reads, never touches a widget, reports by message.
        try:
            self._refresh_queries(view_id, specs, filters, frame, generation)
        finally:
            with self._queries_idle:
                self._queries_running -= 1
                self._queries_idle.notify_all()

    def _refresh_queries(
        self,
        view_id: ViewId,
        specs: list[QuerySpec],
        filters: Filters,
        frame: TimeFrame,
        generation: int,
    ) -> None:
        started = time.perf_counter()
        results: dict[str, QueryResult] = {}
        errors: dict[str, str] = {}
        try:
            reader = self._reader(view_id)
        except Exception as exc:
            errors["source"] = _first_line(exc)
            reader = None
        if reader is not None:
            from comptroller.analytics import ReaderUnavailable  # in the worker: off the UI

            for spec in specs:
                try:
                    results[spec.key] = run_query(
                        reader,
                        self.panels,
                        spec,
                        filters=filters,
                        frame=frame,
                        max_rows=self.options.max_rows,
                    )
                except ReaderUnavailable as exc:
                    # The file or the collector is gone: the other queries would say the
                    # same. Once, for the whole view.
                    errors = {"source": _first_line(exc)}
                    break
                except Exception as exc:  # a failed query must not kill the dashboard
                    errors[spec.key] = f"{spec.panel}: {_first_line(exc)}"
        self.post_message(
            RefreshDone(
                view_id,
                generation,
                ViewData(results=results, frame=frame),
                errors,
                time.perf_counter() - started,
            )
        )

    @on(RefreshDone)
    def _refresh_done(self, message: RefreshDone) -> None:
        view_id = message.view_id
        self.inflight.discard(view_id)
        view = self.view(view_id)
        if not view.is_attached:
            return  # the app is closing
        if not view.is_mounted:
            self.call_after_refresh(self.start_refresh, view_id)  # still being built: again
            return
        try:
            self._apply_refresh(view, message)
        except NoMatches:
            return  # widgets went away under us: the app is closing

    def _apply_refresh(self, view: View, message: RefreshDone) -> None:
        view_id = message.view_id
        if message.generation != self.generation[view_id]:
            # Filters or the drill-down changed while it ran: its rows answer an old question.
            if view_id == self.current:
                self.start_refresh(view_id)
            return
        self.refreshes[view_id] += 1
        previous = view.data
        merged = dict(previous.results) if previous is not None else {}
        merged.update(message.data.results)
        # Results of queries the view no longer runs (a closed drill-down) are dropped.
        wanted = {spec.key for spec in view.queries()}
        merged = {k: v for k, v in merged.items() if k in wanted}
        data = ViewData(results=merged, frame=message.data.frame)
        changed = (
            previous is None
            or set(previous.results) != set(merged)
            or any(not merged[k].same_as(previous.results.get(k)) for k in merged)
            or time.monotonic() - self.last_shown_at.get(view_id, 0.0) > _REDRAW_AFTER_S
        )
        if changed:
            self.redraws[view_id] += 1
            self.last_shown_at[view_id] = time.monotonic()
            view.show(data, self._fmt_context(data))
        else:
            view.data = data
        self.loaded_generation[view_id] = message.generation
        if message.errors:
            self.errors[view_id] = message.errors
            self.last_failed[view_id] = self._local_time(data)
            since = self.last_ok.get(view_id)
            shown = f"last good data from {since}" if since else "no data yet"
            problems = "; ".join(message.errors.values())
            what = "cannot read" if "source" in message.errors else "query failed"
            view.set_error(
                f"⚠ {what}: {problems} — {shown}, marked stale; "
                f"retrying every {self.options.refresh_s:g}s (r: retry now)"
            )
        else:
            self.errors.pop(view_id, None)
            if message.data.frame is not None:
                self.last_ok[view_id] = self._local_time(data)
            view.set_error(None)
        if view_id == self.current:
            self._update_chrome()

    def _local_time(self, data: ViewData) -> str:
        """When `data` was read, as hh:mm:ss in the dashboard's time zone."""
        now = self._fmt_context(data).now
        return now.astimezone(_zone(self.options.timezone)).strftime("%H:%M:%S")

    def is_loaded(self, view_id: str) -> bool:
        """Whether `view_id` shows rows for the current filters and state.

        Every query the view runs in its current state (a drill-down adds some) must have
        answered, with rows or with an error: a drill-down is set at once but its
        invalidation reaches the app only as a message.
        """
        if (
            self.loaded_generation.get(view_id) != self.generation[view_id]
            or view_id in self.inflight
        ):
            return False
        view = self.view(view_id)
        answered = set(view.data.results) if view.data is not None else set()
        answered |= set(self.errors.get(view_id, {}))
        return "source" in answered or all(spec.key in answered for spec in view.queries())

    def _invalidate(self, *view_ids: str) -> None:
        for view_id in view_ids or VIEW_IDS:
            self.generation[view_id] += 1

    @on(View.StateChanged)
    def _view_state_changed(self, message: View.StateChanged) -> None:
        view_id = message.view.VIEW_ID
        self._invalidate(view_id)
        if view_id == self.current:
            self.start_refresh(view_id)

    # ---- actions (the API; keys are configuration) ---------------------------------------

    async def action_show_view(self, view_id: str) -> None:
        """Switch to a view; it refreshes at once if its rows are not current."""
        if view_id not in VIEW_IDS:
            return
        self._close_table_filter(keep=True)
        switcher = self.query_one("#views", ContentSwitcher)
        view = self.view(view_id)
        if not view.is_attached:
            await switcher.mount(view)
        self.current = view_id
        switcher.current = f"view-{view_id}"
        self._update_chrome()
        view.focus_default()
        if not self.is_loaded(view_id) or (
            time.monotonic() - self.last_shown_at.get(view_id, 0.0) > self.options.refresh_s
        ):
            self.start_refresh(self.current)

    def action_refresh(self) -> None:
        """Refresh the current view now (skipped if a refresh is running)."""
        if not self.start_refresh(self.current):
            self.notify("a refresh is already running", timeout=2)

    def action_pause(self) -> None:
        """Pause or resume the interval refresh."""
        self.paused = not self.paused
        self._update_chrome()

    def set_filters(self, filters: Filters) -> None:
        """Apply new global filters to every view (the visible one refreshes now)."""
        if filters == self.filters:
            return
        self.filters = filters
        self._invalidate()
        self._update_chrome()
        self.start_refresh(self.current)

    def action_filters(self) -> None:
        """Edit the global filters."""

        def done(filters: Filters | None) -> None:
            if filters is not None:
                self.set_filters(filters)

        self.push_screen(FilterScreen(self.filters), done)

    def action_cycle_range(self) -> None:
        """Today → 7 days → 30 days → today."""
        nxt = RANGES[(RANGES.index(self.filters.range) + 1) % len(RANGES)]
        self.set_filters(self.filters.with_(range=nxt))

    def action_back_out(self) -> None:
        """Leave the table filter, else undo the view's last drill-down."""
        if self._close_table_filter(keep=False):
            return
        self.view(self.current).back()

    def action_sort(self) -> None:
        """Sort the focused table by the cursor's column (again: reverse)."""
        grid = self.view(self.current).focused_grid()
        if grid is not None:
            grid.sort_by_cursor()

    def action_copy_cell(self) -> None:
        """Copy the cell under the cursor."""
        screen = self.screen
        grid = None
        if isinstance(screen, TraceScreen):
            grid = screen.query_one(DataGrid)
        else:
            grid = self.view(self.current).focused_grid()
        text = grid.current_cell() if grid is not None else ""
        if not text:
            self.notify("nothing to copy here", severity="warning", timeout=2)
            return
        self.copy_to_clipboard(text)
        self.notify(f"copied {text!r}", timeout=2)

    def action_table_filter(self) -> None:
        """Filter the focused table's rows by text."""
        grid = self.view(self.current).focused_grid()
        if grid is None:
            return
        self._table_filter_target = grid.id
        box = self.query_one("#table-filter", Input)
        box.value = grid.filter_text
        box.display = True
        box.focus()

    @on(Input.Changed, "#table-filter")
    def _table_filter_changed(self, event: Input.Changed) -> None:
        grid = self._table_filter_grid()
        if grid is not None:
            grid.set_filter(event.value)

    @on(Input.Submitted, "#table-filter")
    def _table_filter_submitted(self, event: Input.Submitted) -> None:
        self._close_table_filter(keep=True)

    def _table_filter_grid(self) -> DataGrid | None:
        if self._table_filter_target is None:
            return None
        found = self.view(self.current).query(f"#{self._table_filter_target}")
        return found.first(DataGrid) if found else None

    def _close_table_filter(self, *, keep: bool) -> bool:
        box = self.query_one("#table-filter", Input)
        if not box.display:
            return False
        grid = self._table_filter_grid()
        if not keep and grid is not None:
            grid.set_filter("")
        box.display = False
        if grid is not None:
            grid.table.focus()
        self._table_filter_target = None
        return True

    def action_export(self, fmt: str | None = None) -> None:
        """Export the current view's tables (asks for the format unless given)."""
        if fmt is None:
            self.push_screen(ExportScreen(f"{self.view(self.current).TITLE} view"), self._export_as)
        else:
            self._export_as(fmt)

    def _export_as(self, fmt: str | None) -> None:
        if fmt is None:
            return
        from comptroller.tui._export import FORMATS, export_grids

        if fmt not in FORMATS:
            self.notify(
                f"unknown export format {fmt!r} (use csv, parquet or json)", severity="error"
            )
            return
        view = self.view(self.current)
        try:
            paths = export_grids(
                view.grids(),
                fmt_checked(fmt),
                folder=self.options.export_dir,
                stem=f"comptroller-{view.VIEW_ID}",
                now=self.clock(),
            )
        except OSError as exc:
            self.notify(f"export failed: {exc}", severity="error")
            return
        self.last_export = paths
        self.notify(
            f"exported {len(paths)} table(s) to {self.options.export_dir}: "
            + ", ".join(p.name for p in paths)
        )

    def action_keys(self) -> None:
        """Show every key and what it does."""
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for active in self.active_bindings.values():
            binding = active.binding
            if binding.description and binding.action not in seen:
                seen.add(binding.action)
                rows.append((self.get_key_display(binding), binding.description))
        rows += [
            ("↑↓←→", "move in a table"),
            ("enter", "drill down / open"),
            ("tab", "next table"),
            ("ctrl+p", "command palette"),
        ]
        self.push_screen(KeysScreen(rows))

    def action_toggle_theme(self) -> None:
        """Switch between the dark and the light theme."""
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:  # type: ignore[type-arg]
        yield from super().get_system_commands(screen)
        for cls in _VIEW_CLASSES:
            yield SystemCommand(
                f"Go to {cls.TITLE}",
                f"Show the {cls.TITLE} view",
                lambda v=cls.VIEW_ID: self.run_action(f"show_view('{v}')"),
            )
        for range_ in RANGES:
            yield SystemCommand(
                f"Range: {range_}",
                f"Show {range_} in every view",
                lambda r=range_: self.set_filters(self.filters.with_(range=r)),
            )
        yield SystemCommand("Filters…", "Tenant, purpose, context, range", self.action_filters)
        yield SystemCommand(
            "Clear filters",
            "Show everything",
            lambda: self.set_filters(Filters(range=self.filters.range)),
        )
        from comptroller.tui._export import FORMATS

        for fmt in FORMATS:
            yield SystemCommand(
                f"Export as {fmt}",
                f"Write the current view's tables as {fmt}",
                lambda f=fmt: self._export_as(f),
            )
        yield SystemCommand("Refresh now", "Refresh the current view", self.action_refresh)
        yield SystemCommand(
            "Pause / resume refresh", "Stop or restart the interval refresh", self.action_pause
        )
        yield SystemCommand("Toggle dark / light", "Switch the theme", self.action_toggle_theme)

    # ---- calls: trace spans --------------------------------------------------------------

    @on(CallsView.TraceRequested)
    def _open_trace(self, message: CallsView.TraceRequested) -> None:
        self.push_screen(TraceScreen(message.trace_id, self._fmt_context()))
        frame = time_frame(self.clock(), self.filters.range, self.options.timezone)
        specs = view_queries("calls", trace_id=message.trace_id)[1:]
        trace_id = message.trace_id

        def work() -> None:
            try:
                result = run_query(
                    self._reader("trace"),
                    self.panels,
                    specs[0],
                    filters=self.filters,
                    frame=frame,
                    max_rows=self.options.max_rows,
                )
                self.post_message(TraceLoaded(trace_id, result, None))
            except Exception as exc:
                self.post_message(TraceLoaded(trace_id, None, _first_line(exc)))

        self.run_worker(
            work, name="trace", group="trace", thread=True, exclusive=True, exit_on_error=False
        )

    @on(TraceLoaded)
    def _trace_loaded(self, message: TraceLoaded) -> None:
        screen = self.screen
        if not isinstance(screen, TraceScreen) or screen.trace_id != message.trace_id:
            return
        if message.result is not None:
            screen.show(message.result.rows, message.result.truncated)
        else:
            screen.show_error(message.error or "failed")

    # ---- profiles: diff and rollback -----------------------------------------------------

    @on(ProfilesView.DiffRequested)
    def _diff(self, message: ProfilesView.DiffRequested) -> None:
        admin = self.admin
        older, newer, details = message.older, message.newer, message.details

        def work() -> None:
            texts: list[list[str]] = []
            for ref in (older, newer):
                spec: object = admin.spec_of(ref) if admin is not None else None
                if spec is None and details.get(ref.version):
                    spec = json.loads(details[ref.version] or "null")
                texts.append(
                    json.dumps(spec, indent=2, sort_keys=True, default=str).splitlines()
                    if spec is not None
                    else ["(settings unknown)"]
                )
            lines = list(
                difflib.unified_diff(
                    texts[0], texts[1], f"v{older.version}", f"v{newer.version}", lineterm=""
                )
            )
            self.post_message(
                WriteDone("diff", f"{older.describe()} → v{newer.version}", ok=True, lines=lines)
            )

        self.run_worker(
            work, name="diff", group="diff", thread=True, exclusive=True, exit_on_error=False
        )

    @on(ProfilesView.RollbackRequested)
    def _rollback(self, message: ProfilesView.RollbackRequested) -> None:
        target = message.target
        try:
            operator = require_operator(self.operator)
        except Exception as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        if self.admin is None:
            self.notify(
                "no profile store configured: rollback is unavailable", severity="error", timeout=8
            )
            return
        if message.current is not None and message.current == target.version:
            self.notify(f"v{target.version} is already active", severity="warning")
            return
        admin = self.admin
        current = f"v{message.current}" if message.current is not None else "the active version"
        question = (
            f"Roll back {target.purpose} @ {target.scope_kind}{':' + target.scope_id if target.scope_id else ''} "
            f"from {current} to v{target.version}?\n"
            f"This activates v{target.version}'s settings as a new version, as "
            f"{operator.name} ({operator.role}), and writes an audit entry."
        )

        def confirmed(reason: str | None) -> None:
            if reason is None:
                self.notify("rollback cancelled", timeout=2)
                return

            def work() -> None:
                try:
                    done = admin.rollback(target, operator=operator, reason=reason)
                    self.post_message(
                        WriteDone(
                            "rollback",
                            f"rolled back {target.describe()}: now v{done.new_version} (audit {done.audit_id})",
                            ok=True,
                        )
                    )
                except Exception as exc:
                    self.post_message(
                        WriteDone("rollback", f"rollback refused: {_first_line(exc)}", ok=False)
                    )

            self.run_worker(
                work,
                name="rollback",
                group="write",
                thread=True,
                exclusive=True,
                exit_on_error=False,
            )

        self.push_screen(ConfirmScreen(question), confirmed)

    @on(WriteDone)
    def _write_done(self, message: WriteDone) -> None:
        if message.kind == "diff":
            self.push_screen(DiffScreen(f"Diff {message.message}", message.lines))
            return
        self.notify(message.message, severity="information" if message.ok else "error", timeout=8)
        self.last_write = message
        if message.ok:
            self._invalidate("profiles", "overview")
            if self.current in ("profiles", "overview"):
                self.start_refresh(self.current)


def fmt_checked(fmt: str) -> ExportFormat:
    """`fmt` as an export format (checked by the caller)."""
    from comptroller.tui._export import FORMATS

    assert fmt in FORMATS
    return fmt


def _zone(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
