"""The Profiles view: versions, diff, and rollback with and without the operator's role."""

from __future__ import annotations

from textual.widgets import Input

from comptroller.tui import DuckDBSource, Operator, ProfileRef
from comptroller.tui._screens import ConfirmScreen, DiffScreen
from comptroller.tui._widgets import DataGrid
from comptroller.tui.testing import RecordingProfileAdmin

from .conftest import make_app, settle

SIZE = (120, 40)
ALICE = Operator(name="alice", role="platform")
GLOBAL_V1 = ProfileRef(purpose="reasoning", scope_kind="global", scope_id=None, version=1)


async def _open_global_reasoning_history(pilot) -> DataGrid:  # type: ignore[no-untyped-def]
    app = pilot.app
    await pilot.press("5")
    await settle(pilot)
    active = app.query_one("#profiles-active", DataGrid)
    assert active.current_row()["scope_kind"] == "global"  # type: ignore[index]
    await pilot.press("enter")
    await settle(pilot)
    history = app.query_one("#profiles-history", DataGrid)
    assert app.focused is history.table
    return history


async def _cursor_to_version(pilot, history: DataGrid, version: int) -> None:  # type: ignore[no-untyped-def]
    # The oldest activation of the version (the history is newest first).
    index = max(i for i, row in enumerate(history.shown) if row["version"] == version)
    while history.table.cursor_row < index:
        await pilot.press("down")


async def test_enter_on_an_active_profile_lists_its_versions_only(source: DuckDBSource) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        history = await _open_global_reasoning_history(pilot)
        assert [(row["version"], row["action"]) for row in history.rows] == [
            (2, "rolled_back"),
            (3, "activated"),
            (2, "activated"),
            (1, "activated"),
        ]
        await pilot.press("escape")
        await settle(pilot)
        assert len(history.rows) == 6


async def test_rollback_without_an_operator_is_refused_and_writes_nothing(
    source: DuckDBSource,
) -> None:
    admin = RecordingProfileAdmin()
    app = make_app(source, admin=admin)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        history = await _open_global_reasoning_history(pilot)
        await _cursor_to_version(pilot, history, 1)
        await pilot.press("R")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert admin.rollbacks == []
        assert admin.refused == []
        assert any(
            "read-only" in n.message and "--operator" in n.message for n in app._notifications
        )


async def test_rollback_with_the_role_confirms_then_records_an_audit_entry(
    source: DuckDBSource,
) -> None:
    admin = RecordingProfileAdmin(
        specs={
            ProfileRef(purpose="reasoning", scope_kind="global", scope_id=None, version=v): {"v": v}
            for v in (1, 2, 3)
        }
    )
    app = make_app(source, admin=admin, operator=ALICE)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        history = await _open_global_reasoning_history(pilot)
        await _cursor_to_version(pilot, history, 1)
        await pilot.press("R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "from v2 to v1" in app.screen.question
        assert "alice (platform)" in app.screen.question
        await pilot.press("enter")  # no reason yet: refused, still asking
        assert isinstance(app.screen, ConfirmScreen)
        assert admin.rollbacks == []
        app.screen.query_one(Input).value = "o3 regression"
        await pilot.press("enter")
        while not getattr(app, "last_write", None):
            await pilot.pause(0.01)
        [done] = admin.rollbacks
        assert done.target == GLOBAL_V1
        assert done.operator == ALICE
        assert done.reason == "o3 regression"
        assert app.last_write.ok
        assert "now v4" in app.last_write.message


async def test_rollback_cancelled_at_the_confirmation_writes_nothing(source: DuckDBSource) -> None:
    admin = RecordingProfileAdmin()
    app = make_app(source, admin=admin, operator=ALICE)
    async with app.run_test(size=SIZE) as pilot:
        history = await _open_global_reasoning_history(pilot)
        await _cursor_to_version(pilot, history, 1)
        await pilot.press("R")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert admin.rollbacks == []


async def test_rollback_by_a_role_the_store_refuses_shows_why(source: DuckDBSource) -> None:
    admin = RecordingProfileAdmin()
    bob = Operator(name="bob", role="domain_admin", domain="acme-eu")
    app = make_app(source, admin=admin, operator=bob)
    async with app.run_test(size=SIZE) as pilot:
        history = await _open_global_reasoning_history(pilot)
        await _cursor_to_version(pilot, history, 1)
        await pilot.press("R")
        await pilot.pause()
        app.screen.query_one(Input).value = "try"
        await pilot.press("enter")
        while not getattr(app, "last_write", None):
            await pilot.pause(0.01)
        assert admin.rollbacks == []
        assert admin.refused == [(GLOBAL_V1, bob)]
        assert not app.last_write.ok
        assert "may not roll back" in app.last_write.message


async def test_diff_of_a_marked_and_a_selected_version_shows_the_changed_model(
    source: DuckDBSource,
) -> None:
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        history = await _open_global_reasoning_history(pilot)
        await _cursor_to_version(pilot, history, 1)
        await pilot.press("m")
        await pilot.press("up")  # v2
        await pilot.press("d")
        while not isinstance(app.screen, DiffScreen):
            await pilot.pause(0.01)
        lines = app.screen.lines
        assert '-  "model": "openai:gpt-4o-mini"' in lines
        assert '+  "model": "openai:gpt-4o"' in lines
