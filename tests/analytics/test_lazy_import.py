"""polars loads only for the DataFrame API: start-up paths through analytics stay light."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    probe = (
        code
        + "\nimport sys\nprint('LOADED=' + ','.join(sorted(m for m in ('polars', 'pandas') if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    loaded = result.stdout.strip().splitlines()[-1].removeprefix("LOADED=")
    return set(filter(None, loaded.split(",")))


def test_importing_analytics_does_not_load_polars() -> None:
    assert _loaded_after("import comptroller.analytics") == set()


def test_budget_state_and_the_budget_gate_do_not_load_polars() -> None:
    code = (
        "import comptroller.analytics as a\n"
        "from comptroller.analytics import budget_state, open_reader, run_panel\n"
        "import comptroller.analytics._gate\n"
        "import comptroller.cli._budget\n"
        "con = a.connect(':memory:')\n"
        "budget_state(a.DuckDBReader(con))\n"
    )
    assert _loaded_after(code) == set()


def test_the_dataframe_api_loads_polars_on_first_use() -> None:
    # The control: the probe sees polars once the lazy attribute is touched.
    assert "polars" in _loaded_after("from comptroller.analytics import Analytics")
