from __future__ import annotations

import json
import os
import subprocess
import sys
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
