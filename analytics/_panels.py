"""Running dashboard panels through a reader."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import pyarrow as pa

from comptroller.analytics._errors import QueryError
from comptroller.analytics._reader import Reader
from comptroller.dashboards import Panel, PanelSet, load_panels


def run_panel(
    reader: Reader,
    panel: Panel,
    *,
    now: dt.datetime | None = None,
    timezone: str = "UTC",
    **params: object,
) -> pa.Table:
    """Run `panel`'s SQL through `reader` with `params` over the panel's defaults.

    Args:
        reader: Where to run it (a DuckDB file or a running collector).
        panel: The panel to run.
        now: The instant relative parameters resolve against (default: now).
        timezone: Time zone of `$today`, `$day_start`, … — the one the rollup is cut in.
        **params: Values of the panel's declared parameters (`None` means SQL NULL).

    Raises:
        UsageError: An unknown parameter or a value that does not fit.
        QueryError: The SQL failed; the message names the panel and its file.
    """
    bound = panel.bind(params, now=now, timezone=timezone)
    try:
        return reader.query(panel.sql, bound)
    except QueryError as exc:
        raise QueryError(f"panel {panel.name!r} ({panel.source}): {exc}") from exc


@lru_cache(maxsize=1)
def builtin_panels() -> PanelSet:
    """The panels that ship with comptroller (loaded once per process).

    Code that must not change behaviour with a user's panel folder (the budget gate,
    `budget_state`) runs these.
    """
    return load_panels()
