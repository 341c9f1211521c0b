"""Refresh query time of each dashboard view: the shared panels against the forks they replaced.

    uv run python bench/bench_panel_refresh.py --db USAGE.duckdb --old-queries OLD.py \
        --old-panels OLD_PANELS_DIR [--repeat 15]

`--old-queries` is the former `tui/_queries.py` and `--old-panels` the former panel folder
(e.g. `git show REV:tui/_queries.py`, and each `dashboards/panels/*.toml` of REV), so both
sides run in this process, alternating per repeat (this machine's load changes from minute
to minute). The figure is one view's refresh: its queries, capped, through the panels, as
the dashboard's worker runs them. The file is opened read-only (no migration).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

import duckdb

from comptroller.analytics import DuckDBReader
from comptroller.dashboards import PanelSet, load_panels
from comptroller.tui import VIEW_IDS, Filters
from comptroller.tui._model import RangeName, ViewId, time_frame
from comptroller.tui._queries import run_query, view_queries


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_queries", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _refresh(
    reader: DuckDBReader,
    panels: PanelSet,
    queries: ModuleType | None,
    view: ViewId,
    range_: RangeName,
    now: datetime,
) -> float:
    frame = time_frame(now, range_, "UTC")
    build = view_queries if queries is None else queries.view_queries
    specs = build(view, drill="reasoning" if view == "spend" else None)
    began = time.perf_counter()
    for spec in specs:
        run_query(reader, panels, spec, filters=Filters(range=range_), frame=frame, max_rows=500)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--old-queries", type=Path, required=True)
    parser.add_argument("--old-panels", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    con = duckdb.connect(str(args.db), read_only=True)
    reader = DuckDBReader(con)
    now = reader.query("SELECT max(ts) AS ts FROM llm_usage").to_pylist()[0]["ts"]
    new_panels = load_panels()
    old_panels = load_panels([args.old_panels])
    old_queries = _module(args.old_queries)
    print(f"{'view':10} {'range':6} {'old median':>11} {'new median':>11} {'new/old':>8}")
    ranges: tuple[RangeName, ...] = ("today", "7d")
    for range_ in ranges:
        for view in VIEW_IDS:
            old: list[float] = []
            new: list[float] = []
            for _ in range(args.repeat):
                old.append(_refresh(reader, old_panels, old_queries, view, range_, now))
                new.append(_refresh(reader, new_panels, None, view, range_, now))
            o, n = statistics.median(old) * 1000, statistics.median(new) * 1000
            print(f"{view:10} {range_:6} {o:9.1f}ms {n:9.1f}ms {n / o:8.2f}")
    con.close()


if __name__ == "__main__":
    main()
