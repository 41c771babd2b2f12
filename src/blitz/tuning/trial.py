"""One trial: one blitz training run with the trial's settings, its test set held out, scored
on validation (accuracy, or macro mAP for several labels an image: ``Job.figure``); each
epoch's validation figure goes to the pruner."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from blitz.errors import BlitzError
from blitz.training.context import silent
from blitz.training.loop import TrainState
from blitz.training.rundir import RunDir
from blitz.tuning.job import Job
from blitz.tuning.study import own_trial
from blitz.utils.signals import StopRequested
from blitz.workflows.runs import train_run

TRIALS = "trials"  # trials' run directories, under --out


def trial_dir(out: Path, number: int) -> Path:
    return out / TRIALS / f"{number:04d}"


def objective(job: Job, out: Path) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: train a trial's run, return its validation figure."""
    space = job.dimensions

    def run(trial: optuna.Trial) -> float:
        own_trial(trial)
        params = {key: dim.suggest(trial) for key, dim in space.items()}
        started = time.perf_counter()
        try:
            return _train(trial, job, params, out)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))

    return run


def _train(trial: optuna.Trial, job: Job, params: dict, out: Path) -> float:
    run_dir = RunDir(trial_dir(out, trial.number))
    notes = io.StringIO()  # what a run says even when quiet (a chance-level score): recorded
    try:
        cfg = job.config(params)  # a combination the checks refuse: this trial fails
        with run_dir.lock(), contextlib.redirect_stderr(notes):
            run_dir.prepare(overwrite=True)
            metrics = train_run(cfg, run_dir, silent, True, time.perf_counter(), test=False,
                                on_epoch=_pruning(trial, job))  # fmt: skip
    except optuna.TrialPruned:
        remove_run(run_dir)
        raise
    except BlitzError as exc:  # diverged, or settings that do not go together: recorded
        trial.set_user_attr("error", str(exc))
        remove_run(run_dir)
        raise
    except StopRequested as exc:  # Ctrl-C or SIGTERM: the study, not this run, is resumed
        raise StopRequested(
            f"tune stopped during trial {trial.number}: blitz tune --out {out} --resume "
            "continues the study (finished trials are kept; this one starts again)",
            exc.signum,
        ) from None
    finally:
        if notes.getvalue():
            trial.set_user_attr("notes", notes.getvalue().strip()[:2000])
    if metrics is None:  # pragma: no cover - a trial is one process, the first
        raise AssertionError("a trial's run returned no metrics")
    trial.set_user_attr("run_dir", str(run_dir.path))
    trial.set_user_attr("epochs", metrics.epochs)
    return job.test_score(metrics)  # on validation: the test set was held out


def _pruning(trial: optuna.Trial, job: Job) -> Callable[[TrainState, int], None]:
    """After each epoch: report its validation figure at the percentage of the trial's planned
    steps done, and stop if the pruner says so. Not at the epoch's number: with the batch size
    searched, epoch 1 is half of one trial's budget and a fifth of another's, and a pruner
    compares trials at equal steps."""

    def after_epoch(state: TrainState, total: int) -> None:
        figure = state.history[-1].get(f"val_{job.figure_key}")
        if figure is None:
            return
        done = round(100 * state.step / max(total, 1))
        trial.report(figure, done)
        if trial.should_prune():
            trial.set_user_attr("epochs", state.epoch)
            raise optuna.TrialPruned(
                f"pruned after epoch {state.epoch} ({done} % of its steps): validation "
                f"{job.figure} {100 * figure:.2f} %"
            )

    return after_epoch


def remove_run(run_dir: RunDir) -> None:
    """A trial's run directory goes (pruned, failed, or not among the top few)."""
    shutil.rmtree(run_dir.path, ignore_errors=True)
