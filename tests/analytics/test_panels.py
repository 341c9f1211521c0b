from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from usage_db import insert_usage, usage_row

from comptroller.analytics import DuckDBReader, QueryError, connect, rebuild_rollup, run_panel
from comptroller.dashboards import VIEWS, Panel, load_panels, parse_panel, sql_parameters
from comptroller.errors import UsageError

NOW = dt.datetime(2026, 11, 21, 15, 0, tzinfo=dt.UTC)

GOOD = """
title = "Mine"
view = "spend"
display = "bar"
sql = "SELECT purpose, sum(cost_usd) AS cost_usd FROM llm_usage_daily WHERE day >= $since::DATE GROUP BY 1"
[params.since]
type = "date"
default = "today-6d"
"""


def test_shipped_panels_all_load_and_cover_every_view() -> None:
    panels = load_panels()
    assert panels.errors == []
    assert {panel.view for panel in panels} == set(VIEWS)


def test_malformed_panel_files_are_reported_with_path_and_problem_and_the_rest_load(
    tmp_path: Path,
) -> None:
    (tmp_path / "good.toml").write_text(GOOD)
    (tmp_path / "broken.toml").write_text("title = \n")
    (tmp_path / "badview.toml").write_text(GOOD.replace('"spend"', '"money"'))
    (tmp_path / "undeclared.toml").write_text(GOOD.replace("$since", "$from"))
    (tmp_path / "notes.txt").write_text("not a panel")
    panels = load_panels([tmp_path])
    problems = {Path(e.path).name: e.problem for e in panels.errors}
    assert set(problems) == {"broken.toml", "badview.toml", "undeclared.toml"}
    assert "invalid TOML" in problems["broken.toml"]
    assert "'money'" in problems["badview.toml"]
    assert "$from" in problems["undeclared.toml"]
    assert all(str(tmp_path) in e.path for e in panels.errors)
    assert "good" in panels
    assert "budget_state" in panels


def test_user_panel_with_a_shipped_name_replaces_it(tmp_path: Path) -> None:
    (tmp_path / "spend_today.toml").write_text(GOOD)
    panels = load_panels([tmp_path])
    assert panels["spend_today"].title == "Mine"
    assert panels["spend_today"].source == str(tmp_path / "spend_today.toml")


def test_missing_extra_folder_is_an_error_not_a_crash(tmp_path: Path) -> None:
    panels = load_panels([tmp_path / "nope"])
    assert [e.problem for e in panels.errors] == ["not a directory"]
    assert len(panels) > 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('display = "bar"', 'display = "pie"'), "display 'pie'"),
        (('type = "date"', 'type = "when"'), "type 'when'"),
        (('default = "today-6d"', 'default = "someday"'), "bad default"),
        (('title = "Mine"', 'title = "Mine"\ncolour = 1'), "unknown key colour"),
        (('title = "Mine"\n', ""), "missing required key 'title'"),
    ],
)
def test_invalid_panel_text_names_the_problem(change: tuple[str, str], problem: str) -> None:
    with pytest.raises(UsageError, match="x.toml: .*" + problem.replace("(", r"\(")):
        parse_panel(GOOD.replace(*change), path="x.toml")


def test_bind_resolves_relative_defaults_in_the_time_zone_and_refuses_unknown_params() -> None:
    panel = parse_panel(GOOD)
    late = dt.datetime(2026, 11, 21, 23, 30, tzinfo=dt.UTC)  # already the 22nd in Tokyo
    assert panel.bind(now=late, timezone="Asia/Tokyo") == {"since": dt.date(2026, 11, 16)}
    assert panel.bind({"since": "2026-01-02"}, now=late) == {"since": dt.date(2026, 1, 2)}
    with pytest.raises(UsageError, match="no parameter tenant"):
        panel.bind({"tenant": "x"})
    with pytest.raises(UsageError, match=r"\$since \(date\)"):
        panel.bind({"since": "yesterday-ish"})


def required_values(panel: Panel) -> dict[str, object]:
    samples = {
        "string": "x",
        "int": 1,
        "float": 1.0,
        "bool": True,
        "date": NOW.date(),
        "timestamp": NOW,
    }
    return {p.name: samples[p.type] for p in panel.params if p.required}


def test_every_shipped_panel_runs_on_an_empty_and_on_a_filled_database(tmp_path: Path) -> None:
    con = connect(tmp_path / "u.duckdb")
    reader = DuckDBReader(con)
    panels = load_panels()
    for panel in panels:
        run_panel(reader, panel, now=NOW, **required_values(panel))
    insert_usage(
        con,
        [
            usage_row(NOW - dt.timedelta(minutes=5), cap="1", cost="0.9"),
            usage_row(NOW - dt.timedelta(days=2), tenant="beta", purpose="extract", cost="2"),
            usage_row(NOW - dt.timedelta(minutes=1), cost=None, model="mystery"),
        ],
    )
    con.execute(
        "INSERT INTO circuit_events (event_id, ts, provider, model, state) VALUES "
        "('c1', ?, 'openai', 'gpt-4o', 'opened'), ('c2', ?, 'openai', 'gpt-4o-mini', 'opened'),"
        " ('c3', ?, 'openai', 'gpt-4o-mini', 'closed')",
        [NOW - dt.timedelta(minutes=9), NOW - dt.timedelta(minutes=8), NOW],
    ).fetchall()
    rebuild_rollup(con, timezone="UTC")
    results = {
        panel.name: run_panel(reader, panel, now=NOW, **required_values(panel)) for panel in panels
    }
    assert results["spend_today"].to_pylist()[0]["unpriced_calls"] == 1
    assert float(results["spend_today"].to_pylist()[0]["cost_usd"]) == pytest.approx(0.9)
    assert float(results["spend_month"].to_pylist()[0]["cost_usd"]) == pytest.approx(2.9)
    assert [r["model"] for r in results["circuits_open"].to_pylist()] == ["gpt-4o"]
    assert results["budgets_at_risk"].column("status").to_pylist() == ["warning"]
    daily = results["spend_daily"].to_pylist()
    assert len(daily) == 2 * 30  # two purposes × 30 days, zero-filled for sparklines
    assert results["recent_calls"].num_rows == 2  # the row two days ago is outside the hour
    # Circuits that opened are alerts; with no delivery recorded, no webhook has an outcome.
    alerts = results["alert_deliveries"].to_pylist()
    assert [(a["alert"], a["subject"], a["status"]) for a in alerts] == [
        ("circuit.opened", "openai:gpt-4o-mini", None),
        ("circuit.opened", "openai:gpt-4o", None),
    ]
    assert results["alert_webhooks"].num_rows == 0
    con.close()


def test_panel_sql_failure_names_the_panel_and_its_file(tmp_path: Path) -> None:
    con = connect(tmp_path / "u.duckdb")
    panel = parse_panel(GOOD.replace("llm_usage_daily", "no_such_table"), path="mine.toml")
    with pytest.raises(QueryError, match=r"panel 'panel' \(mine.toml\).*no_such_table"):
        run_panel(DuckDBReader(con), panel, now=NOW)
    con.close()


# One panel per question: the TUI, the CLI and CI reports read the same panels. A copy made
# for one reader (with an extra filter or a cast) drifts from the original; these two checks
# make that visible. A name for a reader (`tui_…`) rather than for a question is the first
# sign; the same query with only optional filters, casts or the row cap changed is the second.
_OPTIONAL_FILTER_RE = re.compile(
    r"\(\s*\$\w+\s+is\s+null\s+or\s+[^()]*(?:\([^()]*\)[^()]*)*\)", re.IGNORECASE
)
_CAST_RE = re.compile(r"::\s*\w+(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?")


def question_of(sql: str) -> str:
    """`sql` without comments, casts, optional `($x IS NULL OR …)` filters and `LIMIT $limit`."""
    text = re.sub(r"--[^\n]*", " ", sql)
    text = _CAST_RE.sub("", text)
    text = _OPTIONAL_FILTER_RE.sub(" true ", text)
    text = re.sub(r"\blimit\s+\$limit\b", " ", text, flags=re.IGNORECASE)
    text = " ".join(text.lower().split())
    text = re.sub(r"\s+and true\b", "", text)
    return re.sub(r"\bwhere true and\b", "where", text).replace(" where true ", " ")


def test_no_panel_is_named_for_one_reader() -> None:
    names = [panel.name for panel in load_panels()]
    assert [n for n in names if n.startswith(("tui_", "cli_", "ci_"))] == []


def test_no_two_panels_ask_the_same_question() -> None:
    seen: dict[str, str] = {}
    same: list[tuple[str, str]] = []
    for panel in load_panels():
        key = question_of(panel.sql)
        if key in seen:
            same.append((seen[key], panel.name))
        seen.setdefault(key, panel.name)
    assert same == [], "same SQL up to optional filters and casts: give one panel the parameters"


def test_question_of_sees_through_filters_casts_and_the_cap() -> None:
    shared = "SELECT purpose, sum(cost_usd) AS c FROM t WHERE day = $d::DATE GROUP BY 1"
    fork = (
        "SELECT purpose, sum(cost_usd)::DOUBLE AS c FROM t\n"
        "WHERE day = $d::DATE\n  AND ($tenant IS NULL OR coalesce(tenant, '') = $tenant)\n"
        "GROUP BY 1 LIMIT $limit"
    )
    assert question_of(fork) == question_of(shared)
    assert question_of(shared.replace("purpose", "tenant")) != question_of(shared)


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        # An apostrophe in a comment used to open a "string" that hid every $param after it.
        ("SELECT 1 -- the tenant's spend\nWHERE t = $tenant AND d >= $since", {"tenant", "since"}),
        ("SELECT '-- not a comment', $a -- $b is\nFROM t WHERE x = $c", {"a", "c"}),
        ("SELECT 'it''s $no' AS s, \"$col\" FROM t /* $gone 'x */ WHERE y = $yes", {"yes"}),
    ],
)
def test_sql_parameters_skip_strings_and_comments_whichever_comes_first(
    sql: str, names: set[str]
) -> None:
    assert sql_parameters(sql) == names


def test_a_panel_with_an_apostrophe_in_a_comment_still_declares_its_parameters() -> None:
    commented = GOOD.replace(
        'sql = "SELECT', "sql = '''\n-- the purpose's spend since a day\nSELECT"
    ).replace('GROUP BY 1"', "GROUP BY 1\n'''")
    with pytest.raises(UsageError, match=r"\$since"):
        parse_panel(commented.replace('[params.since]\ntype = "date"\ndefault = "today-6d"\n', ""))
    assert parse_panel(commented).uses == {"since"}
