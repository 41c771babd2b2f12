"""``train``: a run from Python, as ``blitz train`` makes it; and the steps the command is
made of (``plan_training``, ``plan_resume``, ``run_training``)."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from blitz.api.common import DEFAULT_PRESET, checked, echo, short
from blitz.api.run import Run
from blitz.config.settings import SECTIONS, TRAIN_FLAGS
from blitz.errors import BlitzError

if TYPE_CHECKING:
    from blitz.config.settings import Config
    from blitz.training.checkpoint import Checkpoint
    from blitz.training.metrics import Metrics
    from blitz.training.rundir import RunDir

# train()'s keywords (argparse's names for `blitz train`'s options) -> the settings they set
KEYWORDS = {flag.keyword: key for key, flag in TRAIN_FLAGS.items()}


@checked
def train(
    data: str | os.PathLike | None = None,
    preset: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    set: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
    quiet: bool = False,
    mlflow: str | None = None,
    **settings: Any,
) -> Run:
    """Train, test and write a run directory as ``blitz train`` does; returns the finished Run.
    ``settings`` are that command's options as keywords (``max_steps=20`` for
    ``--max-steps 20``; ``blitz.api.KEYWORDS`` lists them); ``set`` takes any setting by its
    key (``{"optim.weight_decay": 5e-4}``); ``resume`` continues a stopped run with its saved
    settings; ``mlflow``: a tracking URI, "" for the default, None for no MLflow."""
    started = time.perf_counter()
    if data is not None:
        settings["data"] = data
    overrides = settings_overrides(settings, set)
    if resume is not None:
        starts = {"preset": preset, "config": config, "set": set, "out": out}
        given = [name for name, value in settings.items() if value is not None]
        given += [name for name, value in starts.items() if value]
        given += ["overwrite"] if overwrite else []
        refuse_changes_on_resume("train(resume=...)", resume, given)
        plan = plan_resume(resume)
    else:
        plan = plan_training(preset, overrides, out, config)
    metrics = run_training(plan, overwrite, quiet, mlflow, started)
    return Run(plan.run_dir.path, metrics)


def settings_overrides(settings: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """train()'s keywords as settings (``max_steps`` -> ``train.max_steps``; None: not given),
    then ``extra``, already by key; an unknown keyword is named with what was meant."""
    unknown = sorted(set(settings) - set(KEYWORDS))
    if unknown:
        raise BlitzError(f"unknown keyword {unknown[0]!r} for blitz.train: {_hint(unknown[0])}")
    overrides = {
        KEYWORDS[name]: os.fspath(value) if isinstance(value, os.PathLike) else value
        for name, value in settings.items()
        if value is not None
    }
    for key in extra or {}:  # the dict's type is checked, not its keys'
        if not isinstance(key, str):
            raise BlitzError(
                f"blitz.train: the keys of set must be settings' names such as "
                f"'optim.weight_decay', not {short(key)} ({type(key).__name__})"
            )
    return {**overrides, **(extra or {})}


def _hint(name: str) -> str:
    """What an unknown keyword of train() was meant to be."""
    if name == "devices":  # not `device`: several processes are torchrun's, started by the CLI
        return "training in several processes is the command line's: blitz train --devices N"
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    if matches := [key for key in keys if key.endswith(f".{name}")]:  # a setting by its name
        keyword = {key: word for word, key in KEYWORDS.items()}.get(matches[0])
        return f"did you mean {keyword}?" if keyword else f"pass set={{{matches[0]!r}: ...}}"
    own = [p for p in inspect.signature(train).parameters if p != "settings"]
    if close := difflib.get_close_matches(name, [*KEYWORDS, *own], 1):
        return f"did you mean {close[0]}?"
    return "see help(blitz.train) for the keywords, or pass any setting with set={key: value}"


def refuse_changes_on_resume(option: str, run_dir: str | os.PathLike, given: list[str]) -> None:
    """A resumed run must replay its saved settings: a changed one would break that silently.
    ``option`` and ``given`` are spelled as the caller's user typed them."""
    if given:
        raise BlitzError(
            f"{option} continues {run_dir} with the settings saved in it: drop "
            + ", ".join(given)
            + " (to change settings, start a new run)"
        )


class TrainingPlan(NamedTuple):
    """What a training call will do; nothing is written yet."""

    cfg: Config
    run_dir: RunDir
    resume: Checkpoint | None  # the checkpoint to continue from


def plan_training(
    preset: str | None,
    overrides: dict[str, Any],
    out: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
) -> TrainingPlan:
    """A new run: a preset (or a settings file, ``config``) with overrides, and its folder."""
    from blitz.config.loading import read_settings_file
    from blitz.models.configs import build_config
    from blitz.training.rundir import RunDir
    from blitz.workflows.runs import elastic_resume

    if preset and config:
        raise BlitzError("--preset and --config both name the settings to start from: give one")
    base = read_settings_file(Path(config)) if config else None
    cfg = build_config(preset or DEFAULT_PRESET, overrides, base)
    run_dir = RunDir(Path(out)) if out else RunDir.default(cfg.preset)
    return TrainingPlan(cfg, run_dir, elastic_resume(run_dir))  # torchrun restarted: carry on


def plan_resume(run_dir: str | os.PathLike) -> TrainingPlan:
    """A stopped run, continued from its newest checkpoint with its saved settings."""
    from blitz.training.rundir import RunDir

    folder = RunDir(Path(run_dir))
    resume = folder.load_resumable()
    return TrainingPlan(resume.cfg, folder, resume)


def run_training(
    plan: TrainingPlan,
    overwrite: bool,
    quiet: bool,
    mlflow: str | None,
    started: float,
    on_result: Callable[[Metrics], None] | None = None,
) -> Metrics | None:
    """Carry out a plan (``started``: when the caller began, for the run's total time;
    ``on_result``: called with the metrics before the pictures and report are drawn). Under
    torchrun every process trains and only the first returns the metrics."""
    from blitz.training.context import silent
    from blitz.training.distributed import finish
    from blitz.workflows.runs import train_run

    cfg, run_dir, resume = plan
    with _owning(run_dir):
        if resume is None and _first_process():
            run_dir.prepare(overwrite)
        log = silent if quiet else echo
        metrics = train_run(cfg, run_dir, log, quiet, started, resume, mlflow, on_result=on_result)
    finish()
    return metrics


def _first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def _owning(run_dir: RunDir) -> Iterator[None]:
    """The first process locks the run directory while it trains; a run refused before it
    wrote anything leaves no empty folder behind."""
    if not _first_process():
        yield
        return
    with run_dir.lock():
        try:
            yield
        except BaseException:  # refused, interrupted, or its output pipe closed
            run_dir.remove_if_unused()  # only a run with no checkpoint yet: nothing is lost
            raise
