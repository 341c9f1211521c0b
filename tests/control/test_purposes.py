from __future__ import annotations

import json
from pathlib import Path

import pytest

from comptroller.config import load_settings
from comptroller.control import ModelRef, UnknownPurpose
from comptroller.control.profiles import Purpose, PurposeKey, PurposeRegistry


def test_default_taxonomy_has_every_purpose_with_its_override_class() -> None:
    registry = PurposeRegistry.defaults()
    assert set(registry) == {key.value for key in PurposeKey}
    assert len(registry) == 11
    assert registry["code_generation"].override == "locked"
    assert registry["applies_when_generation"].override == "locked"
    for name in ("reasoning", "distillation", "agent_turn", "agent_tool", "embedding"):
        assert registry[name].override == "operator_allowed"
    assert registry["embedding"].embedding is True
    assert registry["reasoning"].embedding is False


def test_purpose_keys_are_plain_strings_in_messages() -> None:
    purpose = PurposeRegistry.defaults().get_purpose(PurposeKey.REASONING)
    assert type(purpose.key) is str
    assert repr(purpose.key) == "'reasoning'"


def test_deployment_declares_spectron_stages_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "comptroller.toml"
    config.write_text(
        "[control.purposes.extraction]\n"
        'approved_models = ["openai:gpt-4o-mini", "openai:gpt-4o"]\n'
        "[control.purposes.query_understanding]\n"
        "[control.purposes.response]\n"
        'override = "open"\n'
        "[control.purposes.reflection]\n"
        'override = "locked"\n'
        "[control.purposes.background]\n"
        "[control.purposes.embedding]\n"
        'override = "locked"\n'
    )
    registry = PurposeRegistry.from_settings(load_settings(config))
    assert {"extraction", "query_understanding", "response", "reflection", "background"} <= set(
        registry
    )
    assert registry["extraction"].override == "operator_allowed"  # declared without a class
    assert registry["extraction"].approved_models == {
        ModelRef.parse("openai:gpt-4o-mini"),
        ModelRef.parse("openai:gpt-4o"),
    }
    assert registry["response"].override == "open"
    assert registry["reflection"].override == "locked"
    # Changing a default purpose keeps what was not changed.
    assert registry["embedding"].override == "locked"
    assert registry["embedding"].embedding is True
    assert registry["code_generation"].override == "locked"


def test_purposes_declared_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "COMPTROLLER_CONTROL_PURPOSES",
        json.dumps({"extraction": {"override": "open"}, "reasoning": {"override": "locked"}}),
    )
    registry = PurposeRegistry.from_settings(load_settings())
    assert registry["extraction"].override == "open"
    assert registry["reasoning"].override == "locked"


def test_unknown_purpose_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownPurpose, match=r"unknown purpose 'reflexion'.*agent_turn.*scoring"):
        PurposeRegistry.defaults().get_purpose("reflexion")


@pytest.mark.parametrize("name", ["Reasoning", "2fast", "with-dash", "", "x" * 64])
def test_malformed_purpose_name_is_refused(name: str) -> None:
    with pytest.raises(UnknownPurpose, match="malformed: use lower snake case"):
        PurposeRegistry([Purpose(key=name, override="open")])


def test_unknown_override_class_in_config_is_a_config_error(tmp_path: Path) -> None:
    from comptroller.errors import ConfigError

    config = tmp_path / "comptroller.toml"
    config.write_text('[control.purposes.extraction]\noverride = "anyone"\n')
    with pytest.raises(ConfigError, match=r"control.purposes.extraction.override"):
        load_settings(config)
