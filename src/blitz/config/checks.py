"""How a setting's value is checked, and named in an error (its option and key: ``--lr
(optim.lr)``); the value formats settings share (sizes, plain names). ``config.settings``
declares the settings with ``option`` and fills ``FLAGS`` from those declarations.

Imports nothing of blitz but its errors and ``config.types``."""

from __future__ import annotations

import math
import re
from dataclasses import field
from typing import Any, get_args

from blitz.config.types import Mismatch, convert, describe, field_hints
from blitz.errors import BlitzError, did_you_mean

FLAGS: dict[str, str] = {}  # setting key -> its option (optim.lr -> --lr): config.settings's


# Far beyond any real run, and low enough that a typo fails here rather than deep in torch.
MAX_SEED = 2**63 - 1  # the engine seeds generators with seed + 1 + rank: it must stay < 2**64
MAX_IMAGE_SIZE = 4096
MAX_BATCH_SIZE = 2**20
MAX_EPOCHS = 10**6


def option_name(key: str) -> str:
    """How a user types the setting ``key`` (``optim.lr``): ``--lr (optim.lr)``, or the key."""
    return f"{FLAGS[key]} ({key})" if key in FLAGS else key


def _invalid(key: str, value: Any, expected: str) -> BlitzError:
    return BlitzError(f"invalid value {value!r} for {option_name(key)}: expected {expected}")


def check_value(condition: bool, key: str, value: Any, expected: str) -> None:
    """A BlitzError naming the setting ``key`` and what it expects, unless ``condition``."""
    if not condition:
        raise _invalid(key, value, expected)


def check_range(key: str, value: float, low: float, high: float = math.inf) -> None:
    """A BlitzError naming the setting ``key`` unless ``low <= value <= high``."""
    kind = "an integer" if isinstance(value, int) else "a number"
    expected = f"{kind} >= {low}" if high == math.inf else f"{kind} in [{low}, {high}]"
    check_value(low <= value <= high, key, value, expected)


def check_fraction(key: str, value: float, what: str = "a number") -> None:
    """A BlitzError naming the setting ``key`` unless ``0 <= value < 1``."""
    check_value(0 <= value < 1, key, value, f"{what} in [0, 1)")


def check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` wants it (a float for an int, a tuple for a list),
    or a BlitzError naming the setting ``key`` and what it expects."""
    # a NUL in a path or a name (a settings file's "\u0000") fails every os call with ValueError
    check_value(not (isinstance(value, str) and "\0" in value), key, value, "no NUL character")
    try:
        return convert(value, hint)
    except Mismatch:
        words = [str(a) for a in get_args(hint) if isinstance(a, str)]  # a Literal's choices
        hint_text = did_you_mean(value, words) if isinstance(value, str) else ""
        raise _invalid(key, value, describe(hint) + hint_text) from None


def check_types(settings: object, section: str = "") -> None:
    """Check every field of a settings dataclass against its annotation, normalising it (a
    float for an int, a tuple for a list): part of building it, before anyone else sees it."""
    # typeshed's functools.cache wants Hashable arguments, which a class is but type[X] is not
    for name, hint in field_hints(type(settings)).items():  # type: ignore[arg-type]
        key = f"{section}.{name}" if section else name
        object.__setattr__(settings, name, check_type(key, getattr(settings, name), hint))


def option(default: Any, flag: str, help: str, metavar: str = "", const: Any = None) -> Any:
    """A setting that is also an option of ``blitz train`` (and a keyword of ``blitz.train``):
    its flag, help and metavar are declared here, with the setting, and nowhere else."""
    meta = {"flag": flag, "help": help, "metavar": metavar, "const": const}
    return field(default=default, metadata=meta)


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int | None:
    """Bytes in a size such as 8GB, 1.5G, 500MB or 0 (binary units); None for "auto"."""
    if text == "auto":
        return None
    number = text.upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    try:
        value = float(number.removesuffix(unit)) if number else -1
    except ValueError:
        value = -1
    expected = "auto, or a size such as 8GB, 500MB or 0"
    check_value(0 <= value < float("inf"), "data.max_memory", text, expected)
    return int(value * SIZE_UNITS[unit])


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1 (``184 MB``)."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = 2 ** (10 * ("KMGT".index(unit[0]) + 1))
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


PLAIN_NAME = "a name of at most 64 letters, digits, spaces, '.', '_' or '-' (no '/' or '..')"


def is_plain_name(name: str) -> bool:
    """A preset's name: a word that is safe as part of a file name on any system."""
    allowed = all(c.isalnum() or c in " ._-" for c in name)
    return 0 < len(name) <= 64 and allowed and ".." not in name and not name.startswith(".")


def plain_name(text: str) -> str:
    """``text`` reduced to ASCII letters, digits, '.', '_' and '-' (a file name's stem, or a
    preset's name as part of a folder's name), or "custom" if nothing is left."""
    name = re.sub(r"(?:[^\w.-]|\.{2,})+", "-", text, flags=re.ASCII).strip(".-")[:64]
    return name or "custom"
