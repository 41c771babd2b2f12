"""Setting values against their annotations: ``int``, ``float``, ``Literal`` choices, unions,
lists, tables; what each expects in a user's words. Knows no setting: the callers name it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

UNIONS = (Union, types.UnionType)
WORDS = {  # a scalar annotation -> (one, a list of them), in messages
    int: ("an integer", "integers"),
    float: ("a finite number", "numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "booleans"),
}


class Mismatch(Exception):
    """A value that does not fit its annotation (the caller names the setting)."""


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (true is no number of epochs)."""
    # bool is an int to Python, but true is no number of epochs; 10**400 is no float either
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def convert(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it (a float for an int, a tuple for a list)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in UNIONS:
        return _first_fit(value, args)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):  # tuple[float, ...]
        return origin(convert(item, args[0]) for item in value)
    if not _fits(value, hint, origin, args):
        raise Mismatch
    return float(value) if hint is float else value


def _fits(value: Any, hint: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in args)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return is_number(value)
    if hint is int:  # a batch size of 64.0 or an epoch count of 2.5 is refused, not rounded
        return is_number(value) and isinstance(value, int)
    return origin is None and (hint is Any or isinstance(value, hint))  # str, bool, a section


def _first_fit(value: Any, hints: tuple[Any, ...]) -> Any:
    for hint in hints:
        try:
            return convert(value, hint)
        except Mismatch:
            pass
    raise Mismatch


def describe(hint: Any) -> str:
    """What a setting of this annotation expects, in a user's words."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in UNIONS:
        return " or ".join(map(describe, args))
    if origin in (tuple, list):
        return f"a list of {WORDS[args[0]][1]}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a table of settings"
    return WORDS[hint][0]


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """A settings dataclass's fields and their annotations, resolved."""
    # `from __future__ import annotations` leaves strings: resolve them once per section
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def value_from_text(text: str, hint: Any) -> Any:
    """An option's text as its setting's annotation wants it: a number where one is expected,
    else the text itself (a word such as "auto", or a mistake for the checks to name)."""
    for kind in get_args(hint) if get_origin(hint) in UNIONS else (hint,):
        if kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(text)
    return text


T = TypeVar("T")


def concrete(value: T | Literal["auto"]) -> T:
    """A setting that ``DataConfig`` (its own models' values, or ``resolved``'s) or
    ``resolve_for_device`` has made concrete (image size, mean, std, compile), typed as such;
    "auto" here is a bug of blitz, not of the user."""
    if isinstance(value, str):
        raise AssertionError(f"an 'auto' setting was used before it was resolved: {value!r}")
    return value
