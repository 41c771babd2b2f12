"""What every function of the API shares: argument types checked against the annotations
(``checked``), the default preset, and the printer a run's progress goes to."""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable
from functools import cache, wraps
from typing import Any, TypeVar

from blitz.errors import BlitzError, path_too_long

DEFAULT_PRESET = "fast-cpu"
KINDS = {str: "a string", os.PathLike: "a path", bool: "True or False", int: "an integer",
         float: "a number", dict: "a dict", type(None): "None"}  # fmt: skip
Function = TypeVar("Function", bound=Callable[..., Any])


def checked(function: Function) -> Function:
    """Arguments of another type than ``function``'s annotations are a BlitzError naming the
    argument and the types it takes (not a TypeError or AttributeError from deep inside, or a
    wrong one found only after training)."""
    signature = inspect.signature(function)
    where = "blitz." + function.__qualname__.removesuffix(".__init__")  # blitz.Run(...)

    @wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        annotated = _types(function)
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            allowed = annotated.get(name)
            if allowed and not isinstance(value, allowed):
                *others, last = [KINDS.get(t, t.__name__) for t in allowed]
                expected = f"{', '.join(others)} or {last}" if others else last
                raise BlitzError(
                    f"{where}: {name} must be {expected}, not "
                    f"{short(value)} ({type(value).__name__})"
                )
            if isinstance(value, str | os.PathLike) and "\0" in str(os.fspath(value)):
                # no path holds one: os calls raise ValueError("embedded null byte")
                raise BlitzError(f"{where}: {name} holds a NUL character: {short(value)}")
        try:
            return function(*args, **kwargs)
        except OSError as exc:  # a path too long, given or read from a file: said as such
            if (error := path_too_long(exc)) is None:
                raise
            raise error from None

    return typing.cast(Function, call)


@cache
def _types(function: Callable[..., Any]) -> dict[str, tuple[type, ...]]:
    """Parameter -> the classes its annotation allows (generics by their origin: ``dict[str,
    Any]`` is ``dict``); none for ``Any``. Read at the first call: the classes that the
    annotations name only for type checkers are imported here."""
    from blitz.training.evaluate import Scores
    from blitz.training.metrics import Metrics
    from blitz.training.multilabel import MultiLabelScores
    from blitz.tuning.job import Result

    names = {"Metrics": Metrics, "Scores": Scores, "TuneResult": Result,
             "MultiLabelScores": MultiLabelScores}  # fmt: skip
    hints = typing.get_type_hints(function, localns=names)
    out = {}
    for name, hint in hints.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        if name != "return" and Any not in options:
            out[name] = tuple(typing.get_origin(t) or t for t in options)
    return out


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def echo(message: str) -> None:
    """A run's progress, printed as it comes (``quiet=False``)."""
    print(message, flush=True)
