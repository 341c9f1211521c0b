"""`comptroller collect`: options and the loopback-or-token rule."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from comptroller.cli import main


def test_collect_help_lists_the_listening_options(capsys: pytest.CaptureFixture[str]) -> None:
    main(["collect", "--help"])  # help is printed, nothing is started
    out = capsys.readouterr().out
    for option in ("--db", "--host", "--port", "--grpc-port", "--no-grpc", "--token"):
        assert option in out


def test_collect_refuses_a_public_interface_without_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["collect", "--host", "0.0.0.0", "--port", "0", "--no-grpc"])
    assert done.value.code == 2
    assert "bearer token" in capsys.readouterr().err


def _span_export() -> bytes:
    now = time.time_ns()
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": str(now - 1_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
            {"key": "gen_ai.provider.name", "value": {"stringValue": "openai"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        ],
    }
    body = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "t"}, "spans": [span]}]}]}
    return json.dumps(body).encode()


def test_ctrl_c_stops_with_one_line_saying_what_was_flushed(tmp_path: Path) -> None:
    env = {**os.environ, "COMPTROLLER_DATA_DIR": str(tmp_path)}
    env.pop("COMPTROLLER_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "comptroller", "collect", "--port", "0", "--no-grpc"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        started = proc.stderr.readline()
        url = re.search(r"http://[\d.]+:\d+", started)
        assert url is not None, started
        answer = httpx.post(
            f"{url.group(0)}/v1/traces",
            content=_span_export(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # Exit 0: a requested stop after landing everything is a clean stop (docstring of
    # `comptroller collect`); and nothing but the one stop line (no nanobind leak report).
    assert proc.returncode == 0, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("comptroller collect: stopped: ")
    assert "landed since the start: 1 request, 1 row" in lines[0]
