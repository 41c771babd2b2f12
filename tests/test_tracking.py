"""MLflow tracking against a real local store (SQLite in a temporary folder), read back through
MLflow's own client; the tracker is called directly with made-up rows, no training."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from blitz.config.loading import flatten
from blitz.errors import BlitzError
from blitz.outputs.tracking import QUICK, MlflowTracker, absolute, default_uri
from blitz.training.metrics import Metrics
from blitz.training.rundir import RunDir
from blitz.utils.signals import StopRequested

# MLflow's SQL store with SQLAlchemy 2.1 (theirs to fix; users do not see DeprecationWarnings)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CFG = {"preset": "seed", "optim": {"lr": 0.2}, "model": {"options": {"widths": [16, 32]}}}
ROW = {"step": 50, "epoch": 1, "loss": 1.5, "accuracy": 0.25, "lr": 0.1, "images_per_s": 900.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (making its tables takes seconds); its artifacts go
    beside it (MLflow puts them in ./mlruns of the folder the store is first opened in)."""
    mlflow = pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    return uri, client


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Whatever a test leaves in the working directory stays out of the repository."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name in QUICK:
        monkeypatch.delenv(name, raising=False)


def new_run_dir(tmp_path, name: str = "run") -> RunDir:
    run_dir = RunDir(tmp_path / name)
    run_dir.path.mkdir()
    return run_dir


def metrics_dict() -> dict:
    return Metrics(
        test_accuracy=0.5,
        classes=["a", "b"],
        confusion_matrix=[[1, 1], [0, 2]],
        per_class_accuracy={"a": 0.5, "b": 1.0},
        train_seconds=1.5,
        steps=100,
        macro_f1=0.4,
        validation={"accuracy": 0.75, "top5_accuracy": None},
        calibration={
            "temperature": 1.5,
            "fitted_on": "validation",
            "bins": 15,
            "test": {
                "after": {"ece": 0.02, "mce": 0.1, "nll": 0.5, "brier": 0.2, "bin_counts": [1, 2]}
            },
        },  # fmt: skip
    ).to_dict()


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_a_run_logs_params_metrics_and_files(store, tmp_path):
    uri, client = store
    run_dir = new_run_dir(tmp_path)
    for path in (run_dir.config, run_dir.report, run_dir.model, run_dir.sets):
        path.write_text(path.name)
    tracker = MlflowTracker.start(uri, CFG, run_dir)
    tracker.log_step(ROW, 50)
    tracker.log_step({**ROW, "step": 100, "loss": 1.0}, 100)
    tracker.log_epoch({"epoch": 1, "train_loss": 1.2, "val_accuracy": 0.5, "seconds": 3.0}, 100)
    run_dir.write_metrics(Metrics.from_dict(metrics_dict()))
    tracker.finish(metrics_dict())

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "blitz"
    assert run.data.tags["blitz.run_dir"] == str(run_dir.path.resolve())
    params = run.data.params
    assert params["optim.lr"] == "0.2" and params["model.options.widths"] == "[16, 32]"
    assert history(client, tracker.run_id, "train/loss") == [(50, 1.5), (100, 1.0)]
    assert history(client, tracker.run_id, "epoch/val_accuracy") == [(100, 0.5)]
    final = run.data.metrics
    assert final["test_accuracy"] == 0.5 and final["macro_f1"] == 0.4 and final["val/accuracy"]
    assert final["calibration/temperature"] == 1.5 and final["calibration/test_after/ece"] == 0.02
    assert not {"top5_accuracy", "format", "seed", "train/step", "epoch/epoch"} & set(final)
    files = {f.path for f in client.list_artifacts(tracker.run_id)}
    assert files == {"config.json", "report.html", "model.pt", "sets.csv", "metrics.json"}
    assert json.loads(run_dir.mlflow.read_text())["run_id"] == tracker.run_id


def test_a_multi_label_run_logs_its_figures(store, tmp_path):
    uri, client = store
    figures = {"map": 0.9, "micro_f1": 0.8, "macro_f1": 0.7, "subset_accuracy": 0.5,
               "hamming_loss": 0.1, "thresholds": [0.4, 0.6], "per_class": {}}  # fmt: skip
    record = Metrics(test_accuracy=0.5, classes=["a", "b"], confusion_matrix=[],
                     per_class_accuracy={}, task="multi-label", multilabel=figures,
                     validation={"accuracy": 0.4, "map": 0.85}).to_dict()  # fmt: skip
    tracker = MlflowTracker.start(uri, CFG, new_run_dir(tmp_path))
    tracker.finish(record)
    final = client.get_run(tracker.run_id).data.metrics
    assert final["multilabel/map"] == 0.9 and final["multilabel/hamming_loss"] == 0.1
    assert final["val/map"] == 0.85 and final["test_accuracy"] == 0.5


@pytest.mark.slow
def test_resume_continues_the_same_mlflow_run(store, tmp_path):
    uri, client = store
    run_dir = new_run_dir(tmp_path)
    with pytest.raises(StopRequested), MlflowTracker.start(uri, CFG, run_dir) as first:
        first.log_step(ROW, 50)
        raise StopRequested("stopped", 15)
    assert client.get_run(first.run_id).info.status == "KILLED"

    again = MlflowTracker.start(uri, CFG, run_dir, resume=True)
    assert again.run_id == first.run_id
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.log_step({**ROW, "step": 100}, 100)
    again.finish(metrics_dict())
    assert [step for step, _ in history(client, again.run_id, "train/loss")] == [50, 100]


@pytest.mark.slow
def test_a_store_failing_during_training_is_a_clear_error(store, tmp_path):
    uri, client = store
    tracker = MlflowTracker.start(uri, CFG, new_run_dir(tmp_path), experiment="elsewhere")
    assert client.get_experiment_by_name("elsewhere")
    client.delete_run(tracker.run_id)  # as a colleague might, in the MLflow UI
    with pytest.raises(BlitzError, match=f"MLflow tracking at {uri} failed .*--resume"):
        tracker.log_step(ROW, 50)


@pytest.mark.slow
def test_a_new_run_is_a_new_mlflow_run(store, tmp_path):
    """Without --resume (an --overwrite), or resuming a run that had no MLflow run."""
    uri, _ = store
    run_dir = new_run_dir(tmp_path)
    first = MlflowTracker.start(uri, CFG, run_dir)
    assert MlflowTracker.start(uri, CFG, run_dir).run_id != first.run_id
    unrecorded = new_run_dir(tmp_path, "b")
    started = MlflowTracker.start(uri, CFG, unrecorded, resume=True)
    assert json.loads(unrecorded.mlflow.read_text())["run_id"] == started.run_id


@pytest.mark.slow
@pytest.mark.parametrize(
    "error, status",
    [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (None, "FINISHED")],
)
def test_how_training_ended_is_the_run_status(store, tmp_path, error, status):
    uri, client = store
    expected = pytest.raises(type(error)) if error else contextlib.nullcontext()
    with expected, MlflowTracker.start(uri, CFG, new_run_dir(tmp_path)) as tracker:
        if error:
            raise error
    assert client.get_run(tracker.run_id).info.status == status


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"uri": "sqlite:///x.db"}),
        json.dumps({"uri": "sqlite:///x.db", "run_id": "../../../etc"}),
        json.dumps({"uri": 7, "run_id": "abc"}),
        json.dumps({"uri": "x" * 5000, "run_id": "abc"}),
        json.dumps({"uri": "sqlite:///x.db", "run_id": "abc", "more": 1}),
    ],
)
def test_a_bad_record_is_a_clear_error(tmp_path, content):
    run_dir = new_run_dir(tmp_path)
    run_dir.mlflow.write_text(content)
    with pytest.raises(BlitzError, match="mlflow.json cannot be used.*delete it"):
        MlflowTracker.start(None, CFG, run_dir, resume=True)


@pytest.mark.slow
def test_a_record_at_another_uri_or_of_a_lost_run_is_a_clear_error(store, tmp_path):
    uri, _ = store
    run_dir = new_run_dir(tmp_path)
    record = run_dir.mlflow
    record.write_text(json.dumps({"uri": uri, "run_id": "0" * 32}))
    for other in ("sqlite:///other.db", None):  # the recorded URI is never used unasked
        with pytest.raises(BlitzError, match=f"records its MLflow run at {uri}, not .*--mlflow"):
            MlflowTracker.start(other, CFG, run_dir, resume=True)
    with pytest.raises(BlitzError, match="which its store does not hold .*delete mlflow.json"):
        MlflowTracker.start(uri, CFG, run_dir, resume=True)


@pytest.mark.slow
def test_an_unreachable_server_is_a_clear_error(store, tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BlitzError, match=f"cannot start MLflow tracking at {uri} .*--mlflow"):
        MlflowTracker.start(uri, CFG, new_run_dir(tmp_path))
    assert not set(QUICK) & set(os.environ)  # MLflow's own retries for the rest of the run


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    for name in {n for n in sys.modules if n.split(".")[0] == "mlflow"} | {"mlflow"}:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(BlitzError, match=r"--mlflow needs MLflow: pip install 'blitz\[mlflow\]'"):
        MlflowTracker.start(None, CFG, new_run_dir(tmp_path))


@pytest.mark.slow
def test_a_database_store_without_sqlalchemy_says_what_to_install(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "alembic", None)
    with pytest.raises(BlitzError, match=r"pip install 'blitz\[mlflow\]'.*SQLAlchemy"):
        MlflowTracker.start("sqlite:///x.db", CFG, new_run_dir(tmp_path))


@pytest.mark.slow
@pytest.mark.subprocess
def test_blitz_imports_mlflow_only_when_a_run_asks_for_it():
    modules = "blitz.cli, blitz.workflows.runs, blitz.outputs.tracking"
    code = f"import sys, {modules}; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_local_stores_are_made_absolute(tmp_path, monkeypatch):
    here = tmp_path.resolve()
    assert absolute("sqlite:///m.db") == f"sqlite:///{here}/m.db"
    assert absolute("file:./mlruns") == (here / "mlruns").as_uri()
    for uri in ("sqlite:////abs/m.db", "http://host:5000", "databricks", "mlruns"):
        assert absolute(uri) == uri
    assert default_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://host:5000")
    assert default_uri() == "http://host:5000"


def test_settings_are_flattened_to_dotted_names():
    assert flatten(CFG) == {"preset": "seed", "optim.lr": 0.2, "model.options.widths": [16, 32]}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_and_resumed_training_run_is_one_mlflow_run(store, tmp_path):
    """End to end: ``blitz train --mlflow URI`` is stopped by SIGTERM, resumed with the same
    ``--mlflow URI``, and its MLflow run holds the settings, the steps, the final metrics and
    the run's files, read back through MLflow's client."""
    from test_faults import start_blitz, wait_all

    uri, client = store
    out, cache = tmp_path / "run", tmp_path / "cache"
    train = ["train", "--preset", "seed", "--data", "shapes:400", "--batch-size", "8"]
    train += ["--lr", "0.01", "--epochs", "2", "--checkpoint-every", "20", "--quiet"]
    args = [*train, "--mlflow", uri, "--out", out]
    [(stopped, _)] = wait_all([start_blitz(args, cache, harness=["step", 60, 15, 1])])
    assert stopped == 128 + 15  # SIGTERM: checkpointed, stopped
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    resume = ["train", "--resume", out, "--quiet", "--mlflow", uri]
    [(resumed, err)] = wait_all([start_blitz(resume, cache)])
    assert resumed == 0, err
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id  # the same run
    run = client.get_run(run_id)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.01"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert max(steps) == metrics["steps"] and 50 in steps
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "config.json", "model.pt"} <= files
