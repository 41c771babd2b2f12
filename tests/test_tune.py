"""blitz tune: bad input refused before any training (fast); a tiny study on generated data,
pruning, the test set never read by a trial, a killed study resumed, two processes on one
SQLite study, and the best settings replayed (slow)."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

import blitz
from blitz.config.loading import read_settings_file
from blitz.errors import BlitzError

optuna = pytest.importorskip("optuna")

SPACE = {"lr": {"log": [0.001, 0.05]}, "label-smoothing": {"uniform": [0.0, 0.2]}}
SPACE_TOML = """[space]
lr = { log = [0.001, 0.05] }
"optim.label_smoothing" = { uniform = [0, 0.2] }
"""
# a few steps a trial: 180 training images (20 split off for validation), 2 steps an epoch
TINY = {"max_steps": 6, "batch_size": 90, "epochs": 3}
TINY_FLAGS = ["--preset", "seed", "--max-steps", "6", "--batch-size", "90", "--epochs", "3"]


@pytest.fixture
def no_training(monkeypatch):
    """Bad input must be refused before any training: a trial here fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a trial trained")

    monkeypatch.setattr("blitz.tuning.trial.train_run", refuse)
    monkeypatch.setattr("blitz.tuning.search.train_run", refuse)


def tune_tiny(out: Path, data: str = "shapes:200", **kwargs):
    kwargs = {"space": SPACE, "trials": 3, "quiet": True, **TINY, **kwargs}
    return blitz.tune(data, "seed", out=out, **kwargs)


# --- bad input: clear errors before any training ---------------------------------------------


@pytest.mark.parametrize(
    "space, message",
    [
        ({}, "empty"),
        ({"lr": {"log": [0.1, 0.01]}}, "low must be below high"),
        ({"lr": {"log": [0.1, 0.1]}}, "single value"),
        ({"lr": {"log": [0, 0.1]}}, "log-uniform needs low > 0"),
        ({"learning-rate": {"log": [0.01, 0.1]}}, "'learning-rate' is not a setting"),
        ({"lr": {"log": [0.01, 0.1]}, "optim.lr": [0.1, 0.2]}, "both set optim.lr"),
        ({"label-smoothing": {"uniform": [0.0, 1.5]}}, "goes out of range"),
        ({"epochs": {"uniform": [1, 3]}}, "use int"),
        ({"optimizer": {"int": [1, 3]}}, "use choice"),
        ({"optimizer": ["sgd", "lion"]}, "goes out of range"),
        ({"batch-size": ["64"]}, "nothing to choose"),
        ({"lr": 0.1}, "expected one of log, uniform, int or choice"),
        ({"data.val_fraction": {"uniform": [0.1, 0.2]}}, "cannot be searched"),
    ],
)
def test_bad_space_is_refused_before_training(tmp_path, no_training, space, message):
    with pytest.raises(BlitzError, match=message):
        tune_tiny(tmp_path / "study", space=space)
    assert not (tmp_path / "study" / "trials").exists()


def test_a_setting_both_fixed_and_searched_is_refused(tmp_path, no_training):
    with pytest.raises(BlitzError, match="both fixed .* and in the search space"):
        tune_tiny(tmp_path / "study", lr=0.01)


def test_the_default_space_leaves_out_fixed_settings_and_can_be_emptied(tmp_path, no_training):
    from blitz.models.configs import build_config
    from blitz.tuning.space import default_space

    space = default_space(build_config("fast-cpu"), {"optim.lr": 0.1})
    assert "optim.lr" not in space and "optim.weight_decay" in space
    assert "train.epochs" not in space  # fast-cpu caps its steps: epochs would be noise
    assert "train.epochs" in default_space(build_config("seed"), {})
    every = {key: dim.values[0] for key, dim in default_space(build_config("seed"), {}).items()}
    with pytest.raises(BlitzError, match="search space is empty"):
        blitz.tune("shapes:200", "seed", out=tmp_path / "s", set=every)


def test_space_file_is_read_with_option_and_setting_names(tmp_path):
    from blitz.tuning.space import read_space

    path = tmp_path / "space.toml"
    path.write_text(SPACE_TOML + "[space.train]\nbatch_size = [32, 64]\n")
    space = read_space(path)
    assert set(space) == {"optim.lr", "optim.label_smoothing", "train.batch_size"}
    assert space["optim.lr"].describe() == "log-uniform in [0.001, 0.05]"
    path.write_text("[other]\nlr = 1\n")
    with pytest.raises(BlitzError, match="no \\[space\\] table"):
        read_space(path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"trials": 0}, "invalid --trials 0"),
        ({"timeout": 0}, "invalid --timeout"),
        ({"jobs": 0}, "invalid --jobs 0"),
        ({"pruner": "asha"}, "unknown pruner 'asha'"),
        ({"search": "grid"}, "unknown search 'grid'"),
        ({"storage": "sqlite:///TMP/missing/study.db"}, "cannot open the study's storage"),
        ({"storage": "nosuchdb://user:secret@host/db"}, "cannot open the study's storage"),
    ],
)
def test_bad_options_are_refused_before_training(tmp_path, no_training, options, message):
    options = {k: v.replace("TMP", str(tmp_path)) if k == "storage" else v
               for k, v in options.items()}  # fmt: skip
    with pytest.raises(BlitzError, match=message) as caught:
        tune_tiny(tmp_path / "study", **options)
    assert "secret" not in str(caught.value)  # a password is never echoed
    assert not (tmp_path / "missing").exists()  # nothing made where the user pointed


def test_resume_needs_a_study_and_takes_no_settings(tmp_path, no_training):
    with pytest.raises(BlitzError, match="no study in .* to resume"):
        blitz.tune(out=tmp_path / "study", resume=True)
    assert not (tmp_path / "study").exists()
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(BlitzError, match="no study 'blitz' .* to resume"):
        blitz.tune(out=tmp_path / "study", resume=True, storage=url)
    with pytest.raises(BlitzError, match="drop data or settings"):
        blitz.tune(out=tmp_path / "study", resume=True, max_steps=5)


def test_a_study_is_not_started_over_nor_joined_with_other_settings(tmp_path, no_training):
    out = tmp_path / "study"
    out.mkdir()
    url = f"sqlite:///{out / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="blitz", storage=url)
    with pytest.raises(BlitzError, match="holds a study already: continue it with --resume"):
        tune_tiny(out)
    study.set_user_attr("blitz_job", {"preset": "fast-cpu", "base": None, "fixed": {},
                                      "space": {}, "pruner": "median", "notes": []})  # fmt: skip
    with pytest.raises(BlitzError, match="made with other settings \\(its preset"):
        tune_tiny(tmp_path / "elsewhere", storage=url)


def test_the_command_line_takes_train_options_as_fixed_settings():
    from blitz.cli import build_parser
    from blitz.cli.options import overrides

    args = build_parser().parse_args(
        ["tune", "shapes:200", "--out", "x", "--lr", "0.1", "--sampler", "balanced", "--search",
         "random", "--set", "optim.ema=0.9"]
    )  # fmt: skip
    assert args.source == "shapes:200" and args.search == "random"
    assert overrides(args) == {"optim.lr": 0.1, "train.sampler": "balanced", "optim.ema": 0.9}


def test_holding_out_the_test_set_needs_a_validation_set_apart():
    import torch

    from blitz.data.dataset import ImageData, Split
    from blitz.data.roles import hold_out_test

    def split(n: int) -> Split:
        return Split(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.arange(n) % 2)

    train, val, test = split(6), split(4), split(2)
    held = hold_out_test(ImageData("d", ["a", "b"], train, test, val))
    assert held.test is val and held.val is val and held.test_is_val
    assert all(s is not test for s in held.sets().values())
    with pytest.raises(BlitzError, match="needs a validation set and a test set apart"):
        hold_out_test(ImageData("d", ["a", "b"], train, test))


@pytest.mark.slow
def test_tune_html_escapes_every_string(tmp_path):
    from blitz.tuning.job import Job
    from blitz.tuning.page import write_page
    from blitz.tuning.space import parse_space, space_to_raw

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="<b>x</b>", direction="maximize")
    choices = ["<img src=x onerror=alert(1)>", "plain"]
    study.optimize(lambda t: float(len(t.suggest_categorical("train.init", choices))), 3)
    space = space_to_raw(parse_space({"init": choices}, "test"))
    job = Job("seed", None, {"data.source": "<script>alert(1)</script>"}, space, notes=["<i>"])
    write_page(tmp_path / "tune.html", study, job, None)
    page = (tmp_path / "tune.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and page.count("<img ") >= 3


def test_trials_must_be_an_integer():
    with pytest.raises(BlitzError, match="trials must be an integer or None"):
        blitz.tune("shapes:200", out="x", trials="3")


# --- studies (they train) -----------------------------------------------------------------------


class Watched:
    """Counts every look at a set's images: the test set's, wrapped, must see none in trials."""

    reads: ClassVar[list[str]] = []
    LOOKS = ("images", "load", "images_at", "to", "subset")

    def __init__(self, split):
        object.__setattr__(self, "_split", split)

    def __getattr__(self, name):
        if name in self.LOOKS:
            Watched.reads.append(name)
        return getattr(self._split, name)

    def __len__(self):
        return len(self._split)


class PruneOdd(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial after its first epoch: pruning happens, predictably."""

    def prune(self, study, trial):
        return trial.number % 2 == 1


@pytest.mark.slow
def test_a_tiny_study_prunes_never_reads_the_test_set_and_replays_its_winner(tmp_path, monkeypatch):
    from blitz.workflows import runs

    load_data, trial_reads = runs.load_data, []

    def watched_load(*args, **kwargs):
        data = load_data(*args, **kwargs)
        trial_reads.append(len(Watched.reads))  # reads so far, as each run starts
        data.test = Watched(data.test)
        return data

    Watched.reads = []
    monkeypatch.setattr(runs, "load_data", watched_load)
    monkeypatch.setattr("blitz.tuning.study.build_pruner", lambda name: PruneOdd())
    out = tmp_path / "study"
    result = tune_tiny(out)

    # three trials and the winner's run: the test set is read in the last one only
    assert len(trial_reads) == 4 and trial_reads[-1] == 0 and Watched.reads
    rows = list(csv.DictReader((out / "tune.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "pruned", "complete"]
    assert not (out / "trials" / "0001").exists()  # a pruned trial's run is removed
    assert rows[1]["epochs"] == "1" and rows[0]["epochs"] == "3"
    assert {"optim.lr", "optim.label_smoothing"} <= set(rows[0])
    # the winner's settings replay to its validation accuracy, and were tested once
    best = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["val_accuracy"])
    assert result.best_trial == int(best["trial"])
    assert result.tested.validation == pytest.approx(float(best["val_accuracy"]))
    assert result.tested.run_dir == str(out / "best")
    metrics = blitz.load(out / "best").metrics
    assert metrics.test_set == "test" and metrics.test_accuracy == result.tested.test
    toml = read_settings_file(out / "best.toml")
    assert toml["optim"]["lr"] == result.best_params["optim.lr"]
    assert toml["data"]["val_fraction"] == 0.1 and toml["train"]["max_steps"] == 6
    page = (out / "tune.html").read_text()
    assert page.count("data:image/png;base64") >= 3 and "test once" not in page
    assert page.count("<script") == 1  # the report's own image check only


@pytest.mark.slow
def test_the_best_toml_trains_as_blitz_train_config(tmp_path):
    result = tune_tiny(tmp_path / "study", trials=2, pruner="none")
    run = blitz.train(config=tmp_path / "study" / "best.toml", out=tmp_path / "replay", quiet=True)
    assert run.metrics.validation["accuracy"] == pytest.approx(result.best_validation)


@pytest.mark.slow
def test_a_study_of_several_labels_an_image_is_scored_and_pruned_by_macro_map(tmp_path):
    reported = {}  # trial -> the figures it reported, by the share of its steps done
    pruner = optuna.pruners.NopPruner()
    pruner.prune = lambda study, trial: reported.update(
        {trial.number: dict(trial.intermediate_values)}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("blitz.tuning.study.build_pruner", lambda name: pruner)
        result = tune_tiny(tmp_path / "study", trials=2, data="multishapes:300")
    rows = list(csv.DictReader((tmp_path / "study" / "tune.csv").open()))
    assert "val_map" in rows[0] and "val_accuracy" not in rows[0]
    for row in rows:  # each trial's score is its run's validation mAP, as the pruner saw it
        run = blitz.load(row["run_dir"]).metrics
        assert float(row["val_map"]) == pytest.approx(run.multilabel["map"])
        assert reported[int(row["trial"])][100] == run.history[-1]["val_map"]
    tested = result.tested
    assert (
        tested.figure == "macro mAP"
        and "validation macro mAP" in (tmp_path / "study" / "tune.html").read_text()
    )
    best = blitz.load(tested.run_dir).metrics
    assert tested.test == best.multilabel["map"] and tested.validation == best.validation["map"]
    assert "validation macro mAP" in (tmp_path / "study" / "best.toml").read_text()


def _tune_process(out: Path, *args: str, quiet: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "blitz", "tune", "shapes:200", "--out", str(out), *TINY_FLAGS,
           "--space", str(out.parent / "space.toml"), *["--quiet"] * quiet, *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _study(url: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="blitz", storage=url)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the study made no progress"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_study_resumes_without_repeating_finished_trials(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE_TOML)
    out = tmp_path / "study"
    url = f"sqlite:///{out / 'study.db'}"
    process = _tune_process(out, "--trials", "3", "--pruner", "none")

    def one_done() -> bool:
        # read the database as it is: opening it through optuna while blitz creates it would
        # write its schema version too (the two inserts then collide: a flaky test)
        if not (out / "study.db").exists():
            return False
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)
            ) as db:
                done = db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")
                return done.fetchone()[0] >= 1
        except sqlite3.Error:  # not created yet, or being written
            return False

    _wait_for(one_done, process)
    os.kill(process.pid, signal.SIGKILL)  # no goodbye: a trial is left running
    process.communicate()
    before = {t.number: t.datetime_complete for t in _study(url).trials if t.datetime_complete}

    again = _tune_process(out, "--resume", "--search-only")
    output, errors = again.communicate(timeout=900)
    assert again.returncode == 2, errors  # it names the settings given with --resume
    assert "--resume continues" in errors
    resumed = subprocess.run(
        [sys.executable, "-m", "blitz", "tune", "--out", str(out), "--resume", "--search-only",
         "--quiet"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(url).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3  # the target, not 3 more
    for number, finished in before.items():  # finished trials were kept, not run again
        assert trials[number].datetime_complete == finished
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert all("killed" in t.user_attrs["error"] for t in killed)
    assert len(trials) == len(done) + len(killed)


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_share_one_sqlite_study(tmp_path):
    (tmp_path / "space.toml").write_text(SPACE_TOML)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = ["--storage", url, "--trials", "4", "--search-only", "--pruner", "none"]
    first = _tune_process(tmp_path / "a", *shared, quiet=False)  # its output is no terminal
    second = _tune_process(tmp_path / "b", *shared, "--search-seed", "7")
    said = []
    for process in (first, second):
        said.append(process.communicate(timeout=900))
        assert process.returncode == 0, said[-1][1]
    shown, errors = said[0]
    assert "\r" not in shown + errors  # no bar redrawn into a log file: a line per trial
    assert re.search(r"^tune: \d of 4 trials, best \d+\.\d\d % \(trial \d+\)$", shown, re.M)
    trials = _study(url).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 4 <= len(done) <= 5  # each stops once the study has 4 (one may be under way then)
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both worked on it
    assert (tmp_path / "a" / "trials").is_dir() and (tmp_path / "b" / "trials").is_dir()


@pytest.mark.slow
@pytest.mark.subprocess
def test_jobs_run_trials_in_several_processes(tmp_path):
    out = tmp_path / "study"
    tune_tiny(out, trials=4, jobs=2, search_only=True, pruner="none")
    done = _study(f"sqlite:///{out / 'study.db'}").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(done) >= 4
    workers = {t.user_attrs["pid"] for t in done}
    assert len(workers) == 2 and os.getpid() not in workers  # two worker processes
