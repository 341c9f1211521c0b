"""The root of comptroller's error hierarchy.

Every error comptroller raises on purpose derives from `ComptrollerError`, so callers can
catch at the level they care about::

    ComptrollerError                 anything comptroller raised on purpose
    ├── ConfigError                  a bad configuration file, value or data directory (exit 2)
    ├── UsageError                   the API or CLI was called wrongly (exit 2)
    └── (each subpackage adds its own subtree, e.g. control's BudgetExceeded, RateLimited)

Messages say what to do, and carry the numbers (key, cap, spend, …) that explain them.
Secrets never appear in a message.
"""

from __future__ import annotations


class ComptrollerError(Exception):
    """Base class of every error comptroller raises on purpose.

    Attributes:
        exit_code: The process exit code the CLI uses when this error reaches it.
    """

    exit_code: int = 1


class ConfigError(ComptrollerError):
    """A configuration file, setting or the data directory is unusable.

    The message names the key and where it came from (file path or environment variable).
    """

    exit_code = 2


class UsageError(ComptrollerError):
    """The API or the command line was used wrongly (an argument out of range, a bad name)."""

    exit_code = 2


class FindingError(ComptrollerError):
    """A check found a problem worth failing a build for (over budget, cost regression).

    The CLI exits with 1 for these: the command worked, the finding is the result.
    """

    exit_code = 1
