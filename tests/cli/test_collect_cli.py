"""`comptroller collect`: options and the loopback-or-token rule."""

from __future__ import annotations

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
