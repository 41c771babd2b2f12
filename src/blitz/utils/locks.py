"""Advisory file locks for what two blitz processes could write at once (a run directory, the
first extraction of an archive): the second waits, or is told who holds the lock."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blitz.errors import BlitzError
from blitz.files import NOFOLLOW

# a platform check rather than try/except ImportError: the type checker then knows fcntl's type
if sys.platform == "win32":  # pragma: no cover - no advisory locks; blitz then does not lock
    fcntl = None
else:
    import fcntl


@contextmanager
def locked(path: Path, wait: bool = True, busy: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while inside. With
    ``wait=False``, a lock held by another process is a BlitzError saying ``busy``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise BlitzError(busy or f"{path} is locked by another process") from None
        yield  # the lock goes with the descriptor: a killed process never leaves it held
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    """The lock file, never through a link: blitz makes none, so a link there was planted and
    is replaced (it cannot be another process's lock)."""
    flags = os.O_RDWR | os.O_CREAT | NOFOLLOW
    try:
        return os.open(path, flags, 0o644)
    except IsADirectoryError:  # a folder planted at its name (a run directory from anyone)
        raise BlitzError(
            f"{path} is a folder: blitz keeps an empty lock file there; remove the folder and "
            "run again"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    path.unlink()
    return os.open(path, flags | os.O_EXCL, 0o644)
