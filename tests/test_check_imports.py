"""`comptroller._check_imports`: which imports are found, which files are walked, who is allowed.

Real files in a temporary tree, parsed the way the command parses them.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from comptroller._check_imports import (
    DEFAULT_FORBIDDEN,
    AllowRule,
    Policy,
    check,
    find_config,
    find_imports,
    iter_python_files,
    load_policy,
)
from comptroller.errors import ConfigError, UsageError


def _found(source: str) -> list[tuple[int, int, str, str]]:
    return find_imports(textwrap.dedent(source))


def _write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import openai", (1, 8, "CI001", "openai")),
        ("import openai.types", (1, 8, "CI001", "openai.types")),
        ("import os, anthropic as a", (1, 12, "CI001", "anthropic")),
        ("from openai import OpenAI", (1, 1, "CI001", "openai")),
        ("from openai.types.chat import ChatCompletion", (1, 1, "CI001", "openai.types.chat")),
        ("from google import auth, genai", (1, 26, "CI001", "google.genai")),
        ("from google import (\n    generativeai,\n)", (2, 5, "CI001", "google.generativeai")),
        ("import google.generativeai as genai", (1, 8, "CI001", "google.generativeai")),
        ("from google.genai import types", (1, 1, "CI001", "google.genai")),
        ("import litellm", (1, 8, "CI001", "litellm")),
        ("def f():\n    import openai", (2, 12, "CI001", "openai")),
        ("class C:\n    from anthropic import Anthropic", (2, 5, "CI001", "anthropic")),
        ("try:\n    import litellm\nexcept ImportError:\n    pass", (2, 12, "CI001", "litellm")),
        ("async def f():\n    async with x:\n        import openai", (3, 16, "CI001", "openai")),
        ("match x:\n    case 1:\n        import openai", (3, 16, "CI001", "openai")),
        ("__import__('openai')", (1, 1, "CI002", "openai")),
        ("x = importlib.import_module('litellm')", (1, 5, "CI002", "litellm")),
        ("import_module(name='anthropic.types')", (1, 1, "CI002", "anthropic.types")),
        ("__import__('google', fromlist=['genai'])", (1, 1, "CI002", "google.genai")),
        ("f(lambda: __import__('openai'))", (1, 11, "CI002", "openai")),
        ("if TYPE_CHECKING:\n    pass\nelse:\n    import openai", (4, 12, "CI001", "openai")),
        ("if not TYPE_CHECKING:\n    import openai", (2, 12, "CI001", "openai")),
        # A relative name with a literal package is absolute: importlib resolves it so.
        ("importlib.import_module('.genai', 'google')", (1, 1, "CI002", "google.genai")),
        ("import_module('..genai', package='google.x')", (1, 1, "CI002", "google.genai")),
        ("import_module('.', package='litellm')", (1, 1, "CI002", "litellm")),
    ],
)
def test_each_form_of_a_forbidden_import_is_found_with_line_and_column(
    source: str, expected: tuple[int, int, str, str]
) -> None:
    assert find_imports(source) == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "from . import openai",
        "from .openai import client",
        "from ..google import genai",
        "import google",
        "from google import auth",
        "import google.cloud.storage",
        "import openai_helpers, myopenai, langchain_openai",
        "from langchain_google_genai import ChatGoogleGenerativeAI",
        "provider = 'openai'  # import openai",
        "'''import anthropic'''",
        "importlib.import_module(name)",
        "importlib.import_module('.openai', package='app')",
        "importlib.import_module('...openai', package='app.x')",  # above the top: an error
        "importlib.import_module('.genai', package=google_name)",
        "__import__('openai', globals(), locals(), [], 1)",
        "if TYPE_CHECKING:\n    import openai\n    from anthropic import Anthropic",
        "if typing.TYPE_CHECKING:\n    from google import genai",
        "client.openai.chat()",
    ],
)
def test_what_is_not_a_forbidden_import(source: str) -> None:
    assert _found(source) == []


def test_the_forbidden_list_is_the_callers() -> None:
    source = "import openai\nimport langchain_openai\nimport langchain_openai.chat_models"
    assert find_imports(source, ["langchain_openai"]) == [
        (2, 8, "CI001", "langchain_openai"),
        (3, 8, "CI001", "langchain_openai.chat_models"),
    ]
    assert DEFAULT_FORBIDDEN == (
        "anthropic",
        "google.genai",
        "google.generativeai",
        "litellm",
        "openai",
    )


def test_invalid_source_raises_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        find_imports("import openai\ndef (:\n")


def test_a_tree_reports_every_file_in_path_order(tmp_path: Path) -> None:
    _write(tmp_path, "app/a.py", "import openai\n")
    _write(tmp_path, "app/b.py", "import os\n")
    _write(tmp_path, "app/sub/c.py", "x = 1\nfrom google import genai\n")
    report = check([tmp_path / "app"])
    assert [(f.path, f.line, f.column, f.module) for f in report.findings] == [
        (str(tmp_path / "app/a.py"), 1, 8, "openai"),
        (str(tmp_path / "app/sub/c.py"), 2, 20, "google.genai"),
    ]
    assert report.files_checked == 3
    assert not report.clean
    assert report.summary() == "2 forbidden imports in 2 files (3 files checked)"
    rendered = report.findings[0].render()
    assert rendered.startswith(f"{tmp_path / 'app/a.py'}:1:8: CI001 forbidden import of 'openai': ")
    assert "ControlPlane.chat_model" in rendered


def test_the_text_prefilter_cannot_hide_an_import(tmp_path: Path) -> None:
    # Python folds fullwidth letters in identifiers (NFKC) and decodes escapes in strings:
    # both still import openai, though the bytes never spell it.
    _write(tmp_path, "fullwidth.py", "import \uff4f\uff50\uff45\uff4e\uff41\uff49\n")
    _write(tmp_path, "escaped.py", "import importlib\nimportlib.import_module('\\x6fpenai')\n")
    (tmp_path / "latin1.py").write_bytes(b"# -*- coding: latin-1 -*-\n# caf\xe9\nimport openai\n")
    report = check([tmp_path])
    assert sorted((Path(f.path).name, f.module) for f in report.findings) == [
        ("escaped.py", "openai"),
        ("fullwidth.py", "openai"),
        ("latin1.py", "openai"),
    ]


def test_a_file_that_cannot_be_parsed_fails_the_check_with_its_own_code(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "import openai\ndef (:\n")
    (tmp_path / "nul.py").write_bytes(b"import openai\x00\n")
    report = check([tmp_path])
    assert [(Path(f.path).name, f.code, f.line) for f in report.findings] == [
        ("broken.py", "CI003", 2),
        ("nul.py", "CI003", 1),
    ]
    assert all("cannot parse this file" in f.message for f in report.findings)
    assert report.forbidden == ()
    assert not report.clean
    assert report.summary() == "2 files could not be checked (2 files checked)"


def test_a_broken_file_that_names_no_forbidden_module_is_not_our_business(tmp_path: Path) -> None:
    _write(tmp_path, "broken.py", "def (:\n")
    assert check([tmp_path]).clean


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    secret = _write(tmp_path, "secret.py", "import openai\n")
    secret.chmod(0)
    try:
        (finding,) = check([tmp_path]).findings
    finally:
        secret.chmod(0o644)
    assert finding.code == "CI003"
    assert "cannot read this file: Permission denied" in finding.message


def test_the_walk_skips_environments_and_build_output_but_not_a_folder_named(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "app/main.py")
    _write(tmp_path, "app/stub.pyi", "import openai\n")
    _write(tmp_path, "app/notes.txt", "import openai\n")
    for skipped in (".venv", "venv", "build", ".git", "__pycache__", "node_modules", ".tox"):
        _write(tmp_path, f"{skipped}/x.py", "import openai\n")
    _write(tmp_path, "lib/python3.11/site-packages/openai/__init__.py", "import openai\n")
    _write(tmp_path, "scripts/tool", "#!/usr/bin/env python\nimport openai\n")
    files = list(iter_python_files([tmp_path]))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["app/main.py"]

    # Named on the command line, a skipped folder is scanned; a named file is checked
    # whatever its name (pre-commit passes scripts with a python shebang), once.
    site = tmp_path / "lib/python3.11/site-packages"
    assert len(check([site]).findings) == 1
    tool = tmp_path / "scripts/tool"
    assert [f.module for f in check([tool, tool, tmp_path / "app/stub.pyi"]).findings] == ["openai"]


def test_a_package_of_the_code_base_is_walked_whatever_its_name(tmp_path: Path) -> None:
    """`myapp/build/` or `myapp/venv/` holding an `__init__.py` is the application's code,
    not build output or an environment: skipping it would hide its imports."""
    _write(tmp_path, "myapp/__init__.py")
    for package in ("build", "venv", "node_modules"):
        _write(tmp_path, f"myapp/{package}/__init__.py")
        _write(tmp_path, f"myapp/{package}/llm.py", "import openai\n")
    _write(tmp_path, "build/lib/myapp/llm.py", "import openai\n")  # real build output
    report = check([tmp_path])
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in report.findings] == [
        "myapp/build/llm.py",
        "myapp/node_modules/llm.py",
        "myapp/venv/llm.py",
    ]


def test_paths_stay_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "app/a.py", "import openai\n")
    monkeypatch.chdir(tmp_path)
    assert [f.path for f in check([Path(".")]).findings] == [os.path.join("app", "a.py")]
    assert [f.path for f in check([Path("app/")]).findings] == [os.path.join("app", "a.py")]


def test_a_module_on_the_allowlist_and_its_submodules_may_import(tmp_path: Path) -> None:
    _write(tmp_path, "src/myapp/__init__.py")
    _write(tmp_path, "src/myapp/llm_gateway/__init__.py", "import openai\n")
    _write(tmp_path, "src/myapp/llm_gateway/clients.py", "import anthropic\n")
    _write(tmp_path, "src/myapp/llm_gateway_old.py", "import litellm\n")
    _write(tmp_path, "src/myapp/views.py", "import openai\n")
    rule = AllowRule.parse("myapp.llm_gateway", tmp_path, "--allow")
    report = check([tmp_path / "src"], Policy(allow=(rule,)))
    assert [Path(f.path).name for f in report.findings] == ["llm_gateway_old.py", "views.py"]
    assert (report.files_checked, report.files_allowed) == (3, 2)
    assert report.summary() == "2 forbidden imports in 2 files (3 files checked, 2 allowed)"


@pytest.mark.parametrize(
    ("glob", "allowed"),
    [
        ("gateway.py", {"app/gateway.py", "app/sub/gateway.py"}),
        ("app/gateway.py", {"app/gateway.py"}),
        ("app/*.py", {"app/gateway.py", "app/views.py"}),
        ("app/**/gateway.py", {"app/gateway.py", "app/sub/gateway.py"}),
        ("app/sub", {"app/sub/gateway.py", "app/sub/deep/x.py"}),
        ("app/sub/", {"app/sub/gateway.py", "app/sub/deep/x.py"}),
        ("**/deep/*", {"app/sub/deep/x.py"}),
        ("app/[gv]*.py", {"app/gateway.py", "app/views.py"}),
        ("app/[!g]*.py", {"app/views.py"}),
        ("ap?/views.py", {"app/views.py"}),
        ("./app/views.py", {"app/views.py"}),
        ("sub/../../app/sub/gateway.py", set()),  # `..` only leads a glob
    ],
)
def test_a_file_glob_on_the_allowlist(tmp_path: Path, glob: str, allowed: set[str]) -> None:
    every = {"app/gateway.py", "app/views.py", "app/sub/gateway.py", "app/sub/deep/x.py"}
    for name in every:
        _write(tmp_path, name, "import openai\n")
    rule = AllowRule.parse(glob, tmp_path, "--allow")
    assert rule.kind == "glob"
    report = check([tmp_path], Policy(allow=(rule,)))
    reported = {Path(f.path).relative_to(tmp_path).as_posix() for f in report.findings}
    assert reported == every - allowed


def test_an_absolute_glob_matches_the_whole_path(tmp_path: Path) -> None:
    _write(tmp_path, "a/gateway.py", "import openai\n")
    rule = AllowRule.parse(f"{tmp_path.as_posix()}/a/*.py", Path("/elsewhere"), "--allow")
    assert check([tmp_path], Policy(allow=(rule,))).clean


@pytest.mark.parametrize("entry", ["a-b", "my app", "1abc", ""])
def test_an_allow_entry_that_is_neither_module_nor_glob_is_refused(entry: str) -> None:
    with pytest.raises(UsageError, match="neither a module"):
        AllowRule.parse(entry, Path("."), "--allow")


def _pyproject(root: Path, body: str) -> Path:
    return _write(root, "pyproject.toml", "[project]\nname = 'x'\n" + textwrap.dedent(body))


def test_the_nearest_pyproject_with_the_section_is_the_config(tmp_path: Path) -> None:
    outer = _pyproject(tmp_path, "[tool.comptroller.check-imports]\nallow = []\n")
    _pyproject(tmp_path / "pkg", "[tool.ruff]\nline-length = 100\n")
    _write(tmp_path, "pkg/src/a.py")
    assert find_config(tmp_path / "pkg/src/a.py") == outer
    assert find_config(tmp_path / "pkg/src") == outer
    inner = _pyproject(tmp_path / "pkg", "[tool.comptroller.check-imports]\n")
    assert find_config(tmp_path / "pkg/src") == inner


def test_the_config_allows_relative_to_its_folder_and_extends_or_replaces_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _pyproject(
        tmp_path,
        """
        [tool.comptroller.check-imports]
        allow = ["src/gateway.py", "tools.llm"]
        extend-forbid = ["langchain_openai"]
        """,
    )
    _write(tmp_path, "src/gateway.py", "import openai\n")
    _write(tmp_path, "src/app.py", "from langchain_openai import ChatOpenAI\nimport openai\n")
    _write(tmp_path, "tools/__init__.py")
    _write(tmp_path, "tools/llm.py", "import litellm\n")
    monkeypatch.chdir(tmp_path / "src")  # globs in the file are relative to the file
    policy = load_policy(config, allow=["app.py"], forbid=["mistralai"])
    assert policy.forbidden == (*DEFAULT_FORBIDDEN, "langchain_openai", "mistralai")
    assert check([tmp_path], policy).clean

    policy = load_policy(config)
    report = check([tmp_path], policy)
    assert [(f.line, f.module) for f in report.findings] == [
        (1, "langchain_openai"),
        (2, "openai"),
    ]

    config.write_text("[tool.comptroller.check-imports]\nforbid = ['langchain_openai']\n")
    assert load_policy(config).forbidden == ("langchain_openai",)
    assert [f.module for f in check([tmp_path], load_policy(config)).findings] == [
        "langchain_openai"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("allow = 'src'", "allow: expected a list of strings"),
        ("allowed = []", "unknown key 'allowed'"),
        ("forbid = ['open ai']", "'open ai' is not a module name"),
        ("extend-forbid = [1]", "extend-forbid: expected a list of strings"),
        ("allow = ['a-b']", "neither a module"),
        ("forbid = []", "forbid is empty"),
    ],
)
def test_a_bad_config_names_the_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    config = _pyproject(tmp_path, f"[tool.comptroller.check-imports]\n{body}\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_policy(config)
    assert str(config) in str(caught.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    config = _write(tmp_path, "pyproject.toml", "[tool\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        find_config(tmp_path)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(config)


def test_a_bad_forbid_on_the_command_line_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--forbid: 'google/genai' is not a module name"):
        load_policy(None, forbid=["google/genai"])


def test_checking_leaves_the_cycle_collector_as_it_was(tmp_path: Path) -> None:
    import gc

    _write(tmp_path, "a.py", "import openai\n")
    assert gc.isenabled()
    check([tmp_path])
    assert gc.isenabled()
    gc.disable()
    try:
        check([tmp_path])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_this_projects_own_environment_is_scanned_without_importing_it() -> None:
    # The installed openai SDK imports itself: found, by parsing only (nothing new imported).
    import openai

    site = Path(openai.__file__).parent
    before = set(sys.modules)
    report = check([site])
    assert report.files_checked > 100
    assert any(f.module and f.module.startswith("openai") for f in report.findings)
    assert set(sys.modules) - before == set()
