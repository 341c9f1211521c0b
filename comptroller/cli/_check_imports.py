from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="check-imports")
@click.argument(
    "paths",
    nargs=-1,
    type=click.Path(path_type=Path, exists=True),
)
@click.option(
    "--allow",
    multiple=True,
    metavar="MODULE_OR_GLOB",
    help="A module (myapp.llm_gateway, with its submodules) or a file glob (relative to the "
    "current folder) that may import them; repeat for several.",
)
@click.option(
    "--forbid",
    multiple=True,
    metavar="MODULE",
    help="Forbid this module too (adds to the list); repeat for several.",
)
@click.option(
    "--pyproject",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Read [tool.comptroller.check-imports] from this file [default: the nearest "
    "pyproject.toml above the first path that has the section].",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="One `path:line:col: CODE message` line per finding, or a JSON document.",
)
def check_imports(
    paths: tuple[Path, ...],
    allow: tuple[str, ...],
    forbid: tuple[str, ...],
    pyproject: Path | None,
    output_format: str,
) -> None:
    """Fail when code imports LiteLLM or a provider SDK directly, bypassing the control plane.

    Walks the Python files under PATHS [default: .] by their syntax tree (nothing is
    imported) and reports each import of litellm, openai, anthropic, google.genai or
    google.generativeai — `import`, `from … import`, and `__import__` /
    `importlib.import_module` with a literal name — with file, line and column. Imports
    under `if TYPE_CHECKING:` and in .pyi stubs are allowed (they never run). Folders named
    .venv, venv, build, .git, __pycache__, node_modules and site-packages are skipped below
    the paths given, unless they hold an __init__.py (a package of yours is checked).

    Codes: CI001 import statement, CI002 dynamic import, CI003 file that could not be read
    or parsed (it fails the check too: an unchecked file is no proof of a clean one).

    Settings in pyproject.toml, [tool.comptroller.check-imports]: `allow = [...]` (modules
    or globs relative to that file), `forbid = [...]` (replaces the default list),
    `extend-forbid = [...]` (adds to it).

    Exit codes: 0 clean, 1 forbidden imports or unchecked files, 2 bad usage or settings.

    \b
    Examples:
      comptroller check-imports src tests
      comptroller check-imports --allow myapp.llm_gateway --format json .
    """
    from comptroller._check_imports import check, find_config, load_policy
    from comptroller.errors import FindingError

    roots = list(paths) or [Path(".")]
    config_file = pyproject if pyproject is not None else find_config(roots[0])
    policy = load_policy(config_file, allow=allow, forbid=forbid)
    report = check(roots, policy)
    if output_format == "json":
        document = {
            "files_checked": report.files_checked,
            "files_allowed": report.files_allowed,
            "forbidden": list(policy.forbidden),
            "config_file": str(policy.config_file) if policy.config_file else None,
            "findings": [finding.as_dict() for finding in report.findings],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        for finding in report.findings:
            click.echo(finding.render())
    if not report.clean:
        # Exit 1 with the summary as the one line on stderr (`main` prints it).
        raise FindingError(f"check-imports: {report.summary()}")
    click.echo(f"check-imports: {report.summary()}", err=True)
