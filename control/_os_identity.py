"""The OS identity of the caller: the name the CLI acts under, and the bootstrap rule."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def os_identity(uid: int | None = None) -> str:
    """The login name of `uid` (default: the process's real uid), as the OS knows it.

    The real uid is what the kernel says about the caller: no option or environment
    variable changes it (unlike `$USER` or `getpass.getuser()`).
    """
    number = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(number).pw_name
    except KeyError:
        return f"uid-{number}"  # a uid without a passwd entry (containers) still has a name


def owns_data_dir(data_dir: Path, uid: int | None = None) -> bool:
    """Whether `uid` (default: the caller's real uid) owns `data_dir`: the bootstrap rule."""
    number = os.getuid() if uid is None else uid
    try:
        return data_dir.stat().st_uid == number
    except OSError:
        return False
