"""The one exception type for mistakes a user can make: the CLI prints it without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BlitzError(Exception):
    """A problem the user can fix; the message names the thing and what to do instead."""


class UnusableFile(BlitzError):
    """What makes a run file (checkpoint, metrics.json) unusable; callers name the file."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to a mistyped *word*, or "" if none is."""
    close = difflib.get_close_matches(word, list(choices), 1)
    return f" (did you mean {close[0]}?)" if close else ""
