"""The search space: which settings a study varies and over what, by setting key. A preset's
default space is made from its own values; a TOML ``[space]`` table replaces it. Every range is
checked against the settings' own declarations and checks before any training."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from blitz.config.checks import option_name
from blitz.config.loading import MAX_SETTINGS_BYTES, parse_nested
from blitz.config.settings import SECTIONS, TRAIN_FLAGS, Config
from blitz.config.types import field_hints, is_number
from blitz.errors import BlitzError, did_you_mean
from blitz.files import read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    import optuna

Kind = Literal["log", "uniform", "int", "choice"]
KINDS: dict[str, str] = {
    "log": "log-uniform", "uniform": "uniform", "int": "an integer", "choice": "one of",
}  # fmt: skip
# what a trial is scored on, and where: varied, the trials would not be compared on one set
UNTUNABLE = ("data.source", "data.val_fraction", "data.test_fraction", "data.split_seed",
             "train.device", "train.eval_every_epoch")  # fmt: skip
SPACE_EXAMPLE = "lr = { log = [0.01, 0.5] } or batch-size = { choice = [64, 128] }"


@dataclass(frozen=True)
class Dimension:
    """One setting a study varies: a range (log-uniform, uniform, integer) or a choice."""

    key: str  # the setting's key, optim.lr: also the name of the Optuna parameter
    kind: Kind
    values: tuple[Any, ...]  # (low, high) of a range; the choices of a choice
    step: float | None = None  # a range's step (uniform, int); None: continuous, or 1

    def suggest(self, trial: optuna.Trial) -> Any:
        """This dimension's value for ``trial``."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, low, high, step=int(self.step or 1))
        return trial.suggest_float(self.key, low, high, log=self.kind == "log", step=self.step)

    def describe(self) -> str:
        """``log-uniform in [0.01, 0.5]``, ``one of 64, 128``."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.values))
        step = f" step {self.step:g}" if self.step else ""
        return f"{KINDS[self.kind]} in [{self.values[0]:g}, {self.values[1]:g}]{step}"

    def to_raw(self) -> dict[str, Any]:
        """As a ``[space]`` entry (what a study records, and a file holds)."""
        raw: dict[str, Any] = {self.kind: list(self.values)}
        return {**raw, "step": self.step} if self.step else raw


Space = dict[str, Dimension]


def read_space(path: Path) -> Space:
    """The ``[space]`` table of a TOML file."""
    try:
        text = read_regular(path, MAX_SETTINGS_BYTES).decode("utf-8")
        raw = parse_nested(tomllib.loads, text, f"--space {path}")
    except OSError as exc:
        raise BlitzError(f"cannot read --space {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BlitzError(f"--space {path} is not valid TOML: {exc}") from None
    table = raw.get("space")
    if not isinstance(table, dict) or not table:
        raise BlitzError(
            f"--space {path} has no [space] table of settings to search: add one, e.g. "
            f"[space] then {SPACE_EXAMPLE}"
        )
    return parse_space(table, f"--space {path}")


def parse_space(table: dict[str, Any], where: str) -> Space:
    """Dimensions from a ``[space]`` table: keys named as ``blitz train``'s options (``lr``,
    ``--weight-decay``) or settings (``optim.lr``, also as nested tables)."""
    space: Space = {}
    for name, spec in _flatten(table, where):
        key = setting_key(name, where)
        if key in space:
            raise BlitzError(f"{where}: {name} and another entry both set {key}: keep one")
        space[key] = _dimension(key, spec, f"{where}: {name}")
    return space


def _flatten(table: dict[str, Any], where: str, prefix: str = "") -> list[tuple[str, Any]]:
    """``[space.optim] lr = ...`` and ``optim.lr = ...`` (TOML's dotted keys) as ``optim.lr``."""
    out = []
    for name, spec in table.items():
        if isinstance(spec, dict) and not set(spec) & set(KINDS) and f"{prefix}{name}" in SECTIONS:
            out += _flatten(spec, where, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", spec))
    return out


def setting_key(name: str, where: str) -> str:
    """The setting a space entry names: ``optim.lr``, ``lr``, ``--lr`` -> ``optim.lr``."""
    keys = {f"{s}.{f}" for s, cls in SECTIONS.items() for f in field_hints(cls)}
    words = {flag.keyword: key for key, flag in TRAIN_FLAGS.items()}  # weight_decay
    words |= {flag.flag[2:]: key for key, flag in TRAIN_FLAGS.items()}  # weight-decay
    key = name if name in keys else words.get(name.removeprefix("--"))
    if key is None:
        raise BlitzError(
            f"{where}: {name!r} is not a setting{did_you_mean(name, [*keys, *words])}: name "
            "an option of blitz train (lr, weight-decay) or a setting key (optim.lr)"
        )
    if key in UNTUNABLE:
        raise BlitzError(
            f"{where}: {option_name(key)} cannot be searched: every trial must be trained and "
            "scored on the same data and split (fix it with its option instead)"
        )
    return key


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    if isinstance(spec, list):  # a bare list: a choice
        spec = {"choice": spec}
    kinds = sorted(set(spec) & set(KINDS)) if isinstance(spec, dict) else []
    extra = sorted(set(spec) - set(KINDS) - {"step"}) if isinstance(spec, dict) else []
    if len(kinds) != 1 or extra:
        raise BlitzError(
            f"{where}: expected one of log, uniform, int or choice with its values ("
            f"{SPACE_EXAMPLE}), not {spec!r}"
        )
    kind = kinds[0]
    values, step = spec[kind], spec.get("step")
    if not isinstance(values, list):
        raise BlitzError(f"{where}: {kind} takes a list of values, not {values!r}")
    hint = field_hints(SECTIONS[key.split(".")[0]])[key.split(".")[1]]
    if kind == "choice":
        return _choice(key, values, where)
    _check_range(kind, values, step, hint, where)
    return Dimension(key, kind, tuple(values), step)


def _choice(key: str, values: list[Any], where: str) -> Dimension:
    if not all(isinstance(v, (str, int, float, bool)) for v in values):
        raise BlitzError(f"{where}: choices must be numbers, words or booleans, not {values!r}")
    if len(set(map(repr, values))) < 2:
        raise BlitzError(
            f"{where}: choice of {values!r} leaves nothing to choose: give two values or more "
            "(to fix a setting for every trial, pass its option instead)"
        )
    return Dimension(key, "choice", tuple(values))


def _check_range(kind: str, values: list[Any], step: Any, hint: Any, where: str) -> None:
    """Two numbers, low < high, of the setting's type; log-uniform above 0."""
    allowed = get_args(hint) if get_origin(hint) is not None else (hint,)
    wanted = int if kind == "int" else float
    if wanted not in allowed:
        takes = "an integer" if int in allowed else "a number" if float in allowed else "words"
        raise BlitzError(
            f"{where}: the setting takes {takes}, so {kind} cannot range over it "
            + ("(use int)" if int in allowed else "(use choice)")
        )
    numbers = len(values) == 2 and all(is_number(v) for v in values)
    if not numbers or (kind == "int" and not all(isinstance(v, int) for v in values)):
        raise BlitzError(f"{where}: {kind} takes [low, high], two {KINDS[kind]}s, not {values!r}")
    low, high = values
    if not low < high:
        raise BlitzError(
            f"{where}: [{low}, {high}] is empty or a single value: low must be below high "
            "(to fix a setting for every trial, pass its option instead)"
        )
    if kind == "log" and low <= 0:
        raise BlitzError(f"{where}: log-uniform needs low > 0, not {low}: use uniform from 0")
    if step is not None and not (is_number(step) and 0 < step <= high - low):
        raise BlitzError(f"{where}: step {step!r} must be a number in (0, {high - low:g}]")
    if kind == "log" and step is not None:
        raise BlitzError(f"{where}: log-uniform takes no step")


def check_space(space: Space, fixed: dict[str, Any], build: Callable[[dict], Config]) -> None:
    """A space that can be searched: not empty, no setting both fixed and searched, and each
    range's ends (each choice) valid settings with the fixed ones, before any training."""
    if not space:
        raise BlitzError(
            "the search space is empty: every setting it would vary is fixed by an option; "
            f"give a --space FILE.toml with a [space] table ({SPACE_EXAMPLE})"
        )
    for key, dim in space.items():
        if key in fixed:
            raise BlitzError(
                f"{option_name(key)} is both fixed (given as an option) and in the search space: "
                "drop one"
            )
        ends = dim.values if dim.kind == "choice" else dim.values[:2]
        for value in ends:
            try:
                build({key: value})
            except BlitzError as exc:
                raise BlitzError(
                    f"the space's {key} ({dim.describe()}) goes out of range: {exc}"
                ) from None


def default_space(cfg: Config, fixed: dict[str, Any]) -> Space:
    """A preset's space, made from its own values: learning rate, weight decay, label smoothing,
    batch size, augmentation (flips, shifts) and, without a step cap, epochs; less what
    ``fixed`` sets."""
    o, d, t = cfg.optim, cfg.data, cfg.train
    muon = o.name == "muon"  # its conv filters learn at muon_lr: the rate that matters most
    lr_key, lr = ("optim.muon_lr", o.muon_lr) if muon else ("optim.lr", o.lr)
    decay = o.weight_decay or 1e-3
    size = d.image_size if isinstance(d.image_size, int) else 32
    dims = [
        Dimension(lr_key, "log", (_round(lr / 10), _round(lr * 3))),
        Dimension("optim.weight_decay", "log", (_round(decay / 10), _round(decay * 10))),
        Dimension("train.batch_size", "choice", tuple(sorted({max(1, t.batch_size // 2),
                                                               t.batch_size, t.batch_size * 2}))),
        Dimension("data.translate", "int", (0, min(max(2, 2 * d.translate), size // 8))),
        Dimension("data.flip", "choice", ("none", "random" if d.flip != "alternate" else d.flip)),
    ]  # fmt: skip
    if o.loss == "cross-entropy":
        top = min(0.5, max(0.2, 2 * o.label_smoothing))
        dims.append(Dimension("optim.label_smoothing", "uniform", (0.0, top)))
    if not t.max_steps and not t.min_steps:  # a step cap would make epochs a mere noise
        dims.append(Dimension("train.epochs", "int", (max(1, t.epochs // 2), 2 * t.epochs)))
    return {dim.key: dim for dim in dims if dim.key not in fixed}


def _round(value: float) -> float:
    """Two significant digits: a range a person reads (0.02, not 0.020000000000000004)."""
    return float(f"{value:.2g}") if value > 0 and math.isfinite(value) else value


def space_from_raw(raw: dict[str, dict[str, Any]]) -> Space:
    """A space as a study recorded it (``Dimension.to_raw`` by key)."""
    return parse_space(raw, "the study's recorded space")


def space_to_raw(space: Space) -> dict[str, dict[str, Any]]:
    return {key: dim.to_raw() for key, dim in space.items()}
