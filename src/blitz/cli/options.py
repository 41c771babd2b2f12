"""What several subcommands share: options made from settings, listings fitted to 100 columns."""

from __future__ import annotations

import argparse
import functools
from typing import Literal, get_args, get_origin

from blitz.api import KEYWORDS
from blitz.config.settings import Flag
from blitz.config.types import value_from_text


def add_setting_flag(p: argparse.ArgumentParser, flag: Flag) -> None:
    """An option of ``blitz train`` from its setting's declaration: bare for a boolean, the
    choices of a ``Literal``; values are checked by the settings' own checks, as in a file."""
    if flag.hint is bool:
        p.add_argument(flag.flag, action="store_const", const=True, help=flag.help)
        return
    choices = get_args(flag.hint) if get_origin(flag.hint) is Literal else None
    nargs = {"nargs": "?", "const": flag.const} if flag.const is not None else {}
    metavar = flag.metavar or None
    convert = functools.partial(value_from_text, hint=flag.hint)
    p.add_argument(
        flag.flag, type=convert, choices=choices, metavar=metavar, help=flag.help, **nargs
    )


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as options and with --set, by key."""
    from blitz.api import settings_overrides
    from blitz.config.loading import parse_value
    from blitz.errors import BlitzError

    pairs = {}
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise BlitzError(f"invalid --set {item!r}: use --set SECTION.KEY=VALUE")
        pairs[key.strip()] = parse_value(value.strip(), f"--set {key.strip()}")
    # getattr with a default: commands other than train take only some of these options
    return settings_overrides({word: getattr(args, word, None) for word in KEYWORDS}, pairs)


def wrap(text: str, indent: str) -> str:
    """Fit a line of a listing in 100 columns, continuing under its second column."""
    import textwrap

    return textwrap.fill(text, 100, subsequent_indent=indent, break_on_hyphens=False)
