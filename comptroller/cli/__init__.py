"""The `comptroller` command line.

Each subcommand lives in its own module (`comptroller/cli/_<name>.py`) and is imported only
when it runs; `COMMANDS` in `_app.py` is the table of them.
"""

from comptroller.cli._app import COMMANDS, AppContext, cli, main, pass_app

__all__ = ["COMMANDS", "AppContext", "cli", "main", "pass_app"]
