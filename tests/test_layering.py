"""The CLI, the dashboard and the panels read through `comptroller.analytics`' public names.

A private module (`comptroller.analytics._source`, `._gate`, …) may be renamed or split at any
time; code outside analytics that imports one ties itself to that layout and gets a second,
undocumented API. The scan reads the source (ast), so a lazy import inside a function counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("comptroller/cli", "tui", "dashboards")


def private_analytics_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a private `comptroller.analytics` module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from comptroller.analytics import _budget` names the module in the list.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        private = [n for n in names if _is_private_analytics(n)]
        if private:
            found.append((node.lineno, private[0]))
    return found


def _is_private_analytics(name: str) -> bool:
    parts = name.split(".")
    return parts[:2] == ["comptroller", "analytics"] and len(parts) > 2 and parts[2][:1] == "_"


def test_cli_tui_and_dashboards_import_no_private_analytics_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for folder in SCANNED
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in private_analytics_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import these from comptroller.analytics instead"


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from comptroller.analytics._source import LocalReader", True),
        ("def f():\n    from comptroller.analytics import _budget", True),
        ("import comptroller.analytics._gate as gate", True),
        ("from comptroller.analytics import LocalReader, reader_from_settings", False),
        ("import comptroller.analytics", False),
        ("from comptroller.dashboards._panel import Panel", False),
    ],
)
def test_the_scan_finds_private_imports_however_written(source: str, found: bool) -> None:
    assert bool(private_analytics_imports(source)) is found
