"""A whole study: checked before any training, trials (in this process and in --jobs helper
processes that join it), then the results and the winner trained again and tested once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch
from tqdm import tqdm

from blitz.config.loading import read_settings_file
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.training.context import Log, silent
from blitz.training.rundir import RunDir
from blitz.tuning.job import Job, Result, Tested, check_pruner, with_validation
from blitz.tuning.page import write_page
from blitz.tuning.results import best_toml, keep_top, leaderboard, ranked, write_csv
from blitz.tuning.space import check_space
from blitz.tuning.study import (
    COUNTED,
    SAMPLERS,
    STUDY_FILE,
    TARGET,
    counted,
    default_storage,
    fail_dead_trials,
    has_study,
    open_storage,
    open_study,
    shown_url,
)
from blitz.tuning.trial import objective
from blitz.utils.locks import locked
from blitz.utils.writes import write_atomic
from blitz.workflows.runs import train_run

TESTED = "blitz_tested"  # the study's record of the winner's one test
POLL_SECONDS = 1.0  # how often the bar looks at the study while --jobs workers run trials
DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class Options:
    """How to run a study (not what it searches: that is its Job)."""

    out: Path
    trials: int | None = None  # the study's total (finished and pruned); None: as recorded, or 20
    timeout: float | None = None  # start no trial after this many seconds
    jobs: int = 1  # processes running trials at once
    storage: str | None = None  # a database URL; None: SQLite under out
    study: str = "blitz"
    resume: bool = False
    search_only: bool = False  # trials only: no results, no test (a helper, another machine)
    quiet: bool = False
    seed: int = 0  # the sampler's
    sampler: str = "tpe"  # or "random"


def check_options(opts: Options) -> None:
    """Numbers that make a study at all, before anything is opened."""
    if opts.trials is not None and opts.trials < 1:
        raise BlitzError(f"invalid --trials {opts.trials}: expected an integer >= 1")
    if opts.timeout is not None and not opts.timeout > 0:
        raise BlitzError(f"invalid --timeout {opts.timeout}: expected seconds > 0")
    if opts.sampler not in SAMPLERS:
        raise BlitzError(f"unknown search {opts.sampler!r}: choose " + ", ".join(SAMPLERS))
    if opts.jobs < 1:
        raise BlitzError(f"invalid --jobs {opts.jobs}: expected an integer >= 1")


def check_job(job: Job) -> None:
    """The space and pruner, against the settings' declarations, before any data or training."""
    check_pruner(job.pruner)
    job.config({})  # the fixed settings alone
    check_space(job.dimensions, job.fixed, job.config)


def tune(job: Job | None, opts: Options, log: Log = print) -> Result:
    """Run the study ``opts.study`` (``job`` None: resume it, taking its record)."""
    check_options(opts)
    if job is not None:
        check_job(job)
    url = opts.storage or default_storage(opts.out)
    if opts.storage is None and opts.resume and not (opts.out / STUDY_FILE).is_file():
        raise BlitzError(f"no study in {opts.out} to resume ({STUDY_FILE} is not there)")
    if opts.storage is None:
        opts.out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    exists = has_study(storage, opts.study)
    if opts.resume and not exists:
        raise BlitzError(
            f"no study {opts.study!r} in {shown_url(url)} to resume: leave out --resume"
        )
    if exists and not opts.resume and opts.storage is None:
        raise BlitzError(
            f"{opts.out} holds a study already: continue it with --resume, or choose another --out"
        )
    if job is not None and not opts.resume:
        job = with_validation(job, log)
    seed = opts.seed + _started(storage, opts.study)
    study, job = open_study(storage, opts.study, job, seed, opts.sampler)
    if failed := fail_dead_trials(study, storage):
        log(f"{failed} trial(s) of a killed process marked failed; the study goes on")
    target = opts.trials or study.user_attrs.get(TARGET) or DEFAULT_TRIALS
    study.set_user_attr(TARGET, target)
    _run_trials(study, job, opts, url, target, log)
    if opts.search_only:
        return _result(study, opts, None, {})
    return finish(study, job, opts, log)


def _started(storage: optuna.storages.BaseStorage, name: str) -> int:
    """Trials the study has had: the sampler's seed moves on with them, so that a resumed or
    joining process does not draw the same first settings again."""
    if not has_study(storage, name):
        return 0
    return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))


def _run_trials(
    study: optuna.Study, job: Job, opts: Options, url: str, target: int, log: Log
) -> None:
    """Trials until the study has ``target`` finished or pruned ones (all processes counted):
    here, or with --jobs J in J worker processes while this one shows their progress."""
    remaining = target - counted(study)
    if remaining <= 0:
        return
    # a bar on a terminal; in a log file (disable=None: no terminal), a line per trial instead
    bar = tqdm(total=target, initial=counted(study), unit="trial", desc="tune",
               disable=True if opts.quiet else None, dynamic_ncols=True)  # fmt: skip
    lines = log if bar.disable and not opts.quiet else None
    try:
        if opts.jobs > 1 and remaining > 1:
            _in_workers(study, opts, url, target, min(opts.jobs, remaining), bar, log, lines)
            return
        stop = optuna.study.MaxTrialsCallback(target, states=COUNTED)
        study.optimize(objective(job, opts.out), n_trials=remaining, timeout=opts.timeout,
                       callbacks=[stop, lambda study, _: _show(study, bar, target, lines)],
                       catch=(BlitzError,))  # fmt: skip
    finally:
        bar.close()


def _show(study: optuna.Study, bar: tqdm, target: int, lines: Log | None = None) -> None:
    """The bar: trials counted so far (every process's), and the best; or, given ``lines``
    (no terminal), a line each time the count grows."""
    now, best = min(counted(study), target), ranked(study.get_trials(deepcopy=False))
    shown = f"best {100 * float(best[0].value or 0):.2f} % (trial {best[0].number})" if best else ""
    if lines is not None and now > bar.n:
        lines(f"tune: {now} of {target} trials" + (f", {shown}" if shown else ""))
    bar.n = now
    if shown:
        bar.set_postfix_str(shown)
    bar.refresh()


def _in_workers(
    study: optuna.Study,
    opts: Options,
    url: str,
    target: int,
    count: int,
    bar: tqdm,
    log: Log,
    lines: Log | None,
) -> None:
    helpers = _start_helpers(opts, url, target, count)
    try:
        while any(process.poll() is None for process, _ in helpers):
            _show(study, bar, target, lines)
            time.sleep(POLL_SECONDS)
        _show(study, bar, target, lines)
        _wait(helpers, log)
    finally:
        _stop(helpers)


def _start_helpers(opts: Options, url: str, target: int, count: int) -> list[tuple]:
    """``count`` processes that join the study (``blitz tune --resume --search-only``), the
    cores divided between them: each trial is one process's, so trials stay as reproducible as
    single runs (threads would share torch's global seed)."""
    helpers = []
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // opts.jobs))}
    for k in range(1, count + 1):
        cmd = [sys.executable, "-m", "blitz", "tune", "--resume", "--search-only", "--quiet",
               "--out", str(opts.out), "--storage", url, "--study", opts.study,
               "--trials", str(target), "--search-seed", str(opts.seed + 1000 * k),
               "--search", opts.sampler]  # fmt: skip
        if opts.timeout:
            cmd += ["--timeout", str(opts.timeout)]
        errors = tempfile.TemporaryFile()  # noqa: SIM115  (closed by _stop, after the helper)
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        helpers.append((process, errors))
    return helpers


def _wait(helpers: list[tuple], log: Log) -> None:
    for process, errors in helpers:
        if process.wait() != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()[-500:]
            log(f"blitz: a --jobs helper process stopped ({process.returncode}): {said}")


def _stop(helpers: list[tuple]) -> None:
    """Interrupted: the helpers stop too (each saves its trial's checkpoint and goes)."""
    for process, errors in helpers:
        if process.poll() is None:
            process.terminate()
            process.wait()
        errors.close()


def finish(study: optuna.Study, job: Job, opts: Options, log: Log) -> Result:
    """tune.csv, best.toml, the winner trained again and tested once, tune.html; the run
    directories of all but the top few trials removed."""
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / ".finish.lock"):  # two processes of one --out finish one at a time
        trials = study.get_trials(deepcopy=False)
        files = {"csv": out / "tune.csv", "page": out / "tune.html", "best": out / "best.toml"}
        write_csv(files["csv"], trials, job)
        top = ranked(trials)
        if not top:
            raise BlitzError(_none_finished(trials, files["csv"], job))
        best = top[0]
        write_atomic(files["best"], best_toml(job, best, len(trials)).encode())
        tested = _test_winner(study, job, best.number, files["best"], out, log)
        keep_top(trials, out)
        write_page(files["page"], study, job, tested)
        write_csv(files["csv"], trials, job)  # which runs were kept
    for line in leaderboard(study, tested, job.figure):
        log(line)
    log(f"wrote {files['csv']}, {files['page']}, {files['best']} (blitz train --config "
        f"{files['best']} replays the winner)")  # fmt: skip
    return _result(study, opts, tested, files)


def _test_winner(
    study: optuna.Study, job: Job, number: int, toml: Path, out: Path, log: Log
) -> Tested:
    """Train the winner again from best.toml (as ``blitz train --config`` would) and test it:
    the study's one look at the test set. A winner already tested is not tested again."""
    run_dir = RunDir(out / "best")
    recorded = study.user_attrs.get(TESTED)
    if recorded and recorded["trial"] == number and run_dir.finished:
        return Tested(**{**recorded, "retrained": False})
    log(f"training the winner (trial {number}) again from {toml} and testing it once")
    cfg = build_config("best", {}, read_settings_file(toml))
    with run_dir.lock():
        run_dir.prepare(overwrite=True)
        metrics = train_run(cfg, run_dir, silent, True, time.perf_counter())
    if metrics is None or metrics.validation is None:  # pragma: no cover - tune ensured both
        raise AssertionError("the winner's run has no validation figures")
    validation, test = metrics.validation[job.figure_key], job.test_score(metrics)
    tested = Tested(number, str(run_dir.path), validation, test, figure=job.figure)
    study.set_user_attr(TESTED, {k: v for k, v in asdict(tested).items() if k != "retrained"})
    return tested


def _none_finished(trials: list, csv_path: Path, job: Job) -> str:
    errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
    first = f" (the first error: {errors[0]})" if errors else ""
    return (
        f"no trial finished: {len(trials)} trials, none with a validation {job.figure}{first}; "
        f"see {csv_path}. Loosen the space or give a larger budget (--max-steps)"
    )


def _result(study: optuna.Study, opts: Options, tested: Tested | None, files: dict) -> Result:
    top = ranked(study.get_trials(deepcopy=False))
    best = top[0] if top else None
    return Result(
        out=opts.out,
        trials=len(study.trials),
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_validation=float(best.value) if best and best.value is not None else None,
        tested=tested,
        files=files,
    )
