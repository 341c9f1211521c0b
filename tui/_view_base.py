"""What every view is: its queries, how it shows a refresh, and how `esc` goes back."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from comptroller.tui._model import ViewData, ViewId
from comptroller.tui._queries import QuerySpec
from comptroller.tui._widgets import Context, DataGrid


class View(Vertical):
    """A page of the dashboard. Subclasses set the class variables and fill the hooks."""

    VIEW_ID: ClassVar[ViewId]
    TITLE: ClassVar[str]

    DEFAULT_CSS = """
    View { height: 1fr; }
    View > .view-error { display: none; height: auto; max-height: 3; padding: 0 1;
                         background: $error 30%; color: $text; }
    View.-stale > .view-error { display: block; }
    View .crumb { height: 1; padding: 0 1; color: $text-muted; }
    """

    class StateChanged(Message):
        """The view's own state (a drill-down, a selection) changed: refresh it now."""

        def __init__(self, view: View) -> None:
            super().__init__()
            self.view = view

    def __init__(self) -> None:
        super().__init__(id=f"view-{self.VIEW_ID}")
        self.data: ViewData | None = None

    def compose(self) -> ComposeResult:
        yield Static("", classes="view-error")
        yield from self.compose_body()

    def compose_body(self) -> ComposeResult:
        """The view's widgets below its error line."""
        yield from ()

    def queries(self) -> list[QuerySpec]:
        """The queries a refresh runs, given the view's state."""
        raise NotImplementedError

    def show(self, data: ViewData, ctx: Context) -> None:
        """Put a refresh's results on screen (called only when they changed)."""
        raise NotImplementedError

    def back(self) -> bool:
        """Undo one level of drill-down or selection; False if there was none."""
        return False

    def grids(self) -> list[DataGrid]:
        """The tables currently shown (what export and `/` work on)."""
        return [grid for grid in self.query(DataGrid) if grid.display]

    def focused_grid(self) -> DataGrid | None:
        """The table that has focus, else the first shown."""
        focused = self.app.focused
        if (
            isinstance(focused, DataTable)
            and isinstance(focused.parent, DataGrid)
            and focused.parent in self.grids()
        ):
            return focused.parent
        shown = self.grids()
        return shown[0] if shown else None

    def focus_default(self) -> None:
        """Put the focus on the first table."""
        shown = self.grids()
        if shown:
            shown[0].table.focus()

    def set_error(self, message: str | None) -> None:
        """Show `message` inline (the data below is then the last good, marked stale)."""
        self.set_class(message is not None, "-stale")
        self.query_one(".view-error", Static).update(message or "")

    def rows_of(self, key: str) -> tuple[list[dict[str, Any]], bool | None]:
        """The rows of result `key` of the last refresh, and whether they were truncated
        (None: the query has not answered yet, e.g. it failed)."""
        result = self.data.get(key) if self.data else None
        if result is None:
            return [], None
        return result.rows, result.truncated
