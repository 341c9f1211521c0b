from __future__ import annotations

import json
from pathlib import Path

import pytest
from _usage_db import NOW, fill, run_cli, usage_row


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return fill(
        tmp_path / "main.duckdb",
        [
            usage_row(NOW, purpose="chat", model="gpt-4o-mini", cost="1.00"),
            usage_row(NOW, purpose="extract", model="gpt-4o", cost="2.00"),
        ],
    )


@pytest.fixture
def current(tmp_path: Path) -> Path:
    return fill(
        tmp_path / "pr.duckdb",
        [
            usage_row(NOW, purpose="chat", model="gpt-4o-mini", cost="1.00"),
            usage_row(NOW, purpose="extract", model="gpt-4o", cost="2.50"),
            usage_row(NOW, purpose="summarise", model="gpt-4o", cost="0.10"),
        ],
    )


def test_markdown_report_shows_absolute_and_percentage_change(
    capsys: pytest.CaptureFixture[str], baseline: Path, current: Path
) -> None:
    code, out, err = run_cli(capsys, "report", "--db", str(current), "--baseline", str(baseline))
    assert code == 0, err
    assert "Total: **$3.60** vs $3.00 (+$0.60, +20.0%)" in out
    assert "| extract | openai:gpt-4o | $2.00 | $2.50 | +$0.50 | +25.0% | 1 → 1 |" in out
    assert "| summarise | openai:gpt-4o | $0.00 | $0.10 | +$0.10 | new | 0 → 1 |" in out
    assert "| chat | openai:gpt-4o-mini | $1.00 | $1.00 | ±$0.00 | +0.0% | 1 → 1 |" in out


def test_json_report(capsys: pytest.CaptureFixture[str], baseline: Path, current: Path) -> None:
    code, out, _ = run_cli(
        capsys, "report", "--db", str(current), "--baseline", str(baseline), "--format", "json"
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["total"]["change_usd"] == "0.6000000000"
    assert payload["total"]["change_pct"] == pytest.approx(20.0)
    assert payload["lines"][0]["purpose"] == "extract"
    assert payload["failed"] is False


@pytest.mark.parametrize(
    ("flag", "value", "code"),
    [
        ("--fail-above-pct", "25", 0),
        ("--fail-above-pct", "10", 1),
        ("--fail-above-usd", "1", 0),
        ("--fail-above-usd", "0.50", 1),
    ],
)
def test_thresholds_fail_the_build(
    capsys: pytest.CaptureFixture[str],
    baseline: Path,
    current: Path,
    flag: str,
    value: str,
    code: int,
) -> None:
    got, out, err = run_cli(
        capsys, "report", "--db", str(current), "--baseline", str(baseline), flag, value
    )
    assert got == code
    if code:
        assert "**Failed:**" in out
        assert len(err.strip().splitlines()) == 1


def test_spend_drop_never_fails(
    capsys: pytest.CaptureFixture[str], baseline: Path, current: Path
) -> None:
    code, out, _ = run_cli(
        capsys, "report", "--db", str(baseline), "--baseline", str(current), "--fail-above-pct", "0"
    )
    assert code == 0
    assert "-16.7%" in out


def test_bad_amount_is_usage_error(
    capsys: pytest.CaptureFixture[str], baseline: Path, current: Path
) -> None:
    code, _, err = run_cli(
        capsys,
        "report",
        "--db",
        str(current),
        "--baseline",
        str(baseline),
        "--fail-above-usd",
        "lots",
    )
    assert code == 2
    assert "--fail-above-usd" in err
