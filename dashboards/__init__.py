"""Dashboards: declarative panels shared by the TUI, `comptroller report` and the budget gate.

A panel is one TOML file in `dashboards/panels/` (shipped) or in a folder of your own::

    title = "Spend by purpose"
    view = "spend"                # overview | spend | budgets | circuits | profiles | calls
    display = "bar"               # table | bar | sparkline | timeline | stat
    sql = '''
    SELECT purpose, sum(cost_usd) AS cost_usd FROM llm_usage_daily
    WHERE day >= $since::DATE AND ($tenant IS NULL OR tenant = $tenant)
    GROUP BY ALL ORDER BY cost_usd DESC
    '''
    [params.since]
    type = "date"
    default = "today-6d"
    [params.tenant]
    description = "only this tenant"
    [options]
    x = "purpose"
    y = "cost_usd"

One panel per question, read alike by the TUI, the CLI and CI reports: a reader that needs
a narrower answer passes a parameter (an optional filter is `($purpose IS NULL OR purpose =
$purpose)`) rather than keeping a copy of the panel, and panels return amounts as DECIMAL
(each reader writes them with `comptroller.money`). Name a panel for its question, never for
its reader (`tests/analytics/test_panels.py` checks both).

Built-in parameters (`$now`, `$today`, `$day_start`, `$day_end`, `$month_start`) need no
declaration. Parameters may cross HTTP as JSON, so cast them in SQL (`$since::DATE`).
Run a panel with `comptroller.analytics.run_panel(reader, panel, **params)`.

Example:
    >>> from comptroller.dashboards import load_panels
    >>> panels = load_panels()
    >>> [p.name for p in panels.for_view("budgets")][:1]
    ['budget_state']
"""

from comptroller.dashboards._loader import (
    PanelError,
    PanelSet,
    builtin_panels_dir,
    load_panels,
    parse_panel,
)
from comptroller.dashboards._panel import (
    BUILTIN_PARAMS,
    DISPLAYS,
    PARAM_TYPES,
    VIEWS,
    Clock,
    Display,
    Panel,
    Param,
    ParamType,
    View,
    coerce,
    sql_parameters,
)

__all__ = [
    "BUILTIN_PARAMS",
    "DISPLAYS",
    "PARAM_TYPES",
    "VIEWS",
    "Clock",
    "Display",
    "Panel",
    "PanelError",
    "PanelSet",
    "Param",
    "ParamType",
    "View",
    "builtin_panels_dir",
    "coerce",
    "load_panels",
    "parse_panel",
    "sql_parameters",
]
