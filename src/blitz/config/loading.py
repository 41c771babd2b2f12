"""Where settings come from: the bundled presets, settings files of one's own (TOML, or a run's
config.json), and overrides by key; merged into raw nested settings that
``blitz.models.configs.build_config`` validates."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from blitz.config.checks import check_value, plain_name
from blitz.config.data_settings import MODEL_PREPROCESSING, SIZED_FOR_IMAGES
from blitz.config.settings import SECTIONS, Config
from blitz.errors import BlitzError, did_you_mean
from blitz.files import read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, for every bundled TOML preset."""
    files = sorted(
        (p for p in resources.files("blitz.config.presets").iterdir() if p.name.endswith(".toml")),
        key=lambda p: p.name,
    )
    return {p.name[:-5]: tomllib.loads(p.read_text())["description"] for p in files}


def load_preset(name: str) -> dict[str, Any]:
    """The raw nested settings of a bundled preset (not yet validated)."""
    presets = list_presets()
    if name not in presets:
        raise BlitzError(
            f"unknown preset {name!r}{did_you_mean(name, presets)}: choose one of "
            + ", ".join(presets)
        )
    raw = tomllib.loads(
        resources.files("blitz.config.presets").joinpath(f"{name}.toml").read_text()
    )
    raw["preset"] = name
    return raw


MAX_SETTINGS_BYTES = 2**20  # a settings file is a few hundred bytes; a larger one is no such file
# settings and run records nest 3 deep; far deeper, Python's recursion (the parser's, or a
# copy's or a check's after it) runs out of stack: a RecursionError, not a message
MAX_NESTING = 32


def parse_nested(parse: Callable[[str], Any], text: str, what: str) -> Any:
    """``parse(text)`` (``json.loads``, ``tomllib.loads``) of text from outside blitz; lists
    and tables nested more than MAX_NESTING deep are a BlitzError naming ``what``."""
    try:
        raw = parse(text)
        deep = _nests_deeper(raw, MAX_NESTING)
    except RecursionError:
        deep = True
    if deep:
        raise BlitzError(
            f"{what} is nested too deeply (lists or tables more than {MAX_NESTING} levels deep, "
            "where blitz's files have 3): it is not a blitz file; pass the one you meant"
        )
    return raw


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"optim": {"lr": 0.2}}`` -> ``{"optim.lr": 0.2}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _nests_deeper(value: Any, levels: int) -> bool:
    """Level by level, not recursively: the check must not run out of stack itself."""
    level = [value]
    for _ in range(levels):  # the items ``levels`` deep: one that is a list or table is too deep
        level = [v for c in level if isinstance(c, (dict, list))
                 for v in (c.values() if isinstance(c, dict) else c)]  # fmt: skip
    return any(isinstance(v, (dict, list)) for v in level)


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw nested settings of a file of one's own: a TOML file in the presets' format, or a
    run's ``config.json`` (or its run directory), which replays that run's settings exactly.
    Not yet validated; ``preset`` is the file's (a TOML file's: its name)."""
    path = path / "config.json" if path.is_dir() else path
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise BlitzError(
            f"--config {path}: expected a .toml settings file (as `blitz presets --show NAME` "
            "prints), or a run's config.json or run directory"
        )
    try:
        text = read_regular(path, MAX_SETTINGS_BYTES).decode("utf-8")  # no pipe, no 1 GB
        raw = parse_nested(
            tomllib.loads if suffix == ".toml" else json.loads, text, f"--config {path}"
        )
    except OSError as exc:
        raise BlitzError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise BlitzError(f"--config {path} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(raw, dict):
        raise BlitzError(f"--config {path} holds no table of settings")
    if suffix == ".toml":
        raw.setdefault("preset", plain_name(path.stem))
    return raw


def settings_toml(cfg: Config) -> str:
    """A whole Config as TOML in the presets' format (``--config`` reads it back; the file's
    name is then the run's preset name)."""
    import tomli_w

    settings = cfg.to_dict()
    del settings["preset"]
    return tomli_w.dumps(settings)


def parse_value(text: str, what: str = "a --set value") -> Any:
    """A command-line value as TOML would read it (numbers, booleans, lists), else a string."""
    try:
        return parse_nested(tomllib.loads, f"v = {text}", what)["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``optim.lr``) in nested raw settings; returns a new dict."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise BlitzError(
                f"invalid setting {dotted!r}: use SECTION.KEY with SECTION one of "
                + ", ".join(SECTIONS)
            )
        node = out.setdefault(section, {})
        *parents, leaf = key.split(".")
        for parent in parents:  # model.options.width
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):  # train.epochs.x: epochs holds no settings
                raise BlitzError(f"invalid setting {dotted!r}: {parent} is not a table")
        node[leaf] = value
    return out


def merge_settings(
    preset: str, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The raw settings of a preset (or ``base``, e.g. a ``--config`` file) with overrides
    applied and ``preset`` set; ``blitz.models.configs.build_config`` validates them. A preset's
    model options, image size and normalisation are for its own model: another ``model.name``
    starts from that model's defaults ("auto"), and only
    another timm model keeps its pretrained weights (timm's own, for that model). Its
    ``data.low_res`` is for its image size: another model or image size goes without. Likewise a
    preset's step cap and floor are for its own epochs: an explicit ``train.epochs`` (without
    ``train.max_steps`` or ``train.min_steps``) is obeyed whole."""
    overrides = overrides or {}
    raw = copy.deepcopy(load_preset(preset) if base is None else base)  # the caller's stays
    preset = raw.get("preset", preset)
    for name in SECTIONS:  # before any of them is read
        values = raw.get(name, {})
        check_value(isinstance(values, dict), name, values, f"a table of {name} settings")
    model = raw.get("model", {})
    name = overrides.get("model.name", model.get("name"))
    if name != model.get("name"):  # timm's weights go with a timm model only
        dropped = ("options",) if str(name).startswith("timm:") else ("options", "pretrained")
        raw["model"] = {k: v for k, v in model.items() if k not in dropped}
        data = raw.get("data", {})
        raw["data"] = {k: v for k, v in data.items() if k not in MODEL_PREPROCESSING}
    if name != model.get("name") or "data.image_size" in overrides:
        for key in SIZED_FOR_IMAGES:
            if f"data.{key}" not in overrides:
                raw.get("data", {}).pop(key, None)
    for bound in ("train.max_steps", "train.min_steps"):
        if "train.epochs" in overrides and bound not in overrides:
            raw.get("train", {}).pop(bound.split(".")[1], None)
    raw = apply_overrides(raw, overrides)
    raw["preset"] = preset
    return raw
