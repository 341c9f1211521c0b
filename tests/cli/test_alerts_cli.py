"""`comptroller alerts list` and `alerts test`: over a ledger made through the real path, and
real HTTP to a local webhook receiver; a webhook's URL is never printed."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _usage_db import run_cli
from alerts_ledger import SECRET_PATH, Ledger, Receiver, build_ledger, webhooks


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path, receiver: Receiver) -> Ledger:
    return build_ledger(tmp_path / "data", receiver)


def configure(monkeypatch: pytest.MonkeyPatch, hooks: list[dict[str, Any]]) -> None:
    monkeypatch.setenv("COMPTROLLER_ALERTS_WEBHOOKS", json.dumps(hooks))


def test_list_shows_each_alert_with_its_outcome_at_each_webhook(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ledger: Ledger,
    receiver: Receiver,
) -> None:
    configure(monkeypatch, webhooks(receiver))
    code, out, err = run_cli(capsys, "alerts", "list", "--db", str(ledger.db), "--since", "today")
    assert code == 0, err
    lines = out.splitlines()
    alerts = [line for line in lines if not line.startswith("    ")]
    assert len(alerts) == 3
    assert all("budget.warning  acme-eu / support / reasoning" in line for line in alerts)
    details = sorted(line.split("reasoning  ", 1)[1] for line in alerts)
    assert details == [
        "50 % of $0.10 ($0.06 spent)",
        "80 % of $0.10 ($0.09 spent)",
        "projected $0.12 by midnight ($0.06 of $0.10 spent)",
    ]
    assert lines.count("    ops: delivered (1 attempt)") == 3
    assert lines.count("    pager: FAILED after 1 attempt: HTTP 404") == 3
    assert SECRET_PATH not in out + err


def test_list_json_and_failed_only(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ledger: Ledger,
    receiver: Receiver,
) -> None:
    configure(monkeypatch, webhooks(receiver))
    code, out, err = run_cli(capsys, "alerts", "list", "--db", str(ledger.db), "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == 3
    projected = next(a for a in listed if a["projected_usd"] is not None)
    assert projected["alert"] == "budget.warning"
    assert projected["projected_usd"] == "0.1200000000"
    assert projected["threshold"] is None
    assert sorted(a["threshold"] for a in listed if a["threshold"] is not None) == [0.5, 0.8]
    outcomes = {
        (d["webhook"], d["status"], d["http_status"]) for a in listed for d in a["deliveries"]
    }
    assert outcomes == {("ops", "delivered", 200), ("pager", "failed", 404)}

    code, out, err = run_cli(capsys, "alerts", "list", "--db", str(ledger.db), "--json", "--failed")
    assert code == 0, err
    failed = json.loads(out)
    assert len(failed) == 3
    assert {d["webhook"] for a in failed for d in a["deliveries"]} == {"pager"}
    assert SECRET_PATH not in out


def test_a_webhook_without_an_outcome_is_pending_and_no_webhook_is_said(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ledger: Ledger,
    receiver: Receiver,
) -> None:
    # A webhook added since the alerts went out: nothing was sent to it yet.
    configure(monkeypatch, [*webhooks(receiver), {"url": receiver.url("/new"), "name": "new"}])
    code, out, err = run_cli(capsys, "alerts", "list", "--db", str(ledger.db))
    assert code == 0, err
    assert out.count("    new: pending") == 3

    monkeypatch.delenv("COMPTROLLER_ALERTS_WEBHOOKS")
    code, out, err = run_cli(capsys, "alerts", "list", "--db", str(ledger.db))
    assert code == 0, err
    assert out.count("    ops: delivered") == 3  # what was sent is still the record
    assert "no webhook is configured" in err
    assert "[[alerts.webhooks]]" in err


def test_an_empty_ledger_says_there_is_no_alert(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COMPTROLLER_DATA_DIR", str(tmp_path))
    code, out, err = run_cli(capsys, "alerts", "list", "--since", "now-1h")
    assert code == 0, err
    assert out == "no alert since now-1h\n"


def test_test_sends_to_every_webhook_and_fails_when_one_does_not_take_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    configure(monkeypatch, webhooks(receiver))
    code, out, err = run_cli(capsys, "alerts", "test")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ops: delivered (HTTP 200) in ")
    assert lines[0].endswith("[json]")
    assert lines[1] == "pager: FAILED: HTTP 404 [slack]"
    assert "1 of 2 webhook(s) did not take the test alert" in err
    # One attempt each (a 404 is not retried anyway), in the webhook's own format.
    by_path = dict(receiver.bodies)
    assert by_path["/ops"]["kind"] == "test"
    assert "webhook ops" in by_path["/ops"]["text"]
    assert set(by_path[SECRET_PATH]) == {"text"}
    assert len(receiver.bodies) == 2
    assert SECRET_PATH not in out + err


def test_test_of_one_named_webhook_passes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    configure(monkeypatch, webhooks(receiver))
    code, out, err = run_cli(capsys, "alerts", "test", "--webhook", "ops")
    assert code == 0, err
    assert out.startswith("ops: delivered")
    assert [path for path, _ in receiver.bodies] == ["/ops"]


def test_an_unreachable_webhook_fails_without_printing_its_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # bound, then closed: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configure(monkeypatch, [{"url": f"http://127.0.0.1:{port}{SECRET_PATH}"}])
    code, out, err = run_cli(capsys, "alerts", "test")
    assert code == 1
    assert out.startswith(f"127.0.0.1:{port}: FAILED: ConnectError")
    assert SECRET_PATH not in out + err


@pytest.mark.parametrize(
    ("args", "hooks", "expected"),
    [
        (["test"], [], "no webhook is configured"),
        (["test", "--webhook", "nosuch"], None, "no webhook named nosuch; configured: ops, pager"),
    ],
)
def test_test_says_what_to_configure(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
    args: list[str],
    hooks: list[dict[str, Any]] | None,
    expected: str,
) -> None:
    configure(monkeypatch, webhooks(receiver) if hooks is None else hooks)
    code, _out, err = run_cli(capsys, "alerts", *args)
    assert code == 2
    assert expected in err
    assert receiver.bodies == []
