"""Files that hold billing data or secrets are private to the user who runs comptroller.

Directories comptroller creates for them are 0700 and files 0600, whatever the umask. An
existing one that group or others may read (made by an older version, a copy, a restore) is
tightened when comptroller opens it, with a warning in the log: only the group and other
bits are removed, the owner's are kept. The master key and the collector's token file are
refused instead (control/_credentials.py, config/_collector.py): whoever could read a secret
may have it already, and rotating it is the operator's decision, not something to hide.

Standard library only: every package (control, collector, analytics, config) uses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

_log = logging.getLogger("comptroller.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) or tighten it if it exists; missing parents are made
    with the default mode.

    Returns:
        `path`.

    Raises:
        OSError: It cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)  # parents are not ours alone: as made
    # mkdir's mode passes through the umask, which only removes bits: 0700 or less.
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    tighten(path)
    return path


def private_file(path: Path, *, exclusive: bool = False) -> int:
    """Open `path` for writing (created 0600, truncated if it exists); return the fd.

    With `exclusive`, an existing file is not touched: FileExistsError.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    tighten(path)
    return fd


def write_private(path: Path, data: bytes, *, exclusive: bool = False, sync: bool = False) -> None:
    """Write `data` to `path` (created 0600, replaced if it exists, unless `exclusive`);
    with `sync`, on disk before this returns."""
    fd = private_file(path, exclusive=exclusive)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def tighten(path: Path, *, created: bool = False) -> bool:
    """Remove group and other permissions from `path` if it exists and has any.

    A file or directory this user does not own is left as it is (a warning says so).

    Args:
        path: The file or directory.
        created: It was just created by a library that follows the umask (DuckDB): make it
            private without a warning.

    Returns:
        Whether the mode was changed.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return False
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077:
        return False
    if status.st_uid != os.getuid():
        _log.warning(
            "%s has mode %o and belongs to another user: others may read it; make it "
            "private (chmod go-rwx) or move the data elsewhere",
            path,
            mode,
        )
        return False
    os.chmod(path, mode & ~0o077)
    if created:
        return True
    _log.warning(
        "tightened the mode of %s from %o to %o: it holds billing data or secrets, private "
        "to its owner",
        path,
        mode,
        mode & ~0o077,
    )
    return True
