"""Helpers of the analytics CLI tests: the shared usage-database builders, and the CLI."""

from __future__ import annotations

import pytest
from usage_db import NOW, fill, insert_usage, usage_row

from comptroller.cli import main

__all__ = ["NOW", "fill", "insert_usage", "run_cli", "usage_row"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `comptroller ARGS` in this process; (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
