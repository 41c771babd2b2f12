"""The Optuna study: its storage (SQLite under --out by default, any database Optuna takes with
--storage), TPE sampling, the pruner, and the record that makes a study resumable and shared."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from blitz.errors import BlitzError
from blitz.tuning.job import Job
from blitz.utils.locks import locked

JOB = "blitz_job"  # the study's user attribute holding its Job
TARGET = "blitz_trials"  # how many trials (finished or pruned) the study is to have
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that count towards --trials
STUDY_FILE = "study.db"


def default_storage(out: Path) -> str:
    """An SQLite file under ``out``: a killed study continues from it (--resume)."""
    return f"sqlite:///{(out / STUDY_FILE).resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: said as given, cut short
        return url[:200]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The database, reached now: a URL that cannot be is a BlitzError before any training."""
    # SQLite shared by several processes: wait for a writer, rather than fail at once
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with _creating(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # a driver missing, a host unreachable, a bad URL: all the same here
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BlitzError(
            f"cannot open the study's storage {shown_url(url)}: {reason} (--storage takes a "
            "database URL Optuna supports, e.g. sqlite:///study.db or "
            "postgresql://user@host/db, with its driver installed)"
        ) from None


@contextlib.contextmanager
def _creating(url: str) -> Iterator[None]:
    """Two processes making one new SQLite file's tables at once collide (a unique constraint
    of Optuna's schema version): they take turns, by a lock beside the file."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        yield  # no file to share, or a folder that is not there: SQLite says so
        return
    with locked(Path(database).with_name(Path(database).name + ".lock")):
        yield


def has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


SAMPLERS = ("tpe", "random")


def open_study(
    storage: optuna.storages.RDBStorage, name: str, job: Job | None, seed: int, sampler: str = "tpe"
) -> tuple[optuna.Study, Job]:
    """Create the study ``name`` with ``job``, or load it: ``job`` None takes its record (a
    resumed study); a given one must be what the study was made with (a joined one)."""
    pruner = build_pruner(job.pruner if job else _recorded(storage, name).pruner)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=build_sampler(sampler, seed),
        pruner=pruner,
        load_if_exists=True,
    )
    recorded = study.user_attrs.get(JOB)
    if recorded is None:
        if job is None:  # a study Optuna made, not blitz tune
            raise BlitzError(f"study {name!r} was not made by blitz tune: choose another --study")
        study.set_user_attr(JOB, job.to_dict())
        return study, job
    if job is not None and job.to_dict() != recorded:
        raise BlitzError(
            f"study {name!r} was made with other settings ({_difference(recorded, job.to_dict())}):"
            " give the same ones, or --resume alone to take the study's"
        )
    return study, Job.from_dict(recorded)


def _recorded(storage: optuna.storages.BaseStorage, name: str) -> Job:
    study_id = storage.get_study_id_from_name(name)
    raw = storage.get_study_user_attrs(study_id).get(JOB)
    if raw is None:
        raise BlitzError(f"study {name!r} was not made by blitz tune: choose another --study")
    return Job.from_dict(raw)


def _difference(then: dict[str, Any], now: dict[str, Any]) -> str:
    for part in ("preset", "base", "fixed", "space", "pruner"):
        if then.get(part) != now.get(part):
            return f"its {part}: {_short(then.get(part))}; now: {_short(now.get(part))}"
    return "its notes"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def build_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (Optuna's default), or random search (a baseline with the same budget)."""
    if name not in SAMPLERS:
        raise BlitzError(f"unknown sampler {name!r}: choose " + ", ".join(SAMPLERS))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(name: str) -> optuna.pruners.BasePruner:
    """median (Optuna's MedianPruner), hyperband, or none; fed each epoch's validation."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner()


def counted(study: optuna.Study) -> int:
    """Trials that count towards the study's target: finished or pruned (not failed ones)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def own_trial(trial: optuna.Trial) -> None:
    """Mark a trial as this process's, so that a later one can tell it was killed."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Trials left running by a process of this machine that is gone (killed) are failed, so
    the study goes on past them; those of other machines are left to their own processes."""
    failed = 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("host") != socket.gethostname() or _alive(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", "its process ended before it did (killed)")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed += 1
    return failed


def _alive(trial: FrozenTrial) -> bool:
    pid = trial.user_attrs.get("pid")
    if not isinstance(pid, int):
        return True  # unknown: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that number: alive
        return True
    return True
