"""Opening files safely, in one place. Files from outside (settings, tables, run directories)
are read only if they are regular files and not larger than a bound, so a pipe or a device
never hangs a read and a huge file never fills memory; every file blitz writes is created
under a fresh name and renamed into place whole, so a link planted at its name, or at its
temporary name, is replaced and never followed."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NEW_FILE_MODE = 0o644  # what open() gives under the usual umask; mkstemp alone gives 0o600


def open_regular(file: Path, follow: bool = True) -> IO[bytes]:
    """A regular file opened for reading; anything else (a pipe, a device, a folder, and with
    ``follow=False`` a symbolic link) is an OSError."""
    # O_NONBLOCK: opening a pipe does not wait for a writer; fstat then refuses it
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else NOFOLLOW)
    fd = os.open(file, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{file} is not a regular file")
    return os.fdopen(fd, "rb")


def read_regular(file: Path, limit: int, follow: bool = True) -> bytes:
    """The bytes of a regular file (see ``open_regular``) of at most ``limit`` bytes; a larger
    one is an OSError, found without reading more than ``limit + 1`` bytes of it."""
    with open_regular(file, follow) as f:
        data = f.read(limit + 1)  # a size read before may be stale: count what comes
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {_size(limit)}, more than such a file holds")
    return data


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def remove_temporary_files(folder: Path) -> None:
    """Delete what ``atomic_file`` left in ``folder`` when its process was killed mid-write;
    only for a folder that the caller alone writes to (it holds its lock)."""
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()  # a link is removed, never followed; a folder stays


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: created new (O_EXCL) under a temporary name in
    the same folder, then renamed over ``path`` once written and synced. A crash or an error
    leaves the old file or none, never half of one, and no temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a link at path is replaced, its target untouched
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_new(path: Path) -> IO[bytes]:
    """``path`` created afresh for a file written as it goes (a log): whatever stood at that
    name is removed first, a link included (never its target), and the new file is made with
    O_EXCL, so a link put there meanwhile is an error, not followed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, NEW_FILE_MODE)
    return os.fdopen(fd, "wb")
