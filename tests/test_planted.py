"""Run directories and settings files from strangers: a link planted at every name blitz writes
must be replaced, never written through; a pipe at a name blitz reads must be refused, never
waited on; a settings file must not steer where a run is written; an archive whose members
would fill the disk (sparse files, zeros) is refused before anything is extracted."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blitz import cli
from blitz.config.data_settings import DataConfig
from blitz.data.sources import load_data
from blitz.errors import BlitzError
from blitz.files import atomic_file, open_new, read_regular
from blitz.training.rundir import RunDir
from conftest import folder_files, run_blitz, write_folder

WRITTEN = ("config.json", "sets.csv", "metrics.csv", "metrics.json", "model.pt", "best.pt",
           "last.pt", "report.html", "train_images.png", "test_predictions.png",
           ".lock")  # fmt: skip
TRAIN = ["train", "--preset", "seed", "--data", "shapes:40", "--batch-size", "8", "--epochs",
         "1", "--val-fraction", "0.2", "--quiet"]  # fmt: skip


def plant(run: Path, names, outside: Path) -> dict[Path, bytes]:
    """A symbolic link at each name in ``run`` to a file of its own outside, and at the
    temporary names blitz once used (``NAME.tmp``); returns target -> its bytes."""
    outside.mkdir(exist_ok=True)
    targets = {}
    for name in names:
        for planted in (name, name + ".tmp"):
            target = outside / planted
            target.write_bytes(b"precious " + planted.encode())
            (run / planted).unlink(missing_ok=True)
            (run / planted).symlink_to(target)
            targets[target] = target.read_bytes()
    return targets


def untouched(targets: dict[Path, bytes]) -> bool:
    return all(target.read_bytes() == data for target, data in targets.items())


@pytest.mark.slow
def test_training_into_a_folder_of_planted_links_never_writes_through_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    targets = plant(run, WRITTEN, tmp_path / "outside")
    assert cli.main([*TRAIN, "--out", str(run), "--overwrite"]) == 0
    assert untouched(targets)
    for name in ("config.json", "sets.csv", "metrics.csv", "metrics.json", "model.pt"):
        assert (run / name).is_file() and not (run / name).is_symlink(), name


@pytest.mark.slow
def test_tensorboard_never_writes_into_a_planted_folder_link(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (run / "tensorboard").symlink_to(elsewhere)
    assert cli.main([*TRAIN, "--out", str(run), "--overwrite", "--tensorboard"]) == 0
    assert list(elsewhere.iterdir()) == [] and any((run / "tensorboard").iterdir())


@pytest.mark.slow
def test_report_export_and_predict_never_write_through_planted_links(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--out", str(run)]) == 0
    image = tmp_path / "image.png"
    shutil.copy(run / "train_images.png", image)
    written = ("report.html", "model.onnx", "model.torchscript.pt", "predictions.csv",
               "model.onnx.json", "model.torchscript.pt.json")  # fmt: skip
    targets = plant(run, written, tmp_path / "outside")
    assert cli.main(["report", str(run)]) == 0
    assert cli.main(["export", str(run)]) == 0
    assert cli.main(["export", str(run), "--format", "torchscript"]) == 0
    assert cli.main(["predict", str(run), str(image), "--csv", str(run / "predictions.csv")]) == 0
    assert untouched(targets)
    assert not any((run / name).is_symlink() for name in written)
    assert b"<html" in (run / "report.html").read_bytes()


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("the disk is full")
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_a_log_is_opened_afresh_even_where_a_link_stood(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    (tmp_path / "metrics.csv").symlink_to(target)
    with open_new(tmp_path / "metrics.csv") as f:
        f.write(b"step\n")
    assert target.read_bytes() == b"precious"
    assert (tmp_path / "metrics.csv").read_bytes() == b"step\n"


def fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)  # opened plainly, it would wait for a writer forever
    return path


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "name, command",
    [("config.json", ["train", "--config"]), ("sets.csv", ["eval"]),
     ("metrics.json", ["report"]), ("model.pt", ["eval"])],
)  # fmt: skip
def test_a_pipe_in_a_run_directory_is_refused_not_waited_on(tmp_path, name, command):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--out", str(run)]) == 0
    fifo(run / name)
    command = [sys.executable, "-m", "blitz", *command, str(run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_pipe_given_as_settings_is_refused_not_waited_on(tmp_path):
    settings = fifo(tmp_path / "settings.toml")
    command = [sys.executable, "-m", "blitz", "train", "--config", str(settings)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a regular file" in result.stderr, result.stderr


def test_a_run_file_that_links_elsewhere_is_not_read(tmp_path):
    (tmp_path / "secret").write_bytes(b"{}")
    (tmp_path / "config.json").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        read_regular(tmp_path / "config.json", 100, follow=False)
    with pytest.raises(BlitzError, match="cannot read"):
        RunDir(tmp_path).read_config()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "preset", ["x/../../../../somewhere", "../escape", "/tmp/abs", "a\\..\\b", "..", ".hidden"]
)
def test_a_settings_file_cannot_steer_the_run_folder(tmp_path, preset):
    settings = tmp_path / "shared.toml"
    escaped = preset.replace("\\", "\\\\")
    settings.write_text(f'preset = "{escaped}"\n[data]\nsource = "shapes:40"\n')
    result = run_blitz("train", "--config", settings, "--max-steps", "1", "--quiet",
                       cache=tmp_path / "cache", check=False)  # fmt: skip
    assert result.returncode == 2 and "invalid value" in result.stderr and "preset" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("preset", ["x/../../../../somewhere", "..", "a b (1)", "实验"])
def test_the_default_run_folder_stays_in_runs(preset):
    path = RunDir.default(preset).path
    assert path.parent == Path("runs") and "/" not in path.name and ".." not in path.name


@pytest.mark.slow
def test_a_settings_file_named_oddly_still_runs(tmp_path, monkeypatch):
    settings = tmp_path / "fast (1).toml"
    settings.write_text('[data]\nsource = "shapes:40"\n[train]\nbatch_size = 8\n')
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", str(settings), "--max-steps", "1", "--quiet"]) == 0
    assert [p.name.split("-", 2)[2] for p in (tmp_path / "runs").iterdir()] == ["fast-1"]


def sparse_tar(tmp_path: Path, count: int = 4, size: int = 200 * 2**20) -> Path:
    """A .tar.gz of a real dataset plus ``count`` sparse members of ``size`` bytes posing as
    images: each under the member cap, a few KB in all, and ``count * size`` once extracted."""
    root = write_folder(tmp_path / "data", folder_files())
    for i in range(count):
        with open(root / "train" / "apple" / f"sparse{i}.png", "wb") as f:
            f.truncate(size)  # a hole: no disk used here
    archive = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "-cSzf", archive, "-C", root, "."], check=True)
    shutil.rmtree(root)
    return archive


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar makes the sparse archive")
@pytest.mark.parametrize("max_memory", ["auto", "0"])
def test_an_archive_of_sparse_members_is_refused_before_extraction(tmp_path, cache, max_memory):
    archive = sparse_tar(tmp_path)
    assert archive.stat().st_size < 2**20
    with pytest.raises(BlitzError, match="refusing archive .* times the archive's size"):
        load_data(DataConfig(source=str(archive), max_memory=max_memory), log=str)
    extracted = cache / "extracted"
    assert not extracted.exists() or not [p for p in extracted.rglob("*") if p.is_file()]
