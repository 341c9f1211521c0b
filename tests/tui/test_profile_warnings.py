"""The Profiles view shows a profile warning at a glance: a changed embedding model.

The warning takes the real path: a `ProfileService` on SQLite emits it through an embedded
control plane's telemetry into DuckDB, and the dashboard reads it with the shipped panel.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.text import Text

from comptroller.config import load_settings
from comptroller.control import ControlPlane, ModelRef
from comptroller.control.profiles import ProfileService, ProfileSpec, Scope
from comptroller.tui import AppOptions, ComptrollerApp, DuckDBSource
from comptroller.tui._widgets import DataGrid

from .conftest import settle

SMALL = "openai:text-embedding-3-small"
LARGE = "openai:text-embedding-3-large"


def _change_the_embedding_model(data_dir: Path, db_file: Path) -> None:
    settings = load_settings(None, data_dir=data_dir, db=db_file, telemetry="embedded")
    service = ProfileService.from_settings(settings)
    try:
        with ControlPlane(settings, resolver=service) as plane:
            service.events = plane.events
            ops = service.admins.init("ops")
            service.credentials.set(Scope.global_(), "openai", "sk-test-not-a-key", actor=ops)
            for model, scope in ((SMALL, Scope.global_()), (LARGE, Scope.of_org("acme"))):
                service.set_profile(
                    scope,
                    "embedding",
                    ProfileSpec(model=ModelRef.parse(model)),
                    actor=ops,
                    reason=f"embed with {model}",
                )
    finally:
        service.close()


async def test_an_embedding_model_change_reads_as_a_warning_with_both_models(
    data_dir: Path,
) -> None:
    db_file = data_dir / "usage.duckdb"
    _change_the_embedding_model(data_dir, db_file)
    source = DuckDBSource.open(db_file)
    app = ComptrollerApp(
        source,
        options=AppOptions(timezone="UTC", export_dir=data_dir),
        clock=lambda: datetime.now(UTC),
    )
    try:
        async with app.run_test(size=(200, 40)) as pilot:
            await pilot.press("5")
            await settle(pilot)
            history = app.query_one("#profiles-history", DataGrid)
            actions = [str(row["action"]) for row in history.rows]
            assert actions == ["⚠ embedding model changed", "activated", "activated"]
            warning = history.rows[0]
            assert (warning["scope"], warning["purpose"]) == ("org:acme", "embedding")
            assert str(warning["model"]) == f"{SMALL} → {LARGE}"
            assert "re-embed" in str(warning["reason"])
            assert isinstance(warning["action"], Text)
            assert "yellow" in str(warning["action"].style)
            # What the operator sees: the warning, both models and what to do, on one line.
            line = next(
                "".join(cell.plain for cell in history.table.get_row_at(index))
                for index in range(history.table.row_count)
                if "embedding model changed" in history.table.get_row_at(index)[3].plain
            )
            assert f"{SMALL} → {LARGE}" in line
            assert "re-embed" in line
    finally:
        source.close()


def _change_and_roll_back(data_dir: Path, db_file: Path) -> None:
    settings = load_settings(None, data_dir=data_dir, db=db_file, telemetry="embedded")
    service = ProfileService.from_settings(settings)
    try:
        with ControlPlane(settings, resolver=service) as plane:
            service.events = plane.events
            ops = service.admins.init("ops")
            service.credentials.set(Scope.global_(), "openai", "sk-test-not-a-key", actor=ops)
            domain = Scope.of_domain("acme-eu", org="acme")
            for model in (SMALL, LARGE):
                spec = ProfileSpec(model=ModelRef.parse(model))
                service.set_profile(domain, "embedding", spec, actor=ops, reason="switch")
            service.rollback(domain, "embedding", actor=ops, reason="recall broke")
            # Not a change of model: nothing to re-embed, no warning.
            service.set_profile(
                domain,
                "embedding",
                ProfileSpec(model=ModelRef.parse(SMALL), timeout_s=5.0),
                actor=ops,
                reason="tweak",
            )
    finally:
        service.close()


async def test_a_rollback_of_the_embedding_model_warns_too_with_the_models_swapped(
    data_dir: Path,
) -> None:
    db_file = data_dir / "usage.duckdb"
    _change_and_roll_back(data_dir, db_file)
    source = DuckDBSource.open(db_file)
    app = ComptrollerApp(
        source,
        options=AppOptions(timezone="UTC", export_dir=data_dir),
        clock=lambda: datetime.now(UTC),
    )
    try:
        async with app.run_test(size=(200, 40)) as pilot:
            await pilot.press("5")
            await settle(pilot)
            history = app.query_one("#profiles-history", DataGrid)
            warnings = [
                row for row in history.rows if "embedding model changed" in str(row["action"])
            ]
            # Newest first: the rollback's warning, then the change's.
            assert [str(row["model"]) for row in warnings] == [
                f"{LARGE} → {SMALL}",
                f"{SMALL} → {LARGE}",
            ]
            assert {row["scope"] for row in warnings} == {"domain:acme-eu"}
            assert all("re-embed" in str(row["reason"]) for row in warnings)
            assert len(history.rows) == 6  # 4 versions, 2 warnings: the tweak warns of nothing
    finally:
        source.close()
