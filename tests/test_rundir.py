"""The run directory's typed records: today's and older files load; foreign, hand-edited or
damaged ones are clear errors; one writer at a time; refused runs leave nothing behind."""

import contextlib
import errno
import json

import pytest
import torch

from blitz import cli
from blitz.errors import BlitzError
from blitz.models import create_model, list_models
from blitz.models.configs import build_config
from blitz.training import checkpoint
from blitz.training.checkpoint import Checkpoint, Training, load_checkpoint, save_checkpoint
from blitz.training.evaluate import chance_note, confusion_matrix
from blitz.training.metrics import Metrics, matrix_record
from blitz.training.rundir import RunDir, check_output
from blitz.utils.writes import write_atomic
from conftest import folder_files, png_bytes, run_blitz, write_folder

CLASSES = ["apple", "banana", "cherry"]


def _checkpoint(name: str = "lenet", training: Training | None = None) -> Checkpoint:
    cfg = build_config("seed", {"model.name": name})
    torch.manual_seed(0)
    return Checkpoint.of(create_model(name, 3, 3), cfg, CLASSES, training)


def format_1(ckpt: Checkpoint) -> dict:
    """The checkpoint as blitz wrote it before the typed format (model facts at top level)."""
    facts = ckpt.model
    return {
        "model": facts.name, "model_options": facts.options, "in_channels": facts.in_channels,
        "classes": facts.classes, "mean": list(facts.mean), "std": list(facts.std),
        "image_size": facts.image_size, "config": ckpt.config, "state_dict": ckpt.state_dict,
    }  # fmt: skip


@pytest.mark.parametrize("name", list_models())
def test_checkpoints_round_trip_for_every_model(tmp_path, name):
    ckpt = _checkpoint(name)
    save_checkpoint(tmp_path / "model.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.model == ckpt.model and loaded.cfg.model.name == name
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.build_model()(images), ckpt.build_model()(images))


def test_a_run_directory_of_the_previous_format_still_loads(tmp_path):
    ckpt = _checkpoint()
    torch.save(format_1(ckpt), tmp_path / "model.pt")
    old_metrics = {"test_accuracy": 0.5, "classes": CLASSES, "per_class_accuracy": {},
                   "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "epochs": 2,
                   "steps": 10, "history": [{"epoch": 1, "train_loss": 1.0}]}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(old_metrics))
    run_dir = RunDir(tmp_path)
    loaded = run_dir.load_model()
    assert loaded.model == ckpt.model and loaded.training is None
    assert run_dir.read_metrics().steps == 10 and run_dir.read_metrics().steps_per_epoch == 0


def test_a_checkpoint_describing_a_bigger_model_than_its_weights_is_refused_before_building(
    tmp_path,
):
    # measured on the meta device: a 53 MB file naming 3 million classes, with a wide layer,
    # asked for 49 GB before its weights were compared; more than 10,000 are refused at once
    ckpt = _checkpoint("convnet")
    ckpt.model.classes = [f"c{i}" for i in range(10_000)]
    ckpt.model.options = {"widths": [8, 16, 4096]}
    save_checkpoint(tmp_path / "model.pt", ckpt)
    with pytest.raises(BlitzError, match=r"model of 10,000 classes it describes \(features"):
        RunDir(tmp_path).load_model().build_model()
    ckpt.model.classes.append("one more")
    save_checkpoint(tmp_path / "model.pt", ckpt)
    with pytest.raises(BlitzError, match="names 10,001 classes, more than blitz takes"):
        RunDir(tmp_path).load_model()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json {", "cannot read"),
        ("[1, 2]", "no JSON object"),
        ('{"test_accuracy": "high", "classes": [], "confusion_matrix": [], '
         '"per_class_accuracy": {}}', "test_accuracy"),
        ('{"test_accuracy": 0.5, "classes": ["a"], "confusion_matrix": [[1, 2]], '
         '"per_class_accuracy": {}}', "1 x 1"),
        ('{"classes": ["a"]}', "test_accuracy"),
        ('{"test_accuracy": 5.0, "classes": ["a"], "confusion_matrix": [[1]], '
         '"per_class_accuracy": {}}', r"accuracies are not in \[0, 1\]"),
    ],
)  # fmt: skip
def test_a_hand_edited_metrics_file_is_a_clear_error(tmp_path, content, problem):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(BlitzError, match=problem):
        RunDir(tmp_path).read_metrics()


def _damaged(tmp_path, change, keep_digest: bool = False) -> str:
    """The error for a checkpoint changed after it was written (its checksum kept, as by a
    flipped bit, or left out, as in a file made by hand)."""
    path = tmp_path / "last.pt"
    training = Training(train_state={"step": 3, "epoch": 0}, state_dicts={}, rng={})
    raw = _checkpoint(training=training).to_dict()
    change(raw)
    if not keep_digest:
        del raw["digest"]
    torch.save(raw, path)
    with pytest.raises(BlitzError) as error:
        load_checkpoint(path)
    return str(error.value)


def _flip_a_weight(raw):
    next(iter(raw["state_dict"].values())).view(-1)[0] += 1


def test_foreign_and_damaged_checkpoints_are_refused(tmp_path):
    torch.save({"foo": 1}, tmp_path / "model.pt")
    with pytest.raises(BlitzError, match="not a usable blitz checkpoint"):
        RunDir(tmp_path).load_model()
    assert "checksum" in _damaged(tmp_path, _flip_a_weight, keep_digest=True)
    assert "lacks ['rng']" in _damaged(tmp_path, lambda raw: raw["training"].pop("rng"))
    size = _damaged(tmp_path, lambda raw: raw["model"].update(image_size=100_000))
    assert "model.image_size" in size
    epoch = _damaged(tmp_path, lambda raw: raw["training"]["train_state"].pop("epoch"))
    assert "training.train_state.epoch" in epoch


@pytest.mark.parametrize("kind", ["torchscript", "truncated", "empty"])
def test_a_file_of_another_kind_in_a_checkpoints_place_is_refused_without_torchs_advice(
    tmp_path, kind
):
    path = tmp_path / "model.pt"
    if kind == "torchscript":  # an export named model.pt: torch's error advises weights_only=False
        torch.jit.script(torch.nn.Linear(2, 2)).save(path)
    else:
        save_checkpoint(path, _checkpoint())
        path.write_bytes(path.read_bytes()[: 1000 if kind == "truncated" else 0])
    with pytest.raises(BlitzError, match="damaged, or not a checkpoint blitz wrote") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value)


def test_a_run_stopped_while_training_is_named_unfinished_with_the_resume_command(tmp_path):
    save_checkpoint(tmp_path / "last.pt", _checkpoint())
    with pytest.raises(BlitzError, match=f"has not finished .*blitz train --resume {tmp_path}"):
        RunDir(tmp_path).load_model()


def test_no_export_csv_or_page_is_written_over_a_file_of_a_run(tmp_path, capsys):
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    run_dir.write_config(build_config("seed"))
    for own in (run_dir.model, run_dir.metrics, run_dir.sets, run_dir.report, run_dir.config):
        with pytest.raises(BlitzError, match="that is a file of the run in"):
            check_output(own, "the export")
    check_output(run_dir.path / "model.onnx", "the export")  # an export beside the run: fine
    check_output(tmp_path / "model.pt", "the export")  # a model.pt of no run: the user's to name
    compare = ["report", str(run_dir), str(run_dir), "--out", str(run_dir.report)]
    assert cli.main(compare) == 2 and "file of the run" in capsys.readouterr().err
    assert cli.main(["report", str(run_dir), "--out", "x.html"]) == 2
    assert "--out names the page that compares two or more runs" in capsys.readouterr().err


def _nan_weight(ckpt):
    next(iter(ckpt.state_dict.values())).view(-1)[0] = torch.nan


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_nan_weight, "holds NaN or infinite values"),
        (lambda ckpt: setattr(ckpt.model, "std", (0.5, 0.0, 0.5)), "model.std"),
        (lambda ckpt: setattr(ckpt.model, "mean", (0.5, torch.inf, 0.5)), "model.mean"),
        (lambda ckpt: setattr(ckpt.model, "classes", ["a"] * 3), r"\['a'\] for model.classes"),
    ],
    ids=["nan-weight", "zero-std", "infinite-mean", "a-class-twice"],
)
def test_a_checkpoint_of_broken_numbers_with_a_valid_checksum_is_refused(tmp_path, change, problem):
    ckpt = _checkpoint()
    change(ckpt)
    save_checkpoint(tmp_path / "model.pt", ckpt)  # blitz's own writer: the checksum is right
    with pytest.raises(BlitzError, match=f"not a usable blitz checkpoint .*{problem}"):
        RunDir(tmp_path).load_model()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_held_run_directory_is_refused_to_a_second_writer(tmp_path):
    out = tmp_path / "run"
    with RunDir(out).lock():
        result = run_blitz("train", "--data", "shapes:40", "--max-steps", "1", "--out", out,
                           cache=tmp_path / "cache", check=False)  # fmt: skip
    assert result.returncode == 2 and "another blitz process is writing" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_planted_at_the_lock_files_name_is_a_clear_error(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)  # was an IsADirectoryError traceback
    lock = RunDir(tmp_path / "run").lock()
    with pytest.raises(BlitzError, match=r"\.lock is a folder: blitz keeps an empty lock file"):
        lock.__enter__()


@pytest.mark.slow
@pytest.mark.subprocess
def test_refused_runs_leave_nothing_behind_and_name_a_file_out(tmp_path):
    missing = run_blitz("train", "--data", tmp_path / "nope", "--out", tmp_path / "run",
                        cache=tmp_path / "cache", check=False)  # fmt: skip
    assert missing.returncode == 2 and not (tmp_path / "run").exists()
    (tmp_path / "afile.txt").write_text("x")
    result = run_blitz("train", "--out", tmp_path / "afile.txt", cache=tmp_path, check=False)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_a_refused_run_leaves_no_runs_folder_or_nested_out_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()  # a folder that was there before stays
    for out in ([], ["--out", "deep/er/run"], ["--out", "mine/run"]):
        status = cli.main(["train", "--data", "nope", "--quiet", *out])
        assert status == 2 and "data path 'nope' does not exist" in capsys.readouterr().err
        assert [p.name for p in tmp_path.iterdir()] == ["mine"], out
    assert not any((tmp_path / "mine").iterdir())


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_single_class_is_refused(tmp_path):
    files = {k: v for k, v in folder_files().items() if "/apple/" in k}
    result = run_blitz("train", "--data", write_folder(tmp_path / "one", files), "--out",
                       tmp_path / "run", cache=tmp_path / "cache", check=False)  # fmt: skip
    assert result.returncode == 2 and "a single class (apple)" in result.stderr


def test_metrics_refuse_a_history_that_is_not_numbers():
    with pytest.raises(BlitzError, match="history"):
        Metrics(0.5, ["a", "b"], [[1, 0], [0, 1]], {}, history=[{"epoch": "one"}])


def test_a_full_disk_hidden_in_torch_saves_runtime_error_is_one_clear_error(tmp_path, monkeypatch):
    def full(obj, f):  # what torch.save's zip writer raises when the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed "
                           "writing file data/0: file write failed")  # fmt: skip

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(BlitzError, match="could not write checkpoint .*no checkpoint was kept"):
        save_checkpoint(tmp_path / "last.pt", _checkpoint())
    assert list(tmp_path.iterdir()) == []  # no temporary file left


class _FillsUp:
    """A file on a disk that is full after ``room`` bytes (its writes then fail as the OS's)."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def test_a_disk_that_fills_inside_torch_saves_zip_writer_is_one_clear_error(tmp_path, monkeypatch):
    # the OSError of the write, then the writer's close raises RuntimeError("unexpected pos")
    real = checkpoint.atomic_file

    @contextlib.contextmanager
    def filling(path):
        with real(path) as f:
            yield _FillsUp(f, 2000)

    monkeypatch.setattr(checkpoint, "atomic_file", filling)
    with pytest.raises(BlitzError, match="could not write checkpoint .*: No space left on device"):
        save_checkpoint(tmp_path / "last.pt", _checkpoint())
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_files_are_written_whole_or_not_at_all(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BlitzError, match="cannot write"):
        write_atomic(tmp_path / "afile" / "report.html", b"<html>")
    write_atomic(tmp_path / "report.html", b"<html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "report.html"]


def test_a_run_that_learned_nothing_says_so():
    guessing = torch.tensor([[5, 0, 0], [5, 0, 0], [5, 0, 0]])
    assert "learned nothing useful" in chance_note(guessing)
    assert chance_note(torch.eye(3, dtype=torch.int64) * 5) is None


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_command_reads_a_run_directory_of_the_previous_format(
    tmp_path, cache, capsys, monkeypatch
):
    """A run as blitz wrote it before the typed format: model.pt and last.pt with the model's
    facts at top level, metrics.json without the newer fields."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # blitz kept last.pt in a finished run then
        patch.setattr(RunDir, "drop_resume_point", lambda self: None)
        status = cli.main(["train", "--preset", "seed", "--data", "shapes:40", "--batch-size",
                           "8", "--epochs", "2", "--out", str(out), "--quiet"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    for name in ("model.pt", "last.pt"):
        ckpt = load_checkpoint(out / name)
        old = format_1(ckpt)
        if ckpt.training is not None:
            old["training"] = {k: v for k, v in vars(ckpt.training).items() if k != "progress"}
        torch.save(old, out / name)
    metrics = json.loads((out / "metrics.json").read_text())
    kept = ("test_accuracy", "classes", "confusion_matrix", "per_class_accuracy", "epochs",
            "steps", "history", "model", "data", "preset")  # fmt: skip
    (out / "metrics.json").write_text(json.dumps({k: metrics[k] for k in kept}))
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes((200, 30, 30)))
    export = ["export", out, "--format", "torchscript", "--out", tmp_path / "m.pt"]
    for args in (["eval", out], ["predict", out, image], ["report", out], export):
        result = run_blitz(*args, cache=cache, check=False)
        assert result.returncode == 0, (args, result.stderr)
    (out / "metrics.json").unlink()  # as if killed after its last checkpoint
    resumed = run_blitz("train", "--resume", out, cache=cache, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "| this process " in resumed.stdout  # not "total": training counts both processes


def test_a_sets_file_listing_an_image_twice_is_refused_naming_the_line(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.write_sets({"train": [("a.png", "apple")], "test": [("b.png", "banana")] * 2})
    with pytest.raises(BlitzError, match=r"sets.csv .*line 4 lists image 'b.png' again.*line 3"):
        run_dir.read_sets()
    run_dir.write_sets({"train": [("a.png", "apple")], "test": [("a.png", "apple")]})
    with pytest.raises(BlitzError, match="line 3 lists image 'a.png' again"):
        run_dir.read_sets()


def test_metrics_past_1000_classes_hold_the_confusion_matrix_as_its_cells(tmp_path):
    k = 1001  # 10,000 classes would write 100 million counts, which JSON needs gigabytes for
    labels = torch.arange(3 * k) % k
    matrix = confusion_matrix(labels, (labels * 7) % k, k)
    classes = [f"c{i}" for i in range(k)]
    metrics = Metrics(0.0, classes, per_class_accuracy={}, **matrix_record(matrix))
    RunDir(tmp_path).write_metrics(metrics)
    assert (tmp_path / "metrics.json").stat().st_size < 200_000  # the whole matrix: 8 MB
    saved = RunDir(tmp_path).read_metrics()
    assert saved.confusion_matrix == [] and len(saved.confusion_cells) == k
    assert torch.equal(saved.matrix(), matrix)
    hand_edited = {**metrics.to_dict(), "confusion_cells": [[0, k, 3]]}
    (tmp_path / "metrics.json").write_text(json.dumps(hand_edited))
    with pytest.raises(BlitzError, match="confusion cells are not"):
        RunDir(tmp_path).read_metrics()
