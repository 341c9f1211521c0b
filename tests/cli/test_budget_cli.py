from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from _usage_db import NOW, fill, run_cli, usage_row

AT = ("--now", NOW.strftime("%Y-%m-%dT%H:%M:%S%z"))


@pytest.fixture
def ok_db(tmp_path: Path) -> Path:
    return fill(tmp_path / "ok.duckdb", [usage_row(NOW, cap="10", cost="1")])


@pytest.fixture
def warn_db(tmp_path: Path) -> Path:
    return fill(
        tmp_path / "warn.duckdb",
        [
            usage_row(NOW, tenant="t-ok", cap="10", cost="1"),
            usage_row(NOW, tenant="t-warn", cap="10", cost="8.5"),
            usage_row(NOW, tenant="t-warn", cap="10", cost=None, model="mystery"),
        ],
    )


@pytest.fixture
def over_db(tmp_path: Path) -> Path:
    return fill(tmp_path / "over.duckdb", [usage_row(NOW, tenant="t-over", cap="2", cost="3")])


def test_within_budget_exits_0_with_a_table(
    capsys: pytest.CaptureFixture[str], ok_db: Path
) -> None:
    code, out, err = run_cli(capsys, "budget", "check", "--db", str(ok_db), *AT)
    assert code == 0, err
    assert "acme" in out
    assert "10%" in out
    assert "1 budget on 2026-11-21: 0 exceeded, 0 warning, 1 ok" in out


def test_warning_passes_by_default_and_fails_with_fail_on_warn(
    capsys: pytest.CaptureFixture[str], warn_db: Path
) -> None:
    code, out, _ = run_cli(capsys, "budget", "check", "--db", str(warn_db), "--allow-unpriced", *AT)
    assert code == 0
    assert "WARNING" in out
    assert "1 unpriced call not counted (openai:mystery)" in out
    code, _, err = run_cli(
        capsys, "budget", "check", "--db", str(warn_db), "--fail-on", "warn", *AT
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "t-warn/ctx/chat spent $8.50 of $10.00 (85%)" in err


def test_exceeded_exits_1(capsys: pytest.CaptureFixture[str], over_db: Path) -> None:
    code, out, err = run_cli(capsys, "budget", "check", "--db", str(over_db), *AT)
    assert code == 1
    assert "EXCEEDED" in out
    assert "at or over the cap" in err


def test_json_output(capsys: pytest.CaptureFixture[str], warn_db: Path) -> None:
    code, out, _ = run_cli(
        capsys, "budget", "check", "--db", str(warn_db), "--json", "--allow-unpriced", *AT
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["passed"] is True
    assert payload["unpriced_calls"] == 1
    by_tenant = {b["tenant"]: b for b in payload["budgets"]}
    assert by_tenant["t-warn"]["status"] == "warning"
    assert by_tenant["t-warn"]["spent_usd"] == "8.5000000000"
    assert by_tenant["t-warn"]["unpriced_models"] == ["mystery"]


def test_junit_report_has_one_case_per_budget_and_failures(
    capsys: pytest.CaptureFixture[str], warn_db: Path, tmp_path: Path
) -> None:
    report = tmp_path / "budget.xml"
    code, _, _ = run_cli(
        capsys,
        "budget",
        "check",
        "--db",
        str(warn_db),
        "--fail-on",
        "warn",
        "--junit",
        str(report),
        *AT,
    )
    assert code == 1
    suite = ET.parse(report).getroot()
    assert suite.get("tests") == "2"
    assert suite.get("failures") == "1"
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["t-warn/ctx/chat"]


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], ok_db: Path) -> None:
    code, _, _ = run_cli(capsys, "budget", "check", "--db", str(ok_db), "--fail-on", "never")
    assert code == 2


def test_github_actions_gets_annotations_and_a_step_summary(
    warn_db: Path, over_db: Path, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comptroller",
            "budget",
            "check",
            "--db",
            str(warn_db),
            "--allow-unpriced",
            *AT,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "::warning title=Budget warning::t-warn/ctx/chat spent $8.50 of $10.00 (85%25)"
        in result.stdout
    )
    assert "::warning title=Unpriced usage::1 calls" in result.stdout
    text = summary.read_text()
    assert text.startswith("earlier step\n## ✅ Budget check — 2026-11-21")
    assert "| t-warn | ctx | chat | $8.50 | $10.00 | 85% |" in text
    over = subprocess.run(
        [sys.executable, "-m", "comptroller", "budget", "check", "--db", str(over_db), *AT],
        capture_output=True,
        text=True,
        env={**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
        timeout=120,
    )
    assert over.returncode == 1
    assert "::error title=Budget exceeded::t-over/ctx/chat" in over.stdout
    assert "## ❌ Budget check" in summary.read_text()


def test_check_through_a_live_collector(
    capsys: pytest.CaptureFixture[str], live_collector: Any
) -> None:
    live_collector.write([usage_row(NOW, tenant="t-live", cap="1", cost="2")])
    code, out, err = run_cli(
        capsys,
        "budget",
        "check",
        "--url",
        live_collector.url,
        "--json",
        *AT,
    )
    assert code == 1
    assert json.loads(out)["budgets"][0]["tenant"] == "t-live"
    assert "at or over the cap" in err


@pytest.fixture
def refused_db(data_dir: Path) -> Path:
    """A database where the control plane refused calls: a real plane (embedded sink,
    langchain-openai over HTTP to a local OpenAI-compatible server) with a $0.0002 daily
    cap whose calls reserve more than is left after the first one."""
    from comptroller.config import load_settings
    from comptroller.control import (
        BudgetExceeded,
        BudgetSpec,
        CallDefaults,
        ControlPlane,
        ModelRef,
        ResolvedProfile,
        StaticProfiles,
    )
    from comptroller.control.testing import FakeOpenAIServer, ModelBehaviour

    db = data_dir / "refused.duckdb"
    settings = load_settings(None, data_dir=data_dir, db=db, telemetry="embedded")
    with FakeOpenAIServer() as server:
        server.behave(
            "gpt-4o-mini", ModelBehaviour(content="ok", prompt_tokens=200, completion_tokens=50)
        )
        profiles = StaticProfiles(
            {
                "scoring": ResolvedProfile(
                    purpose="scoring",
                    model=ModelRef(provider="openai", model="gpt-4o-mini"),
                    base_url=server.base_url,
                    budget=BudgetSpec(daily_usd=Decimal("0.0002")),
                    # A call costs $0.00006 (200 + 50 tokens) but reserves its worst case,
                    # ~$0.00012 (200 output tokens at $0.60/M): the third does not fit.
                    defaults=CallDefaults(max_tokens=200),
                )
            }
        )
        with ControlPlane(settings, resolver=profiles) as plane:
            model = plane.chat_model("scoring", org="initech", domain="initech-lab", context="ops")
            refused = 0
            for _ in range(4):
                try:
                    model.invoke("score this")
                except BudgetExceeded:
                    refused += 1
    assert refused == 2, "the setup must make the control plane refuse calls"
    return db


def test_a_key_whose_calls_were_refused_is_refused_with_why_and_exits_3(
    capsys: pytest.CaptureFixture[str], refused_db: Path, tmp_path: Path
) -> None:
    import duckdb

    con = duckdb.connect(str(refused_db), read_only=True)
    try:
        (refusals,) = con.execute(
            "SELECT count(*) FROM budget_events WHERE kind = 'rejected'"
        ).fetchone() or (0,)
    finally:
        con.close()
    report = tmp_path / "budget.xml"
    code, out, err = run_cli(
        capsys, "budget", "check", "--db", str(refused_db), "--junit", str(report)
    )

    assert code == 3, err
    row = next(line for line in out.splitlines() if line.startswith("initech-lab"))
    assert "REFUSED" in row
    assert row.split("REFUSED", 1)[1].split()[0] == str(refusals)  # the refused column
    assert row.split()[3:6] == ["$0.00012", "$0.0002", "60%"]  # not "$0.0001 of $0.0002"
    assert (
        "initech-lab/ops/scoring: 2 calls refused: the last needed $0.000124 (worst case) "
        "but only $0.000080 of the $0.000200 cap was left "
        "(spent $0.000120, reserved in flight $0.000000)"
    ) in out
    assert "1 budget on" in out
    assert "1 refused, 0 exceeded, 0 warning, 0 ok" in out
    assert len(err.strip().splitlines()) == 1
    assert (
        "1 budget refused calls: initech-lab/ops/scoring (2 calls refused, needed $0.000124 > $0.000080 left"
        in err
    )

    code, out, _ = run_cli(capsys, "budget", "check", "--db", str(refused_db), "--json")
    assert code == 3
    [budget] = json.loads(out)["budgets"]
    assert budget["status"] == "refused"
    assert budget["refused_calls"] == refusals
    assert budget["refusals"]["cap_usd"] == "0.0002000000"
    assert budget["refusals"]["left_usd"] == "0.0000800000"
    assert "cap was left" in budget["refused_why"]

    suite = ET.parse(report).getroot()
    [failure] = [f for f in suite.iter("failure")]
    assert failure.get("type") == "budget.refused"
    assert "refused: the last needed" in (failure.get("message") or "")


def test_exit_codes_are_documented_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "budget", "check", "--help")
    assert code == 0
    assert "3  the control plane refused a budget's calls today" in out
