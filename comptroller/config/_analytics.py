from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AnalyticsSettings(BaseModel):
    """Settings of analytics: rollups, budget state, reports (`[analytics]` in the file).

    Environment: `COMPTROLLER_ANALYTICS_<FIELD>`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_warn_ratio: float = Field(default=0.8, gt=0, le=1)
    """Utilisation at which a budget records a warning event (and `budget check` can fail)."""
    read_url: str | None = None
    """Base URL of a running collector to read through (`comptroller sql`, `budget check`,
    `report`, the TUI) instead of opening the DuckDB file, e.g. `http://127.0.0.1:4318`.
    DuckDB admits one writing process: while a collector writes the file, read through it.
    Its bearer token is `collector.token`."""
    panel_dirs: tuple[Path, ...] = ()
    """Extra folders of dashboard panel files (`*.toml`); a panel there replaces a shipped
    panel of the same name."""
