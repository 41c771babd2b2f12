"""Faults during training: killed, interrupted, out of disk, diverging. A run killed at any point
and resumed ends exactly (bitwise) where the same run left alone ends."""

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading

import pytest
import torch

from blitz import cli
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.training import progress, resume, step
from blitz.training.checkpoint import load_checkpoint
from blitz.training.progress import CSV_FIELDS, Progress, read_metrics_csv
from blitz.training.rundir import RunDir
from blitz.workflows.runs import train_run
from conftest import folder_files, png_bytes, write_folder

# 200 shapes in batches of 16: 13 steps an epoch, 3 epochs, a checkpoint every 5 steps
TRAIN = [
    "train",
    "--preset",
    "seed",
    "--data",
    "shapes:220",  # 200 train and 20 validation images (10 %): 13 steps per epoch
    "--val-fraction",
    "0.1",
    "--batch-size",
    "16",
    "--epochs",
    "3",
    "--lr",
    "0.05",
    "--set",
    "train.eval_every_epoch=true",
    "--checkpoint-every",
    "5",
    "--quiet",
]
STEPS = 39

# Runs blitz after arranging a fault: KIND AT SIGNUM COUNT BLITZ_ARGS... sends signal SIGNUM
# COUNT times to the process at the start of step AT (KIND step), or while it writes its ATth
# checkpoint, with the temporary file complete but not yet renamed (KIND writing).
HARNESS = """
import os, sys
from blitz import cli
from blitz.training import step
kind, at, signum, count = sys.argv[1], *map(int, sys.argv[2:5])
calls = [0]
def fault(original, counts=lambda *args: True):
    def wrapper(*args, **kwargs):
        calls[0] += counts(*args)
        if calls[0] == at:
            for _ in range(count):
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)
    return wrapper
if kind == "writing":  # os.replace also renames config.json: count checkpoints only
    os.replace = fault(os.replace, lambda src, dst: str(dst).endswith("last.pt"))
else:
    step.compute_loss = fault(step.compute_loss)
sys.exit(cli.main(sys.argv[5:]))
"""


def start_blitz(args, cache, harness=None):
    env = {
        **os.environ,
        "BLITZ_DATA": str(cache),
        "OMP_NUM_THREADS": "1",
    }  # same threads: same sums
    prefix = ["-c", HARNESS, *map(str, harness)] if harness else ["-m", "blitz"]
    command = [sys.executable, *prefix, *map(str, args)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(command, env=env, text=True, **pipes)


def wait_all(processes):
    """Wait for processes started together (they share the cores: faster than one by one)."""
    errors = [p.communicate()[1] for p in processes]
    return [(p.returncode, err) for p, err in zip(processes, errors)]


def finished(out):
    """Weights and metrics of a finished run, minus the timings."""
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("train_seconds", "eval_seconds", "compile_seconds", "total_seconds"):
        del metrics[key]
    for record in metrics["history"]:
        del record["seconds"]
    return load_checkpoint(out / "model.pt").state_dict, metrics


def assert_same_run(a, b):
    (weights_a, metrics_a), (weights_b, metrics_b) = finished(a), finished(b)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a == metrics_b


# Kill points: two steps drawn at random (seeded, so a failure can be replayed) after the first
# checkpoint, and one in the middle of writing the 3rd checkpoint; then a SIGTERM at step 12.
FAULTS = {
    **{
        f"SIGKILL at step {at}": ["step", at, signal.SIGKILL, 1]
        for at in random.Random(7).sample(range(7, STEPS + 1), 2)
    },
    "SIGKILL while writing checkpoint 3": ["writing", 3, signal.SIGKILL, 1],
    "SIGTERM at step 12": ["step", 12, signal.SIGTERM, 1],
    "Ctrl-C twice at step 14": ["step", 14, signal.SIGINT, 2],
}
EXIT = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 130}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run left alone, and each faulty run: how it stopped, and its directory once resumed."""
    root = tmp_path_factory.mktemp("faults")
    cache = root / "cache"
    outs = {name: root / f"run{i}" for i, name in enumerate(FAULTS)}
    stopped = wait_all(
        [start_blitz([*TRAIN, "--out", root / "alone"], cache)]
        + [start_blitz([*TRAIN, "--out", outs[n]], cache, harness=h) for n, h in FAULTS.items()]
    )
    assert stopped[0][0] == 0, stopped[0][1]
    steps = {n: load_checkpoint(o / "last.pt").training.step for n, o in outs.items()}
    early = {n: (o / "metrics.json").exists() for n, o in outs.items()}
    half_written = {n: any(o.glob(".last.pt.*.tmp")) for n, o in outs.items()}
    resumed = wait_all(
        [start_blitz(["train", "--resume", o, "--quiet"], cache) for o in outs.values()]
    )
    return root / "alone", {
        name: {
            "out": outs[name],
            "stopped": stopped[i + 1],
            "step": steps[name],
            "finished_early": early[name],
            "half_written": half_written[name],
            "resumed": resumed[i],
        }
        for i, name in enumerate(FAULTS)
    }


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_stopped_and_resumed_run_ends_bitwise_identical(runs, fault):
    reference, faulty = runs
    run = faulty[fault]
    status, err = run["stopped"]
    assert status == EXIT[FAULTS[fault][2]], err
    assert not run["finished_early"]  # a stopped run does not look finished
    assert 0 < run["step"] < STEPS
    assert run["resumed"][0] == 0, run["resumed"][1]
    assert_same_run(reference, run["out"])
    assert not list(run["out"].glob("*.tmp"))
    # metrics.csv keeps the rows before the restart and has each step once; the row that spans
    # the restart sums the steps on both sides, as if never stopped (images/s is a new clock's)
    rows, expected = (read_metrics_csv(d / "metrics.csv") for d in (run["out"], reference))
    assert [r["step"] for r in rows] == [r["step"] for r in expected] and len(rows) >= 3
    for row, want in zip(rows, expected):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5), row["step"]
        assert row["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9), row["step"]


@pytest.mark.slow
def test_a_half_written_checkpoint_is_ignored(runs):
    run = runs[1]["SIGKILL while writing checkpoint 3"]
    assert run["half_written"] and run["step"] == 10  # checkpoint 2 was used, then replaced


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(runs):
    run = runs[1]["SIGTERM at step 12"]
    assert f"blitz train --resume {run['out']}" in run["stopped"][1]
    assert "Traceback" not in run["stopped"][1]
    assert run["step"] == 12


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_keeping_the_last_checkpoint(runs):
    run = runs[1]["Ctrl-C twice at step 14"]
    assert "blitz: interrupted" in run["stopped"][1] and "Traceback" not in run["stopped"][1]
    assert run["step"] == 13  # the end of epoch 1: none was written on the way out


def small_config(tmp_path, **overrides):
    settings = {
        "data.source": "shapes:200",
        "train.batch_size": 16,
        "train.max_steps": 20,
        "train.checkpoint_every": 5,
        "train.log_every": 0,
        "optim.lr": 0.05,
    }
    return build_config("seed", {**settings, **overrides})


def quiet_run(cfg, out):
    RunDir(out).prepare(overwrite=False)
    return train_run(cfg, RunDir(out), log=lambda message: None, quiet=True, started=0.0)


@pytest.mark.slow
def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    real_save, calls = torch.save, [0]

    def save_until_the_disk_fills(payload, f):
        calls[0] += 1
        if calls[0] == 3:  # the checkpoint at step 15: half written, then no space
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(payload, f)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    out = tmp_path / "run"
    with pytest.raises(BlitzError, match="No space left on device; the previous checkpoint is"):
        quiet_run(small_config(tmp_path), out)
    assert load_checkpoint(out / "last.pt").training.step == 10
    assert not list(out.glob("*.tmp")) and not (out / "metrics.json").exists()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk.set()`` fills the disk for metrics.csv and TensorBoard: their flushes (and
    so their closes) raise ENOSPC from then on."""
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")
    full = threading.Event()

    def no_space():
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullFile(io.BufferedWriter):
        def flush(self):
            no_space()
            super().flush()

    real_flush = record_writer.RecordWriter.flush

    def open_full(path):  # metrics.csv is written on the full disk
        return FullFile(io.FileIO(path, "w"))

    monkeypatch.setattr(progress, "open_new", open_full)
    monkeypatch.setattr(record_writer.RecordWriter, "flush", lambda w: no_space() or real_flush(w))
    return full


def test_disk_full_at_a_checkpoint_is_its_one_error_though_the_logs_cannot_close(
    tmp_path, monkeypatch, full_disk
):
    real_save, calls = torch.save, [0]

    def save_until_the_disk_fills(payload, f):
        calls[0] += 1
        if calls[0] == 3:
            full_disk.set()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(payload, f)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    # the checkpoint's error, not an OSError of closing the logs after it
    with pytest.raises(BlitzError, match="checkpoint .* No space left on device"):
        quiet_run(small_config(tmp_path, **{"train.tensorboard": True}), tmp_path / "run")


def test_logs_that_cannot_be_written_are_one_clear_error(tmp_path, full_disk):
    cfg = small_config(tmp_path, **{"train.tensorboard": True})
    out = RunDir(tmp_path)
    logs = [Progress(cfg, print, True, out) for _ in range(3)]
    full_disk.set()
    no_space = "cannot write {}: No space left on device"
    with pytest.raises(BlitzError, match=no_space.format(out.csv)):
        logs[0].csv.write(dict.fromkeys(CSV_FIELDS, 1))
    with pytest.raises(BlitzError, match=no_space.format(out.csv)):
        logs[1].close()  # a finished run's last rows: said
    logs[2].close(failed=True)  # a failed run's: its own failure is what is said
    with pytest.raises(BlitzError, match=no_space.format(out.tensorboard)):
        Progress(cfg, print, True, out)  # TensorBoard's first event


def test_non_finite_loss_stops_names_step_and_rate_and_keeps_the_good_checkpoint(
    tmp_path, monkeypatch
):
    real_loss, calls = step.compute_loss, [0]

    def diverge_at_step_8(*args):
        calls[0] += 1
        return real_loss(*args) * (float("nan") if calls[0] == 8 else 1.0)

    monkeypatch.setattr(step, "compute_loss", diverge_at_step_8)
    out = tmp_path / "run"
    message = r"NaN or infinite at step 8 \(learning rate 0\.05\).*--lr 0\.005.*\(step 5\)"
    with pytest.raises(BlitzError, match=message):
        quiet_run(small_config(tmp_path), out)
    kept = load_checkpoint(out / "last.pt")
    assert kept.training.step == 5
    assert all(torch.isfinite(t).all() for t in kept.state_dict.values())
    assert not (out / "metrics.json").exists()


@pytest.mark.slow
def test_best_checkpoint_is_the_epoch_with_the_best_accuracy(runs):
    out, _ = runs
    history = finished(out)[1]["history"]
    best = load_checkpoint(out / "best.pt").training.train_state
    assert best["best_accuracy"] == max(r["val_accuracy"] for r in history)
    assert best["history"][-1]["val_accuracy"] == best["best_accuracy"]


def blitz_in_process(capsys, *args):
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "0.1"], "drop --lr"),
        (["--set", "optim.lr=0.1", "--out", "x"], "drop --set, --out"),
        (["--preset", "seed"], "drop --preset"),
    ],
)
def test_resume_refuses_changed_settings(capsys, tmp_path, extra, message):
    status, err = blitz_in_process(capsys, "train", "--resume", tmp_path, *extra)
    assert status == 2 and message in err and "saved in it" in err


@pytest.mark.slow
def test_resume_needs_an_unfinished_run_with_a_checkpoint(capsys, tmp_path, runs):
    finished_run, _ = runs
    status, err = blitz_in_process(capsys, "train", "--resume", finished_run)
    assert status == 2 and "finished run: there is nothing to resume" in err
    (started := tmp_path / "started").mkdir()  # a run refused before its first checkpoint
    (started / "config.json").write_text("{}")
    status, err = blitz_in_process(capsys, "train", "--resume", started)
    assert status == 2 and "no checkpoint to resume" in err and "--overwrite" in err
    (photos := tmp_path / "photos").mkdir()  # never told to --overwrite a folder of photos
    (photos / "cat.png").write_bytes(b"")
    for folder, held in ((photos, " (it holds cat.png, ...)"), (tmp_path / "gone", "")):
        status, err = blitz_in_process(capsys, "train", "--resume", folder)
        assert status == 2 and f"{folder} is not a run directory{held}: --resume takes" in err
        assert "--overwrite" not in err


def test_an_unfinished_run_is_not_overwritten_by_accident(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(BlitzError, match="unfinished run: continue it with blitz train --resume"):
        RunDir(out).prepare(overwrite=False)
    RunDir(out).prepare(overwrite=True)
    assert not (out / "last.pt").exists()


def test_overwriting_a_run_removes_its_model_and_exports_and_keeps_other_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    old = ["metrics.json", "model.pt", "best.pt", "model.onnx", "model.onnx.json"]
    for name in [*old, "notes.txt"]:
        (out / name).write_bytes(b"old")
    (out / "model.d").mkdir()  # a folder of that name is not an export: left alone
    RunDir(out).prepare(overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.d", "notes.txt"]


@pytest.mark.slow
def test_resume_and_eval_refuse_a_checkpoint_for_other_classes_or_model(
    tmp_path, capsys, monkeypatch
):
    folder = write_folder(tmp_path / "fruit", folder_files())
    out = tmp_path / "run"
    cfg = small_config(tmp_path, **{"data.source": str(folder), "train.max_steps": 0})
    with monkeypatch.context() as patch:  # as if it had been killed after its last checkpoint
        patch.setattr(RunDir, "drop_resume_point", lambda self: None)
        quiet_run(cfg, out)
    (out / "metrics.json").unlink()
    durian = png_bytes((9, 9, 9))
    write_folder(folder, {"train/durian/x.png": durian, "test/durian/x.png": durian})
    status, err = blitz_in_process(capsys, "train", "--resume", out, "--quiet")
    assert status == 2 and "durian" in err and "same classes" in err
    ckpt = load_checkpoint(out / "model.pt")
    ckpt.model.classes.append("durian")  # 4 classes, weights for 3
    torch.save(ckpt.to_dict(), out / "model.pt")
    status, err = blitz_in_process(capsys, "eval", out)
    assert status == 2 and "do not fit" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(("minutes", "saved_at"), [(0, [3]), (1, [1, 2, 3, 3])])
def test_checkpoints_by_the_clock(tmp_path, monkeypatch, minutes, saved_at):
    ticks = iter(range(0, 10**6, 100))  # a clock that moves 100 s each time it is read
    monkeypatch.setattr(resume.time, "monotonic", lambda: next(ticks))
    steps, real_save = [], RunDir.save_model

    def record(run_dir, ckpt, name="model"):
        if ckpt.training is not None:  # a training checkpoint, not the final model.pt
            steps.append(ckpt.training.step)
        real_save(run_dir, ckpt, name)

    monkeypatch.setattr(RunDir, "save_model", record)
    overrides = {"train.max_steps": 3, "train.checkpoint_every": 0}
    quiet_run(
        small_config(tmp_path, **overrides, **{"train.checkpoint_minutes": minutes}), tmp_path / "r"
    )
    assert steps == saved_at
