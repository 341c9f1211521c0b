from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
        "Play simulated days of a multi-tenant workload and tell the story (no server, no key).",
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
        "Open the terminal dashboard: spend, budgets, circuits, profiles, calls, alerts.",
    ),
    "budget": ("comptroller.cli._budget", "budget", "Budget state and the CI budget gate."),
    "alerts": (
        "comptroller.cli._alerts",
        "alerts",
        "Alerts sent to webhooks and what became of them; send a test alert.",
    ),
    "report": (
        "comptroller.cli._report",
        "report",
        "Spend against a baseline, what-if re-pricing, prompt-cache savings.",
    ),
    "export": (
        "comptroller.cli._export",
        "export",
        "Write the spend as FOCUS (FinOps cost and usage) rows to Parquet or CSV.",
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
    "check-imports": (
        "comptroller.cli._check_imports",
        "check_imports",
        "Fail when code imports LiteLLM or a provider SDK directly, bypassing the control plane.",
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


def in_existing_folder(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> Path | None:
    """Option callback for a file the command writes or creates: its folder must exist.

    Checked while the command line is read, before anything runs: opening would create the
    folders (a typo in --db must not grow a new database), and a long query or gate must not
    be lost to a typo in an output path.
    """
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"folder {value.parent} does not exist", ctx=ctx, param=param)
    return value


_Command = TypeVar("_Command", bound=Callable[..., Any])


Ledger = Path | str
"""Where a ledger is: a DuckDB file, or a PostgreSQL URL (text: as a path its `//` would
collapse)."""


class LedgerParam(click.ParamType[Ledger]):
    """`--db`: a DuckDB file, or a PostgreSQL ledger's URL (`postgresql://…`, kept as text)."""

    name = "FILE|URL"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Ledger:
        if isinstance(value, Path):
            return value
        text = str(value)
        if is_ledger_url(text):
            return text
        path = Path(text)
        if path.is_dir():
            self.fail(f"{path} is a folder: name a DuckDB file or a postgresql:// URL", param, ctx)
        return path


LEDGER = LedgerParam()


def is_ledger_url(value: object) -> bool:
    """Whether `value` is a PostgreSQL ledger's URL rather than a DuckDB file."""
    from comptroller.config._collector import is_postgres_url

    return is_postgres_url(value)


DB_HELP = (
    "The ledger to read: a DuckDB file (read-only) or a PostgreSQL URL "
    "(postgresql://user@host/db?schema=name) [default: the db setting, else the data "
    "directory's file]."
)


def ledger_options(func: _Command) -> _Command:
    """`--db` and `--url`: where a command that reads the ledger finds it (the DuckDB file,
    opened read-only, a PostgreSQL ledger, or a running collector)."""
    func = click.option(
        "--url", help="Read through a running collector [default: analytics.read_url]."
    )(func)
    return click.option("--db", type=LEDGER, help=DB_HELP)(func)


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
    # Some messages arrive with line breaks (click lists choices one per line): joined.
    line = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    click.echo(f"comptroller: error: {line}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `comptroller` command."""
    try:
        # Without standalone mode click returns (not raises) the code of a `ctx.exit(n)`.
        code = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
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
    except OSError as exc:
        # A path the user named (an output in a missing folder, an unreadable file) or the
        # machine refused something (a port in use): bad input, not a bug, so no traceback.
        _fail(_os_error_message(exc), 2)
    except Exception as exc:
        message = _setting_error_message(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        _fail(message, 2)


def _setting_error_message(exc: Exception) -> str | None:
    """One line for a library's refusal of a URL the user configured, else None.

    A URL the HTTP client cannot parse (`--url`, `analytics.read_url`) and a profile store
    URL SQLAlchemy cannot load or reach are settings to fix, not bugs. The libraries are
    looked up in `sys.modules` only: the check must not import them.
    """
    for name in ("httpx", "httpx2"):
        http: Any = sys.modules.get(name)
        if http is not None and isinstance(exc, http.InvalidURL):
            return f"invalid URL: {exc} (check --url or analytics.read_url)"
    sqlalchemy_exc: Any = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(
        exc, sqlalchemy_exc.ArgumentError | sqlalchemy_exc.OperationalError
    ):
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(exc).__name__
        return (
            f"profile store: {first} (check control.profile_store_url, "
            "COMPTROLLER_CONTROL_PROFILE_STORE_URL)"
        )
    return None


def _os_error_message(exc: OSError) -> str:
    """One line for an `OSError`: the path and the reason, and which folder is missing."""
    text = str(exc).strip()
    reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    if exc.filename is None:
        return reason
    path = Path(exc.filename)
    if isinstance(exc, FileNotFoundError) and not path.parent.is_dir():
        return f"{path}: folder {path.parent} does not exist"
    return f"{path}: {reason}"
