"""Files blitz writes: their paths checked before any work is done, and written whole (a
crash or a full disk leaves the old file or none, never half of one)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from blitz.errors import BlitzError
from blitz.files import atomic_file


def check_output_file(path: Path, what: str, suffix: str = "") -> None:
    """Fail before any work if ``path`` cannot be written: a folder, in a missing or read-only
    folder, or (with ``suffix``) a name of another kind of file, which would be overwritten."""
    folder = path.parent
    if suffix and not path.name.lower().endswith(suffix):
        problem = f"it must end in {suffix}"
    elif path.is_dir():
        problem = "that is a folder; name a file in it instead"
    elif not folder.is_dir():
        problem = f"folder {folder} does not exist; create it first or choose another path"
    elif not os.access(path if path.exists() else folder, os.W_OK):
        problem = "permission denied; choose another path"
    else:
        return
    raise BlitzError(f"cannot write {what} to {path}: {problem}")


def write_json(path: Path, payload: Any) -> None:
    """Pretty JSON, written via a temporary file so a crash leaves the old file or the new one."""
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file whole or not at all, never through a link (``files.atomic_file``); a full
    disk is a clear BlitzError and leaves no temporary file."""
    try:
        with atomic_file(path) as f:
            f.write(data)
    except OSError as exc:
        raise write_failed(path, exc) from None


def write_failed(path: Path, exc: OSError) -> BlitzError:
    """The error for a file blitz could not write (a full disk, a read-only folder)."""
    return BlitzError(
        f"cannot write {path}: {exc.strerror or exc}. Free some space (or fix the "
        "permissions) and run again"
    )
