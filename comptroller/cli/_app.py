from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from comptroller import __version__
from comptroller.config import Settings, load_settings
from comptroller.errors import ComptrollerError, ConfigError

# Subcommands load lazily: `comptroller sql` must not pay for langchain, textual or the
# collector's server at start-up. name -> ("module", "attribute", "one-line help").
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "comptroller.cli._demo",
        "demo",
        "Run a multi-tenant workload on the embedded default and print the spend.",
    ),
    "sql": (
        "comptroller.cli._sql",
        "sql",
        "Run SQL over the usage data (table, CSV, JSON, Parquet).",
    ),
    "collect": (
        "comptroller.cli._collect",
        "collect",
        "Run the OTLP collector that lands telemetry in DuckDB.",
    ),
    "tui": (
        "comptroller.cli._tui",
        "tui",
        "Open the terminal dashboard: spend, budgets, circuits, profiles, calls.",
    ),
    "budget": ("comptroller.cli._budget", "budget", "Budget state and the CI budget gate."),
    "report": (
        "comptroller.cli._report",
        "report",
        "Spend per purpose and model, against a baseline.",
    ),
    "reprice": (
        "comptroller.cli._reprice",
        "reprice",
        "Recompute the cost of past usage rows after prices change.",
    ),
    "db": ("comptroller.cli._db", "db", "Database maintenance: migrations and information."),
    "profiles": (
        "comptroller.cli._profiles",
        "profiles",
        "Show, set, diff and roll back model profiles per purpose and scope.",
    ),
    "credentials": (
        "comptroller.cli._credentials",
        "credentials",
        "Set, list, delete and rotate provider credentials (write-only).",
    ),
    "admin": (
        "comptroller.cli._admin",
        "admin",
        "Who may change profiles and credentials: grants, admin tokens, the first admin.",
    ),
    "config": (
        "comptroller.cli._config",
        "config",
        "Show the settings in force and where each came from.",
    ),
}


class AppContext:
    """What every subcommand receives: the global options, and settings loaded on demand."""

    def __init__(self, config_file: Path | None, data_dir: Path | None) -> None:
        self.config_file = config_file
        self.data_dir = data_dir
        self._settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        """The settings in force (global options > environment > file > defaults)."""
        if overrides:
            return load_settings(self.config_file, data_dir=self.data_dir, **overrides)
        if self._settings is None:
            self._settings = load_settings(self.config_file, data_dir=self.data_dir)
        return self._settings


pass_app = click.make_pass_decorator(AppContext)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked or listed in help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _ = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _not_yet(cmd_name)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists every command from the table without importing any of them.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_yet(name: str) -> click.Command:
    @click.command(name=name, help=COMMANDS[name][2])
    def _stub() -> None:
        raise ConfigError(f"'comptroller {name}' is not available in this build")

    return _stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="comptroller")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="COMPTROLLER_CONFIG",
    help="Configuration file [default: the nearest comptroller.toml; env COMPTROLLER_CONFIG].",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Data directory (DuckDB file, profile store, spool, keys) [env COMPTROLLER_DATA_DIR].",
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, data_dir: Path | None) -> None:
    """comptroller — run LLM calls under control and see what they cost.

    Exit codes: 0 ok, 1 a finding (e.g. over budget), 2 bad usage or configuration.
    """
    ctx.obj = AppContext(config_file, data_dir)


def _fail(message: str, code: int) -> NoReturn:
    # One line on stderr: stdout belongs to the data (`comptroller sql` output stays pipeable).
    click.echo(f"comptroller: error: {message}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `comptroller` command."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(f"{exc.format_message()}{hint}", 2)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except ComptrollerError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader of our stdout went away (`comptroller sql … | head`): not an error.
        sys.stderr.close()
        sys.exit(0)
