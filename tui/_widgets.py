"""The dashboard's widgets: a capped, sortable, filterable table, the nav and status bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeAlias

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Label, Static

from comptroller.tui import _format as fmt

Kind: TypeAlias = Literal["text", "money", "count", "ms", "instant", "ago", "pct", "raw"]
Row: TypeAlias = dict[str, Any]

_RIGHT: frozenset[Kind] = frozenset({"money", "count", "ms", "ago", "pct"})
_ALERT = {"error", "opened", "exceeded", "rejected", "over"}
_WARN = {"half_opened", "warning", "rolled_back", "near"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Column:
    """A column of a `DataGrid`: which row key it shows and how it is written."""

    key: str
    label: str
    kind: Kind = "text"


@dataclass(frozen=True, kw_only=True, slots=True)
class Context:
    """What formatting needs beyond the value: the instant shown as 'now' and the zone."""

    now: datetime
    tz: str


def _cell(column: Column, value: object, ctx: Context, *, money: str | None = None) -> Text:
    """`value` as shown in `column`; `money` is the amount already written at its column's
    shared precision (`DataGrid` has the whole column), when there is one."""
    if isinstance(value, Text):
        return value
    if column.kind == "pct":
        shown = fmt.percent(float(value) if isinstance(value, int | float) else None)
    elif column.kind == "money":
        shown = fmt.money(value) if money is None else money
    elif column.kind == "count":
        shown = fmt.count(value)
    elif column.kind == "ms":
        shown = fmt.millis(value)
    elif column.kind == "instant":
        shown = fmt.instant(value, now=ctx.now, tz=ctx.tz)
    elif column.kind == "ago":
        shown = fmt.ago(value, now=ctx.now)
    else:
        shown = fmt.text(value)
    style = ""
    if isinstance(value, str):
        if value in _ALERT:
            style = "bold red"
        elif value in _WARN:
            style = "yellow"
    return Text(shown, style=style, justify="right" if column.kind in _RIGHT else "left")


def _sort_key(value: object) -> tuple[int, Any]:
    # NULLs sort last whatever the direction is handled by the caller; mixed types compare
    # as text so that a sort never raises.
    if value is None:
        return (1, 0)
    if isinstance(value, int | float | Decimal):
        return (0, float(value))
    if isinstance(value, datetime):
        return (0, value.timestamp())
    if isinstance(value, Text):
        return (0, value.plain)
    return (0, str(value))


class DataGrid(Vertical):
    """A titled table over capped rows, sortable by any column and filterable by text.

    It owns its rows: a refresh hands it new rows with `set_rows`; sorting and the `/` filter
    are applied on top and survive refreshes. The title says how many rows are shown and
    whether the source had more ("500 of >500").
    """

    DEFAULT_CSS = """
    DataGrid { height: 1fr; min-height: 4; }
    DataGrid > .grid-title { width: 1fr; height: 1; padding: 0 1; text-style: bold; background: $boost; }
    DataGrid > DataTable { height: 1fr; }
    """

    def __init__(
        self,
        title: str,
        columns: Sequence[Column],
        *,
        id: str | None = None,
        empty: str = "no rows",
    ) -> None:
        super().__init__(id=id)
        self.title_text = title
        self.columns = tuple(columns)
        self.empty = empty
        self.rows: list[Row] = []
        """The rows as the source gave them (before filter and sort)."""
        self.shown: list[Row] = []
        """The rows on screen, in screen order."""
        self.truncated = False
        self.unavailable = False
        self.filter_text = ""
        self.sort_key: str | None = None
        self.sort_reverse = False
        self.context: Context | None = None
        self._money: dict[int, dict[tuple[type, object], str]] = {}
        """Per money column (by index): each distinct amount of `rows` as written."""

    def compose(self) -> ComposeResult:
        yield Label(self.title_text, classes="grid-title")
        table: DataTable[Text] = DataTable(cursor_type="cell", zebra_stripes=False)
        yield table

    @property
    def table(self) -> DataTable[Text]:
        """The inner table (focus target)."""
        return self.query_one(DataTable)

    def on_mount(self) -> None:
        for column in self.columns:
            self.table.add_column(column.label, key=column.key)
        self._update_title()

    def set_rows(self, rows: Sequence[Row], *, truncated: bool | None, context: Context) -> None:
        """Show `rows` (already capped by the source; `truncated` if it had more, None if
        its query has not answered: the title then says so instead of "no rows")."""
        self.rows = list(rows)
        self._money = self._money_texts()
        self.unavailable = truncated is None
        self.truncated = bool(truncated)
        self.context = context
        self._rebuild()

    def set_filter(self, text: str) -> None:
        """Keep only rows where some cell contains `text` (case-insensitive)."""
        self.filter_text = text
        self._rebuild()

    def sort_by(self, key: str, *, reverse: bool | None = None) -> None:
        """Sort by column `key`; without `reverse`, a second sort on it flips the order."""
        if reverse is None:
            reverse = not self.sort_reverse if self.sort_key == key else False
        self.sort_key = key
        self.sort_reverse = reverse
        self._rebuild()

    def sort_by_cursor(self) -> None:
        """Sort by the column the cursor is in."""
        if self.columns:
            column = self.columns[min(self.table.cursor_column, len(self.columns) - 1)]
            self.sort_by(column.key)

    def current_row(self) -> Row | None:
        """The row under the cursor."""
        index = self.table.cursor_row
        return self.shown[index] if 0 <= index < len(self.shown) else None

    def current_cell(self) -> str:
        """The text of the cell under the cursor, as shown."""
        row = self.current_row()
        if row is None or not self.columns or self.context is None:
            return ""
        index = min(self.table.cursor_column, len(self.columns) - 1)
        return self._cell(index, row.get(self.columns[index].key)).plain

    def _row_matches(self, row: Row, needle: str) -> bool:
        return any(
            needle in self._cell(index, row.get(c.key)).plain.lower()
            for index, c in enumerate(self.columns)
        )

    def _money_texts(self) -> dict[int, dict[tuple[type, object], str]]:
        """Each money column's distinct amounts written at one precision for the column.

        The smallest amount decides (`fmt.money_column`), so none reads as zero and they line
        up. It is decided over all the rows given, not the rows shown: a filter or a sort
        does not change how an amount is written (and the filter matches what is seen).
        """
        out: dict[int, dict[tuple[type, object], str]] = {}
        for index, column in enumerate(self.columns):
            if column.kind != "money":
                continue
            distinct: dict[tuple[type, object], object] = {}
            for row in self.rows:
                value = row.get(column.key)
                if not isinstance(value, Text):
                    with contextlib.suppress(TypeError):  # unhashable: written on its own
                        distinct.setdefault((type(value), value), value)
            out[index] = dict(zip(distinct, fmt.money_column(distinct.values()), strict=True))
        return out

    def _cell(self, index: int, value: object) -> Text:
        assert self.context is not None
        column = self.columns[index]
        money = None
        if column.kind == "money":
            with contextlib.suppress(TypeError):
                money = self._money.get(index, {}).get((type(value), value))
        return _cell(column, value, self.context, money=money)

    def _rebuild(self) -> None:
        if self.context is None:
            return
        rows = self.rows
        needle = self.filter_text.strip().lower()
        if needle:
            rows = [row for row in rows if self._row_matches(row, needle)]
        if self.sort_key is not None:
            key = self.sort_key
            present = [row for row in rows if row.get(key) is not None]
            missing = [row for row in rows if row.get(key) is None]
            present.sort(key=lambda row: _sort_key(row.get(key)), reverse=self.sort_reverse)
            rows = present + missing
        self.shown = rows
        table = self.table
        cursor = table.cursor_coordinate
        table.clear()
        cells, widths = self._cells(rows)
        table.add_rows(cells)
        # DataTable sizes its columns on its own Idle event, which a busy app may not reach
        # before the next frame: label-width columns (cut values) were seen on screen. The
        # widths are set here, from the rows shown, so columns also shrink when rows go.
        for index, column in enumerate(table.ordered_columns):
            column.content_width = max(column.label.cell_len, widths[index])
        table.refresh(layout=True)
        table.check_idle()
        if rows:
            table.cursor_coordinate = Coordinate(
                min(cursor.row, len(rows) - 1), min(cursor.column, len(self.columns) - 1)
            )
        self._update_title()

    def _cells(self, rows: Sequence[Row]) -> tuple[list[list[Text]], list[int]]:
        """The cells of `rows`, each distinct (column, value) formatted once, and the
        widest cell of each column.

        A redraw of 500 rows makes thousands of cells; most columns repeat a few values
        (tenant, purpose, outcome, model), and a cell's text depends only on its column and
        value (and the context and the money columns' precision, fixed here). The DataTable
        only reads the cells it is given.
        """
        made: dict[tuple[int, type, object], Text] = {}
        widths = [0] * len(self.columns)
        out: list[list[Text]] = []
        for row in rows:
            line: list[Text] = []
            for index, column in enumerate(self.columns):
                value = row.get(column.key)
                try:
                    key = (index, type(value), value)  # the type: 1, 1.0 and True are equal
                    cell = made.get(key)
                    if cell is None:
                        cell = made[key] = self._cell(index, value)
                        widths[index] = max(widths[index], cell.cell_len)
                except TypeError:  # an unhashable value (a list): formatted every time
                    cell = self._cell(index, value)
                    widths[index] = max(widths[index], cell.cell_len)
                line.append(cell)
            out.append(line)
        return out, widths

    def _update_title(self) -> None:
        parts = [self.title_text]
        total = len(self.rows)
        if self.context is None:
            parts.append("loading…")
        elif self.unavailable:
            parts.append("unavailable (see the error above)")
        elif self.truncated:
            parts.append(f"{total} of >{total}")
        elif total == 0:
            parts.append(self.empty)
        else:
            parts.append(f"{total} row" + ("" if total == 1 else "s"))
        if self.filter_text.strip():
            parts.append(f"/{self.filter_text.strip()}/ {len(self.shown)} match")
        if self.sort_key is not None:
            label = next((c.label for c in self.columns if c.key == self.sort_key), self.sort_key)
            parts.append(f"by {label} {'↓' if self.sort_reverse else '↑'}")
        self.query_one(".grid-title", Label).update(" · ".join(parts))


class Stat(Static):
    """A figure with a caption, e.g. today's spend."""

    DEFAULT_CSS = """
    Stat { width: 1fr; height: 3; padding: 0 1; border: round $primary-darken-1; }
    """

    def __init__(self, caption: str, *, id: str | None = None) -> None:
        super().__init__("…", id=id)
        self.caption = caption
        self.border_title = caption
        self.value = ""

    def set_value(self, value: str) -> None:
        """Show `value` (a redraw only when it changed)."""
        if value != self.value:
            self.value = value
            self.update(value)


class NavBar(Static):
    """The view tabs with their number keys; the current one highlighted."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; color: $text-muted; }
    """

    def __init__(self, views: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.views = tuple(views)

    def show(self, current: str, filters: str) -> None:
        """Highlight `current`; `filters` describes the global filters on the right.

        When the whole line does not fit, the other views show their number only: the
        filters in force stay in sight (they change what every number means).
        """
        width = self.size.width
        for compact in (False, True):
            line = Text()
            for n, (view_id, title) in enumerate(self.views, start=1):
                here = view_id == current
                label = f" {n} {title} " if here or not compact else f" {n} "
                line.append(label, style="bold reverse" if here else "")
            line.append("  ")
            line.append(filters, style="italic")
            if not width or line.cell_len <= width:
                break
        self.update(line)


class StatusBar(Static):
    """Refresh state: live/paused, last update, stale marker with the error."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; padding: 0 1; }
    StatusBar.-stale { background: $error 40%; }
    """


Formatter: TypeAlias = Callable[[object], str]
