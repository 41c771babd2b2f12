"""The tools built on data and runs: ``tune`` (Optuna) and ``doctor`` (the data's faults);
each imports its package on first use."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blitz.api.common import DEFAULT_PRESET, checked, echo
from blitz.api.training import refuse_changes_on_resume, settings_overrides
from blitz.diagnosis.findings import DEFAULT_FOLDS, NEAR_BITS, Diagnosis  # light: no torch
from blitz.errors import BlitzError

if TYPE_CHECKING:
    from blitz.tuning.job import Result as TuneResult


@checked
def tune(
    data: str | os.PathLike | None = None,
    preset: str | None = None,
    *,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    space: str | os.PathLike | dict[str, Any] | None = None,
    trials: int | None = None,
    timeout: int | float | None = None,
    jobs: int = 1,
    pruner: str = "median",
    storage: str | None = None,
    study: str = "blitz",
    resume: bool = False,
    search_only: bool = False,
    search_seed: int = 0,
    search: str = "tpe",
    quiet: bool = False,
    set: dict[str, Any] | None = None,
    **settings: Any,
) -> TuneResult:
    """Search the settings as ``blitz tune`` does (Optuna: TPE, pruned on each epoch's
    validation accuracy, or macro mAP for several labels an image): trials are runs scored on
    validation only; the winner's settings go to ``out/best.toml``, and it is trained again and
    tested once (``result.tested``).
    ``settings`` (``train``'s keywords) and ``set`` are fixed for every trial; ``space`` is a
    TOML file with a [space] table, or that table as a dict; ``resume`` continues the study in
    ``out`` (or ``storage``) with its recorded settings; ``search="random"``: random search
    instead of TPE. Needs pip install 'blitz[tune]'."""
    from blitz.tuning.search import Options
    from blitz.tuning.search import tune as run_study

    if data is not None:
        settings["data"] = data
    fixed = settings_overrides(settings, set)
    opts = Options(Path(out), trials, timeout, jobs, storage, study, resume, search_only, quiet,
                   search_seed, search)  # fmt: skip
    if resume:
        starts = {"data or settings": fixed, "preset": preset, "config": config, "space": space}
        given = [name for name, value in starts.items() if value]
        refuse_changes_on_resume("--resume", out, given + ["pruner"] * (pruner != "median"))
        return run_study(None, opts, echo)
    return run_study(_tune_job(preset, config, space, fixed, pruner), opts, echo)


def _tune_job(
    preset: str | None,
    config: str | os.PathLike | None,
    space: str | os.PathLike | dict[str, Any] | None,
    fixed: dict[str, Any],
    pruner: str,
) -> Any:
    """What a new study searches (``blitz.tuning.job.Job``)."""
    from blitz.config.loading import read_settings_file
    from blitz.tuning.job import Job
    from blitz.tuning.space import default_space, parse_space, read_space, space_to_raw

    if preset and config:
        raise BlitzError("--preset and --config both name the settings to start from: give one")
    base = read_settings_file(Path(config)) if config else None
    job = Job(preset or DEFAULT_PRESET, base, fixed, {}, pruner)
    if isinstance(space, dict):
        dims = parse_space(space, "space")
    elif space is not None:
        dims = read_space(Path(space))
    else:
        dims = default_space(job.config({}), fixed)
    return dataclasses.replace(job, space=space_to_raw(dims))


@checked
def doctor(
    data: str | os.PathLike | None = None,
    *,
    run: str | os.PathLike | None = None,
    out: str | os.PathLike = "doctor",
    preset: str = DEFAULT_PRESET,
    folds: int = DEFAULT_FOLDS,
    steps: int = 0,
    near_bits: int = NEAR_BITS,
    settings: dict[str, Any] | None = None,
    quiet: bool = False,
) -> Diagnosis:
    """Check ``data`` (any source train takes, its sets as train makes them) or, with ``run``,
    the sets a finished run used: leakage and copies, unreadable and odd files, class balance,
    and likely label errors by ``folds``-fold cross-validation with ``preset`` (``steps``
    each; 0: the preset's). Writes doctor.html and doctor.csv into ``out``; nothing is ever
    deleted or moved. ``settings``: data settings by key (``{"data.test_fraction": 0.2}``)."""
    from blitz.diagnosis.check import Checks
    from blitz.diagnosis.main import run_doctor
    from blitz.training.context import silent

    checks = Checks(preset, folds, steps, near_bits, dict(settings or {}))
    source = None if data is None else os.fspath(data)
    where = None if run is None else Path(run)
    return run_doctor(source, where, checks, Path(out), silent if quiet else echo)
