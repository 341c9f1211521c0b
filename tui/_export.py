"""Export what a view shows (rows as filtered and sorted) to CSV, Parquet or JSON lines."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeAlias

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.text import Text

from comptroller.tui._widgets import DataGrid

ExportFormat: TypeAlias = Literal["csv", "parquet", "json"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "parquet", "json")
_SUFFIX = {"csv": "csv", "parquet": "parquet", "json": "jsonl"}


def _plain(value: object) -> object:
    return value.plain if isinstance(value, Text) else value


def grid_table(grid: DataGrid) -> pa.Table:
    """The rows `grid` shows, in its order, with the raw values of its columns."""
    keys = [c.key for c in grid.columns]
    rows = [{k: _plain(row.get(k)) for k in keys} for row in grid.shown]
    if not rows:
        return pa.table({k: pa.array([], pa.string()) for k in keys})
    return pa.Table.from_pylist(rows)


def export_grids(
    grids: Sequence[DataGrid],
    fmt: ExportFormat,
    *,
    folder: Path,
    stem: str,
    now: dt.datetime,
) -> list[Path]:
    """Write one file per grid into `folder`; returns the paths written.

    Names are `<stem>-<grid>-<YYYYmmddTHHMMSS>.<ext>` so exports never overwrite each other
    within a second.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    written: list[Path] = []
    for n, grid in enumerate(grids):
        name = (grid.id or f"table{n}").replace("_", "-")
        path = folder / f"{stem}-{name}-{stamp}.{_SUFFIX[fmt]}"
        table = grid_table(grid)
        if fmt == "csv":
            pacsv.write_csv(table, path)
        elif fmt == "parquet":
            pq.write_table(table, path)
        else:
            with path.open("w", encoding="utf-8") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, default=str) + "\n")
        written.append(path)
    return written
