"""The dashboard reads the shipped panels by name, the same ones the CLI and CI reports list."""

from __future__ import annotations

from comptroller.dashboards import load_panels
from comptroller.tui._model import VIEW_IDS
from comptroller.tui._queries import QuerySpec, view_queries


def every_query() -> list[QuerySpec]:
    specs: list[QuerySpec] = []
    for view in VIEW_IDS:
        specs += view_queries(view, drill="scoring", trace_id="t1", history={"purpose": "scoring"})
    return specs


def test_every_panel_the_dashboard_runs_is_a_shipped_panel() -> None:
    shipped = load_panels()
    missing = sorted({s.panel for s in every_query()} - {p.name for p in shipped})
    assert missing == []


def test_every_value_the_dashboard_passes_is_a_parameter_of_its_panel() -> None:
    # `panel_params` passes only what a panel declares: a value for a parameter the panel
    # lost would be dropped without a word (a drill-down showing every purpose).
    shipped = load_panels()
    dropped = [
        f"{spec.panel}: ${name}"
        for spec in every_query()
        for name in spec.params
        if name not in {p.name for p in shipped[spec.panel].params}
    ]
    assert dropped == []
