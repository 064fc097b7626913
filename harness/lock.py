"""One grid per output directory: an advisory ``flock`` on ``<out>/.grid.lock``, held for the grid's life.

The kernel grants ``flock(LOCK_EX | LOCK_NB)`` to one open file at a time and drops it when its
holder exits, however it exits, so two grids that start at once cannot both get it, and a lock
file left by a killed grid (or by the old pid-file lock) is harmless: nobody holds a lock on it.
The file's text (the holder's pid and command line) is only for the message a second grid prints.

On exit the holder deletes the file while still holding the lock.  A grid that opened the file
just before the deletion could then lock a file that is no longer the one at the path, so after
locking, a grid checks that the path still names the file it locked, and starts again if not.
(Deleting ``.grid.lock`` by hand while a grid runs lets a second grid in.)  Worker processes forked
while the lock is held share it: it is free only when the grid and all such workers have ended.
"""
from __future__ import annotations

import fcntl
import os
import shlex
import sys
from pathlib import Path

from .tasks import UserError

LOCK_NAME = ".grid.lock"


class GridLock:
    """``with GridLock(out_dir):`` — a UserError if another grid holds ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> GridLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # close-on-exec by default
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(f"another grid{holder} is running in {self.path.parent}; "
                                f"wait for it to finish (one grid per output directory)") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)              # we locked a file its holder had just deleted: try again
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{shlex.join([Path(sys.executable).name, *sys.argv])}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)     # while still holding the lock (see the module docstring)
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _holder(fd: int) -> str:
    """`` (pid N: command)`` from the holder's lock file, or "" if it has not written it yet."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""
    pid, _, cmd = text.partition("\n")
    cmd = cmd.strip().splitlines()[0][:200] if cmd.strip() else ""
    if not pid.strip().isdigit():
        return ""
    return f" (pid {pid.strip()}{': ' + cmd if cmd else ''})"
