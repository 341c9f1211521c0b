"""The installed layout: every package is shipped, and the control plane stays light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" in rel.parts:
                continue
            sub = ".".join(rel.parts)
            found.add(f"{name}.{sub}" if sub else name)
    # Sub-folders of the root package are mapped by their parent.
    missing = {pkg for pkg in found if pkg not in listed}
    assert not missing, f"add these to [tool.setuptools] packages: {sorted(missing)}"


def test_control_plane_imports_no_heavy_parts() -> None:
    code = (
        "import sys\n"
        "from comptroller.control import ControlPlane, GuardedChatModel, MemoryGuard, RedisGuard\n"
        "heavy = [m for m in ('textual', 'duckdb', 'polars', 'pyarrow', 'uvicorn', 'starlette',"
        " 'comptroller.collector', 'comptroller.analytics', 'comptroller.tui', 'sqlalchemy',"
        " 'genai_prices', 'redis', 'openai', 'langchain_openai', 'cryptography',"
        " 'comptroller.control.profiles', 'comptroller.control._profile_service')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"comptroller.control imported {result.stdout.strip()}"


def test_cli_help_imports_no_subcommand() -> None:
    code = (
        "import sys\n"
        "from comptroller.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(m for m in ('duckdb', 'langchain_core', 'textual') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "HEAVY=", result.stdout


def test_the_control_package_loads_its_names_on_first_use() -> None:
    """`import comptroller.control` is cheap (names load on first use, as langchain_core's
    do), and every name of `__all__` is in the table that loads it."""
    import comptroller.control as control

    assert set(control.__all__) == set(control._EXPORTS)
    code = (
        "import sys, comptroller.control\n"
        "print(','.join(m for m in ('langchain_core.language_models.base',"
        " 'comptroller.control._plane', 'opentelemetry.sdk') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
