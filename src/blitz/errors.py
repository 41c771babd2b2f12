"""The one exception type for mistakes a user can make: the CLI prints it without a traceback."""


class BlitzError(Exception):
    """A problem the user can fix; the message names the thing and what to do instead."""


class UnusableFile(BlitzError):
    """What makes a run file (checkpoint, metrics.json) unusable; callers name the file."""
