"""`comptroller.analytics` is the one reading API of the CLI, the dashboard and CI reports.

Its names are pinned: adding one is a decision, made by changing this list. They load on
first use, so importing the package costs no DuckDB, Arrow or polars (a command's `--help`,
the dashboard's first frame).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import comptroller.analytics as analytics

PINNED = {
    # readers and their errors
    *["ARROW_STREAM", "AnalyticsError", "DuckDBReader", "HttpReader", "Limits", "LocalReader"],
    *["QueryError", "QueryTimeout", "Reader", "ReaderUnavailable", "check_read_only"],
    *["open_reader", "reader_from_settings", "run_read_only", "truncated_at"],
    # a PostgreSQL ledger
    *["PgReader", "budget_state_pg"],
    # the PostgreSQL ledger: connection, migrations, readers bound by row-level security
    *["PG_SCHEMA_VERSION", "connect_pg", "migrate_pg", "pg_schema_version", "shown_url"],
    *["grant_reader", "revoke_reader", "reader_bindings"],
    # schema and landing (the collector)
    *["DEDUP_KEYS", "MIGRATIONS", "ROLLUP_TIMEZONE_KEY", "SCHEMA_VERSION", "add_usage_rows"],
    *["apply_usage_batch", "connect", "insert_new", "insert_new_sql", "keys_unique"],
    *["meta_value", "migrate", "rebuild_rollup", "rollup_timezone", "schema_version"],
    *["set_meta", "time_bounds", "Compacted", "compact"],
    # panels, budgets and refusals
    *["builtin_panels", "run_panel", "BudgetEvent", "BudgetState", "BudgetStatus"],
    *["KeyRefusals", "Refusals", "budget_refusals", "budget_state", "record_budget_events"],
    # the budget gate, the spend report, repricing, query output
    *["GateResult", "budgets_table", "check_budgets", "gate_json", "junit_xml"],
    *["report_to_github", "SpendDiff", "SpendLine", "compare_spend", "report_json"],
    *["report_markdown", "RepriceLine", "RepriceResult", "reprice", "reprice_pg", "render_result"],
    *["write_result"],
    # planning spend: prompt-cache savings, what-if re-pricing, the FOCUS export
    *["CacheSaving", "cache_savings", "savings_prices", "savings_markdown", "savings_json"],
    *["WhatIf", "WhatIfLine"],
    *["WhatIfResult", "what_if", "what_if_json", "what_if_markdown"],
    *["FOCUS_VERSION", "focus_table", "write_focus"],
    # forecasts and anomalies
    *["Forecast", "ForecastBy", "forecast", "Anomaly", "AnomalyRule", "spend_anomalies"],
    *["record_anomaly_events"],
    # fees and spend by attribution
    *["FeeLine", "fee_spend", "fees_json", "fees_markdown"],
    *["AttributedSpend", "spend_by_attribution", "attribution_json", "attribution_markdown"],
    # the DataFrame API
    *["Analytics", "DIMENSIONS", "Dimension"],
}


def test_the_reading_api_is_pinned() -> None:
    assert set(analytics.__all__) == PINNED


def test_every_name_resolves_and_an_unknown_one_is_an_attribute_error() -> None:
    for name in analytics.__all__:
        assert getattr(analytics, name) is not None, name
    assert "reader_from_settings" in dir(analytics)
    with pytest.raises(AttributeError, match="no_such_name"):
        analytics.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_duckdb_arrow_or_polars() -> None:
    probe = (
        "import sys\nimport comptroller.analytics\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'duckdb', 'pyarrow', 'polars'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    # The control: a name that needs DuckDB loads it.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            probe.replace(
                "import comptroller.analytics\n", "from comptroller.analytics import connect\n"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "duckdb" in loaded.stdout
