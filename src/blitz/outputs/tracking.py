"""MLflow tracking (``--mlflow``, the optional ``blitz[mlflow]`` extra): one blitz run is one
MLflow run, with the settings as params, the loop's rows and epochs as metrics, and the results
and files at the end. ``mlflow.json`` in the run directory names the MLflow run, so that
``--resume`` continues it. MLflow is imported only here, and only when a run asks for it."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from blitz.config.loading import flatten, parse_nested
from blitz.config.types import is_number
from blitz.errors import BlitzError
from blitz.files import read_regular
from blitz.training.rundir import RunDir
from blitz.utils.signals import StopRequested
from blitz.utils.writes import write_json

EXPERIMENT = "blitz"
MAX_RECORD_BYTES = 4096
MAX_URI = 1000
RUN_ID = re.compile(r"[\w-]{1,64}")
PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch
ARTIFACTS = ("config", "sets", "csv", "metrics", "report", "model")  # RunDir's names
NOT_METRICS = ("seed", "format")  # numbers in metrics.json that measure nothing
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
# a first request that cannot reach a server fails in seconds, not after MLflow's ~4 minutes
QUICK = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
CHECK_URI = "check the URI given to --mlflow (is its server running?), or leave out --mlflow"
MISSING = "--mlflow needs MLflow: pip install 'blitz[mlflow]' (or leave out --mlflow)"


def default_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else MLflow's default store, ``sqlite:///mlflow.db``."""
    # MLflow's own default since its file store went into maintenance mode: the metadata in one
    # SQLite file, the artifacts in ./mlruns, both in the working directory
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


class MlflowTracker:
    """A blitz run's MLflow run. Used as a context manager, an exception ends it as FAILED
    (KILLED on Ctrl-C or a stop signal); ``finish`` ends it as FINISHED."""

    def __init__(self, client: Any, uri: str, run_id: str, run_dir: RunDir) -> None:
        self.client, self.uri, self.run_id, self.run_dir = client, uri, run_id, run_dir
        self.active = True

    @classmethod
    def start(
        cls,
        uri: str | None,
        cfg: dict[str, Any],
        run_dir: RunDir,
        resume: bool = False,
        experiment: str | None = None,
    ) -> MlflowTracker:
        """Open the MLflow run at ``uri`` (None: ``default_uri()``): a new one in ``experiment``
        (None: ``MLFLOW_EXPERIMENT_NAME``, else blitz) with ``cfg`` (``Config.to_dict()``) as
        params, or, with ``resume`` and a record in ``run_dir``, the recorded one again."""
        recorded = read_record(run_dir) if resume else None
        # never the recorded URI unasked: a run directory may come from anyone
        uri = absolute(uri or default_uri())
        if recorded and recorded["uri"] != uri:
            raise BlitzError(
                f"{run_dir.mlflow} records its MLflow run at {recorded['uri']}, not "
                f"{uri}: pass --mlflow {recorded['uri']} to continue that run, or delete "
                f"{run_dir.mlflow.name} to start a new MLflow run"
            )
        client = _client(uri)
        with _quick(), _reporting(f"cannot start MLflow tracking at {uri}", CHECK_URI):
            if recorded:
                run_id = _reopen(client, recorded["run_id"], run_dir)
            else:
                experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
                run_id = _create(client, experiment, cfg, run_dir)
        write_json(run_dir.mlflow, {"uri": uri, "run_id": run_id})
        return cls(client, uri, run_id, run_dir)

    def __str__(self) -> str:
        return f"MLflow run {self.run_id} at {self.uri}"

    def log_step(self, row: dict[str, Any], step: int) -> None:
        """A metrics.csv row (loss, accuracy, lr, images_per_s) as ``train/...`` metrics."""
        self._log(_numbers(row, "train/", ("step", "epoch")), step)

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        """An epoch's history record (train_loss, val_accuracy, ...) as ``epoch/...`` metrics."""
        self._log(_numbers(record, "epoch/", ("epoch",)), step)

    def finish(self, metrics: dict[str, Any]) -> None:
        """The results (``Metrics.to_dict()``: its numbers, and the validation figures as
        ``val/...``), the run's files, and the end of the MLflow run as FINISHED."""
        figures = _numbers(metrics, "", NOT_METRICS)
        figures.update(_numbers(metrics.get("validation") or {}, "val/", ()))
        figures.update(_calibration(metrics.get("calibration") or {}))
        # a multi-label run's mAP, F1s, subset accuracy, Hamming loss (per class: metrics.json)
        figures.update(_numbers(metrics.get("multilabel") or {}, "multilabel/", ()))
        self._log(figures, metrics.get("steps", 0))
        with self._reporting():
            for name in ARTIFACTS:
                if (path := getattr(self.run_dir, name)).is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")
        self.active = False

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> None:
        if not self.active:
            return
        with _quick(), suppress(Exception):  # the error that ended training is the one to show
            self.client.set_terminated(self.run_id, _status(error))
        self.active = False

    def _log(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in figures.items()]
        with self._reporting():
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def _reporting(self) -> AbstractContextManager[None]:
        return _reporting(
            f"MLflow tracking at {self.uri} failed",
            f"blitz train --resume {self.run_dir} continues the run (and its MLflow run) from its "
            "last checkpoint once the store works again",
        )


def _status(error: BaseException | None) -> str:
    """How a run that did not ``finish`` ended."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (KeyboardInterrupt, StopRequested)) else "FAILED"


def _numbers(values: dict[str, Any], prefix: str, skip: tuple[str, ...]) -> dict[str, float]:
    return {prefix + k: v for k, v in values.items() if k not in skip and is_number(v)}


def _calibration(record: dict[str, Any]) -> dict[str, float]:
    """``calibration/temperature`` and ``calibration/test_after/ece`` and the like."""
    figures = _numbers(record, "calibration/", ("bins",))
    for role in ("test", "validation"):
        for when, found in (record.get(role) or {}).items():
            figures.update(_numbers(found, f"calibration/{role}_{when}/", ()))
    return figures


def _client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a clear error when MLflow (or, for a database store,
    SQLAlchemy and Alembic) is not installed."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise BlitzError(MISSING) from None
    database = urlparse(uri).scheme.split("+")[0] in DATABASES
    if database and not (find_spec("sqlalchemy") and find_spec("alembic")):
        raise BlitzError(f"{MISSING}: the store {uri} needs SQLAlchemy and Alembic too")
    with _reporting(f"cannot start MLflow tracking at {uri}", CHECK_URI):
        return MlflowClient(tracking_uri=uri)


def _create(client: Any, experiment: str, cfg: dict[str, Any], run_dir: RunDir) -> str:
    """A new MLflow run in ``experiment``, tagged with the run directory, ``cfg`` as params."""
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags({"blitz.run_dir": str(run_dir.path.resolve())})  # + user, source, git
    run = client.create_run(
        _experiment_id(client, experiment), tags=tags, run_name=run_dir.path.name
    )
    params = [Param(k, str(v)) for k, v in flatten(cfg).items()]
    for first in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=params[first : first + PARAMS_PER_BATCH])
    return run.info.run_id


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    if found := client.get_experiment_by_name(name):
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another run created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _reopen(client: Any, run_id: str, run_dir: RunDir) -> str:
    """The recorded MLflow run, running again."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        run = None
    if run is None or run.info.lifecycle_stage != "active":
        raise BlitzError(
            f"{run_dir.mlflow} names MLflow run {run_id}, which its store does not hold "
            f"(deleted?): delete {run_dir.mlflow.name} to start a new MLflow run"
        )
    client.update_run(run_id, status="RUNNING")
    return run_id


def absolute(uri: str) -> str:
    """A local store named relative to the working directory, made absolute (a resumed run
    may start from another one); other URIs as they are."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    parsed = urlparse(uri)
    if parsed.scheme == "file" and not parsed.netloc:
        return Path(parsed.path).resolve().as_uri()
    return uri


def read_record(run_dir: RunDir) -> dict[str, str] | None:
    """``mlflow.json`` (None if there is none), checked: a run directory may come from anyone."""
    path = run_dir.mlflow
    if not path.exists():
        return None
    try:
        text = read_regular(path, MAX_RECORD_BYTES, follow=False).decode("utf-8")
        raw = parse_nested(json.loads, text, str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raw = None
    if not _is_record(raw):
        raise BlitzError(
            f"{path} cannot be used: it is not the uri and run_id that blitz writes; delete it "
            "to start a new MLflow run"
        )
    return raw


def _is_record(raw: Any) -> bool:
    if not isinstance(raw, dict) or set(raw) != {"uri", "run_id"}:
        return False
    uri, run_id = raw["uri"], raw["run_id"]
    short = isinstance(uri, str) and 0 < len(uri) <= MAX_URI
    return short and isinstance(run_id, str) and RUN_ID.fullmatch(run_id) is not None


@contextmanager
def _quick() -> Iterator[None]:
    """MLflow's HTTP requests fail at once while inside (unless the user set otherwise)."""
    saved = {name: os.environ.get(name) for name in QUICK}
    os.environ.update({name: saved[name] or value for name, value in QUICK.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _reporting(what: str, fix: str) -> Iterator[None]:
    """MLflow's errors (an unreachable server, a bad URI, a full disk) as a BlitzError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        reason = " ".join(str(exc).split())  # one paragraph
        raise BlitzError(f"{what} ({reason}): {fix}") from None
