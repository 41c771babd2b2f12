"""The one exception type for mistakes a user can make: the CLI prints it without a traceback."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class BlitzError(Exception):
    """A problem the user can fix; the message names the thing and what to do instead."""


class UnusableFile(BlitzError):
    """What makes a run file (checkpoint, metrics.json) unusable; callers name the file."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to a mistyped *word*, or "" if none is."""
    close = difflib.get_close_matches(word, list(choices), 1)
    return f" (did you mean {close[0]}?)" if close else ""


def path_too_long(exc: OSError) -> BlitzError | None:
    """The error for a path longer than the file system takes (ENAMETOOLONG: a name of over
    255 bytes, a path of over 4096), from an argument or a file; None for any other OSError."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    name = str(exc.filename)
    shown = name if len(name) <= 60 else f"{name[:40]}...({len(name)} characters)"
    return BlitzError(
        f"path {shown!r} is longer than the file system takes (a file or folder name of at most "
        "255 bytes, a path of at most 4096): choose a shorter one"
    )
