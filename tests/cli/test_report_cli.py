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


def test_small_amounts_share_a_column_precision_and_never_read_as_zero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = fill(tmp_path / "b.duckdb", [usage_row(NOW, purpose="score", cost="0.0132")])
    now = fill(
        tmp_path / "n.duckdb",
        [
            usage_row(NOW, purpose="score", cost="0.0141"),
            usage_row(NOW, purpose="embed", cost="0.000034"),
        ],
    )
    code, out, err = run_cli(capsys, "report", "--db", str(now), "--baseline", str(base))
    assert code == 0, err
    # Each column at the precision its smallest non-zero amount needs: "$0.0132 | $0.014100"
    # where one formatter for all wrote "$0.01 | $0.01"; the total sentence shares one too.
    assert "| score | openai:gpt-4o-mini | $0.0132 | $0.014100 | +$0.000900 | +6.8% |" in out
    assert "| embed | openai:gpt-4o-mini | $0.0000 | $0.000034 | +$0.000034 | new |" in out
    assert "Total: **$0.014134** vs $0.013200 (+$0.000934, +7.1%)" in out


def test_refused_calls_of_the_run_are_shown_with_why(
    capsys: pytest.CaptureFixture[str], baseline: Path, current: Path
) -> None:
    import duckdb

    con = duckdb.connect(str(current))
    try:
        for n in range(2):
            con.execute(
                "INSERT INTO budget_events (event_id, ts, day, kind, tenant, context, purpose, "
                "cap_usd, spent_usd, reserved_usd, attributes) VALUES (?, ?, ?, 'rejected', "
                "'acme', 'ctx', 'chat', 0.0002, 0.00015, 0, ?)",
                [
                    f"r{n}",
                    NOW,
                    NOW.date(),
                    json.dumps({"comptroller.budget.requested_usd": "0.00009"}),
                ],
            )
    finally:
        con.close()

    code, out, err = run_cli(capsys, "report", "--db", str(current), "--baseline", str(baseline))
    assert code == 0, err  # a refusal is shown, not a cost regression
    assert "⛔ Budgets refused 2 calls in this run" in out
    assert (
        "- **acme/ctx/chat**: 2 calls refused: the last needed $0.00009 (worst case) "
        "but only $0.00005 of the $0.00020 cap was left (spent $0.00015, reserved in flight "
        "$0.00000)"
    ) in out

    code, out, _ = run_cli(
        capsys, "report", "--db", str(current), "--baseline", str(baseline), "--format", "json"
    )
    [refused] = json.loads(out)["refused"]
    assert refused["status"] == "refused"
    assert refused["refused_calls"] == 2
    assert refused["needed_usd"] == "0.00009"  # as the control plane sent it
    assert refused["left_usd"] == "0.0000500000"
