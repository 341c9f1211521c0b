from __future__ import annotations

import json
from pathlib import Path

import pytest

from comptroller.cli import main
from comptroller.cli._config import configuration_markdown
from comptroller.config import settings_field_docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def test_configuration_doc_lists_every_setting_as_generated() -> None:
    assert DOC.read_text() == configuration_markdown(), (
        "docs/CONFIGURATION.md is stale: run "
        "`uv run comptroller config keys --markdown > docs/CONFIGURATION.md`"
    )
    for key, _env, _field in settings_field_docs():
        assert f"`{key}`" in DOC.read_text()


def test_config_show_json_masks_the_collector_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COMPTROLLER_COLLECTOR_TOKEN", "s3cret-token-value")
    main(["config", "show", "--json"])  # returns normally on success
    out = capsys.readouterr().out
    assert "s3cret-token-value" not in out
    assert json.loads(out)["collector"]["token"] == "***"
