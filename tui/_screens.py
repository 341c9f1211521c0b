"""Screens over the dashboard: keys help, filters, export, confirmation, diff, trace spans."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from comptroller.tui._model import RANGES, Filters, RangeName
from comptroller.tui._widgets import Column, Context, DataGrid

_MODAL_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 76; max-width: 100%; height: auto; max-height: 100%;
                     border: round $primary; background: $surface; padding: 0 1; }}
{name} .hint {{ color: $text-muted; height: auto; }}
"""


_ATTRIBUTE = re.compile(r"|(user|session|feature|tag\.[a-z][a-z0-9_.\-]*)=.+")
"""What the `Who` filter accepts: empty (everyone) or `dimension=value`."""


class KeysScreen(ModalScreen[None]):
    """`?`: every key that does something here, and what."""

    DEFAULT_CSS = _MODAL_CSS.format(name="KeysScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close"),
    ]

    def __init__(self, rows: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.rows = list(rows)

    def compose(self) -> ComposeResult:
        table = Text()
        for key, what in self.rows:
            table.append(f"{key:>12}", style="bold")
            table.append(f"  {what}\n")
        with Vertical():
            yield Label("Keys", classes="title")
            with VerticalScroll():
                yield Static(table)
            yield Label(
                "esc closes · keys are configurable: [tui.keys] in comptroller.toml", classes="hint"
            )


class FilterScreen(ModalScreen[Filters | None]):
    """`f`: the global filters (tenant, purpose, context, range) for every view."""

    DEFAULT_CSS = (
        _MODAL_CSS.format(name="FilterScreen")
        + """
    FilterScreen Input { width: 1fr; }
    FilterScreen Horizontal { height: auto; }
    FilterScreen Horizontal > Label { width: 10; padding: 1 0; }
    FilterScreen RadioSet { layout: horizontal; }
    """
    )
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, filters: Filters) -> None:
        super().__init__()
        self.filters = filters

    def on_mount(self) -> None:
        self.query_one("#filter-tenant", Input).focus()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Filters (empty = all) · enter applies · esc cancels")
            for name in ("tenant", "purpose", "context"):
                with Horizontal():
                    yield Label(name.capitalize())
                    yield Input(
                        value=getattr(self.filters, name) or "",
                        placeholder="all",
                        id=f"filter-{name}",
                    )
            with Horizontal():
                yield Label("Who")
                yield Input(
                    value=self.filters.attribute or "",
                    placeholder="all · user=alice · feature=search · tag.team=growth",
                    id="filter-attribute",
                )
            with Horizontal():
                yield Label("Range")
                with RadioSet(id="filter-range"):
                    for name in RANGES:
                        yield RadioButton(
                            name, value=name == self.filters.range, id=f"range-{name}"
                        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        who = self.query_one("#filter-attribute", Input)
        if not _ATTRIBUTE.fullmatch(who.value.strip()):
            who.add_class("-invalid")
            self.notify(
                "who: user=…, session=…, feature=… or tag.<name>=… (empty for everyone)",
                severity="warning",
            )
            who.focus()
            return
        self.dismiss(self._collect())

    def _collect(self) -> Filters:
        values = {
            n: self.query_one(f"#filter-{n}", Input).value.strip()
            for n in ("tenant", "purpose", "context", "attribute")
        }
        radio = self.query_one("#filter-range", RadioSet)
        chosen: RangeName = self.filters.range
        if radio.pressed_button is not None and radio.pressed_button.id:
            chosen = radio.pressed_button.id.removeprefix("range-")  # type: ignore[assignment]
        return self.filters.with_(**values, range=chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ExportScreen(ModalScreen[str | None]):
    """`e`: export the tables of the current view, as CSV, Parquet or JSON."""

    DEFAULT_CSS = _MODAL_CSS.format(name="ExportScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "pick('csv')", "CSV"),
        Binding("p", "pick('parquet')", "Parquet"),
        Binding("j", "pick('json')", "JSON"),
        Binding("escape", "pick('')", "Cancel"),
    ]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Export {self.what}")
            yield Label("[c] CSV   [p] Parquet   [j] JSON lines   [esc] cancel", classes="hint")

    def action_pick(self, fmt: str) -> None:
        self.dismiss(fmt or None)


class ConfirmScreen(ModalScreen[str | None]):
    """A yes/no question for a write, with a reason for the audit log."""

    DEFAULT_CSS = _MODAL_CSS.format(name="ConfirmScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def on_mount(self) -> None:
        self.query_one("#confirm-reason", Input).focus()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Input(placeholder="reason (recorded in the audit log)", id="confirm-reason")
            yield Label("enter: confirm · esc: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        reason = event.value.strip()
        if not reason:
            self.notify("a reason is required: it goes into the audit log", severity="warning")
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DiffScreen(ModalScreen[None]):
    """The differences between two versions of a profile."""

    DEFAULT_CSS = _MODAL_CSS.format(name="DiffScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, title: str, lines: Sequence[str]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = list(lines)

    def compose(self) -> ComposeResult:
        body = Text()
        for line in self.lines:
            style = (
                "green"
                if line.startswith("+")
                else "red"
                if line.startswith("-")
                else "dim"
                if line.startswith("@")
                else ""
            )
            body.append(line + "\n", style=style)
        with Vertical():
            yield Label(self.title_text)
            with VerticalScroll():
                yield Static(body if self.lines else Text("no differences"), id="diff-body")
            yield Label("esc closes", classes="hint")


class TraceScreen(ModalScreen[None]):
    """The spans of one call's trace: the call, its attempts and fallbacks."""

    DEFAULT_CSS = (
        _MODAL_CSS.format(name="TraceScreen")
        + """
    TraceScreen > Vertical { width: 100%; height: 100%; }
    """
    )
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, trace_id: str, context: Context) -> None:
        super().__init__()
        self.trace_id = trace_id
        self.context = context
        self._trace_pending: tuple[list[dict[str, object]], bool] | str | None = None
        self.loaded = False

    def on_mount(self) -> None:
        pending, self._trace_pending = self._trace_pending, None
        if isinstance(pending, str):
            self.show_error(pending)
        elif pending is not None:
            self.show(*pending)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Trace {self.trace_id}   (esc: back to calls · c: copy cell)")
            yield DataGrid(
                "Spans",
                [
                    Column(key="tree", label="Span"),
                    Column(key="start_ts", label="Start", kind="instant"),
                    Column(key="duration_ms", label="Took", kind="ms"),
                    Column(key="status_code", label="Status"),
                    Column(key="outcome", label="Outcome"),
                    Column(key="model", label="Model"),
                    Column(key="attempt", label="Try", kind="count"),
                    Column(key="fallback_depth", label="Fb", kind="count"),
                    Column(key="error_type", label="Error"),
                    Column(key="cost_usd", label="Cost", kind="money"),
                ],
                id="trace-spans",
                empty="no spans landed for this trace",
            )

    def show(self, rows: list[dict[str, object]], truncated: bool) -> None:
        """Put the spans on screen, each under its parent, siblings in start order."""
        if not self.is_mounted:
            self._trace_pending = (rows, truncated)
            return
        ids = {row.get("span_id") for row in rows}
        children: dict[object, list[dict[str, object]]] = {}
        for row in rows:
            parent = row.get("parent_span_id")
            children.setdefault(parent if parent in ids else None, []).append(row)
        ordered: list[dict[str, object]] = []

        def walk(parent: object, depth: int) -> None:
            for child in children.get(parent, []):
                child["tree"] = "  " * depth + str(child.get("name"))
                ordered.append(child)
                if depth < 32:  # a cycle in bad data must not hang the screen
                    walk(child.get("span_id"), depth + 1)

        walk(None, 0)
        rows = ordered
        grid = self.query_one("#trace-spans", DataGrid)
        grid.set_rows(rows, truncated=truncated, context=self.context)
        grid.table.focus()
        self.loaded = True

    def show_error(self, message: str) -> None:
        """Say why the spans could not be read."""
        if not self.is_mounted:
            self._trace_pending = message
            return
        self.loaded = True
        self.query_one("#trace-spans", DataGrid).title_text = f"Spans · ⚠ {message}"
        self.query_one("#trace-spans", DataGrid).set_rows([], truncated=False, context=self.context)
