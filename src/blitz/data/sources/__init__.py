"""The data sources: ``@register_source``, ``load_data(cfg or spec, log)``, ``list_sources()``.

A spec (``--data``) names a source: ``NAME``, or ``NAME:ARG`` for a source that takes an
argument (``shapes:N``); any other spec is a path, for the source registered as ``PATH``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from blitz.config.data_settings import DataConfig
from blitz.data.dataset import ImageData, Log, check_class_count, similar_classes_note
from blitz.data.exclude import exclude_images
from blitz.data.roles import Assignment, as_test_set, assign_roles
from blitz.errors import BlitzError

Loader = Callable[[str, DataConfig, Log], ImageData]  # load(argument, settings, log)
PATH = "PATH"  # the source of every spec that names no other (a folder may be called anything)


class Source(NamedTuple):
    load: Loader
    takes_arg: bool  # NAME:ARG is this source (otherwise it is a path with a colon)


_REGISTRY: dict[str, Source] = {}


def register_source(name: str, takes_arg: bool = False) -> Callable[[Loader], Loader]:
    """Register ``load(arg, cfg, log)`` as the source ``name``. It is given the text after
    ``NAME:`` ("" for a bare ``NAME``); the ``PATH`` source is given the whole spec."""

    def register(load: Loader) -> Loader:
        _REGISTRY[name] = Source(load, takes_arg)
        return load

    return register


def list_sources() -> list[str]:
    """Names of the registered sources, sorted (any other spec is a PATH)."""
    return sorted(name for name in _REGISTRY if name != PATH)


def find_source(spec: str) -> tuple[Source, str]:
    """The source a spec stands for, and the argument it is given."""
    name, colon, arg = spec.partition(":")
    source = _REGISTRY.get(name) if name != PATH else None
    if source and (source.takes_arg or not colon):
        return source, arg
    return _REGISTRY[PATH], spec


def recorded_spec(spec: str) -> str:
    """The spec as a run records it: a path made absolute (``~`` expanded), so that replaying
    the run's config.json from another folder reads the same data; a source name as it is."""
    if find_source(spec)[0] is not _REGISTRY[PATH]:
        return spec
    return str(Path(spec).expanduser().resolve())


def load_data(
    cfg: DataConfig | str, log: Log = print, recorded: Assignment | None = None
) -> ImageData:
    """Resolve ``data.source`` (auto, cifar10, mnist, shapes[:N], PATH) to a dataset with its
    train, validation and test sets (``blitz.data.roles``; ``recorded``: the sets a run wrote
    down); a string is a source with the other data settings at their defaults."""
    cfg = DataConfig(source=cfg) if isinstance(cfg, str) else cfg
    data = load_source(cfg, log)
    check_task(data, cfg.task)
    check_class_count(data.name, data.classes)
    if note := similar_classes_note(data.classes):
        log(note)
    data = assign_roles(data, cfg, log, recorded)
    if cfg.exclude and recorded is None:  # a run's record lists its sets without them already
        data = exclude_images(data, Path(cfg.exclude).expanduser(), log)
    return data


def check_task(data: ImageData, task: str) -> None:
    """``data.task`` set by hand must be what the data is: nothing becomes single-label (or
    multi-label) silently."""
    if task == "multi-label" and not data.multi_label:
        raise BlitzError(
            f"--task multi-label, but {data.name} gives each image one class (a folder per "
            "class cannot hold several labels per image): list the images and their labels in "
            "a table (path,labels), or drop --task"
        )
    if task == "single-label" and data.multi_label:
        raise BlitzError(
            f"--task single-label, but {data.name} gives images several labels (or none): "
            "drop --task to train it multi-label"
        )


def load_test_data(cfg: DataConfig, classes: list[str], log: Log = print) -> ImageData:
    """``data.source`` as a test set for a model trained on ``classes`` (``roles.as_test_set``):
    its own test set, or all of it."""
    data = load_source(cfg, log)
    check_task(data, cfg.task)
    return as_test_set(data, classes, log)


def load_source(cfg: DataConfig, log: Log) -> ImageData:
    """The sets the source ``data.source`` has, as it has them."""
    source, arg = find_source(cfg.source)
    return source.load(arg, cfg, log)


# Explicit imports register each source (no star-import magic).
from blitz.data.sources import auto, cifar10, folder, mnist, shapes  # noqa: E402,F401
