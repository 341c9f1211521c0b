from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TuiSettings(BaseModel):
    """Settings of the terminal dashboard (`[tui]` in the file).

    Environment: `COMPTROLLER_TUI_<FIELD>`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    refresh_s: float = Field(default=2.0, gt=0)
    """Seconds between refreshes of the visible view."""
    max_rows: int = Field(default=500, gt=0)
    """Rows shown per table at most; the rest is counted, never loaded."""
    theme: Literal["textual-dark", "textual-light"] = "textual-dark"
    """Colour theme at start (`T` switches)."""
    export_dir: Path | None = None
    """Folder the export key writes CSV/Parquet/JSON files to. Default: the working directory."""
    keys: dict[str, str] = Field(default_factory=dict)
    """Key bindings by action id, e.g. `{"refresh" = "r,f5", "view.calls" = "c"}` (see `?`)."""
