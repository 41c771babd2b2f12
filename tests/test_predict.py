"""predict: good images are classified and bad ones (unreadable, pipes, devices, folders with
image names, corrupt) are skipped and named; output paths are checked; odd names never crash."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from blitz.errors import BlitzError
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.outputs.predict import collect_images, format_prediction, predict_files, write_csv
from blitz.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from conftest import png_bytes, run_blitz

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with an untrained LeNet's checkpoint (model.pt), as blitz train leaves."""
    torch.manual_seed(0)
    cfg = build_config("seed")
    save_checkpoint(tmp_path / "model.pt", Checkpoint.of(create_model("lenet", 3, 3), cfg, CLASSES))
    return tmp_path


def predict(run_dir: Path, files: list[Path], top_k: int = 2):
    """(predictions, skipped files as (path, reason))."""
    ckpt = load_checkpoint(run_dir / "model.pt")
    skipped: list[tuple[Path, str]] = []
    on_skip = lambda path, reason: skipped.append((path, reason))  # noqa: E731
    return predict_files(ckpt.model, ckpt.build_model(), files, top_k, on_skip=on_skip), skipped


def hostile_folder(root: Path) -> Path:
    """Two good images, one in a folder named like an image, and every kind of bad one."""
    (root / "folder.png").mkdir(parents=True)
    (root / "good.png").write_bytes(png_bytes((200, 30, 30)))
    (root / "folder.png" / "inner.jpg").write_bytes(png_bytes((30, 30, 200), size=50))
    (root / "corrupt.png").write_bytes(b"\x89PNG not really")
    os.mkfifo(root / "pipe.png")  # reading it would wait for a writer forever
    (root / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    (root / "dangling.png").symlink_to(root / "gone.png")
    return root


def test_hidden_files_in_a_folder_are_not_predicted_unless_named(tmp_path):
    folder = tmp_path / "images"
    for name in ["a.png", "2019/b.png", "._a.png", ".thumbs/c.png", "__MACOSX/._a.png"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    found = [p.relative_to(folder).as_posix() for p in collect_images([folder])]
    assert found == ["2019/b.png", "a.png"]
    assert collect_images([folder / "._a.png"]) == [folder / "._a.png"]  # named: read


def test_good_images_are_classified_and_each_bad_one_is_skipped_and_named(run_dir, tmp_path):
    folder = hostile_folder(tmp_path / "images")
    files = collect_images([folder])
    names = [p.relative_to(folder).as_posix() for p in files]
    assert "folder.png" not in names and "folder.png/inner.jpg" in names
    predictions, skipped = predict(run_dir, files)
    assert [p.name for p, _ in predictions] == ["inner.jpg", "good.png"]
    for _, top in predictions:
        assert len(top) == 2 and {c for c, _ in top} <= set(CLASSES)
        assert 0 < top[1][1] <= top[0][1] <= 1
    reasons = {p.name: reason for p, reason in skipped}
    assert sorted(reasons) == ["corrupt.png", "dangling.png", "pipe.png", "zero.png"]
    assert "not a readable image" in reasons["corrupt.png"]
    assert "not a regular file" in reasons["pipe.png"] and "not a regular" in reasons["zero.png"]
    assert "No such file" in reasons["dangling.png"]


def test_a_file_that_cannot_be_opened_is_skipped_and_named(run_dir, tmp_path, monkeypatch):
    locked = tmp_path / "locked.png"
    locked.write_bytes(png_bytes((1, 2, 3)))
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads it anyway: make opening it fail as it would
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes((9, 9, 9)))
    predictions, skipped = predict(run_dir, [locked, good])
    assert [p for p, _ in predictions] == [good]
    assert skipped[0][0] == locked and "Permission denied" in skipped[0][1]


def test_when_no_image_can_be_read_predict_stops_naming_one(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nothing")
    ckpt = load_checkpoint(run_dir / "model.pt")
    model = ckpt.build_model()
    with pytest.raises(BlitzError, match="cannot classify .*bad.jpg: not a readable image"):
        predict_files(ckpt.model, model, [bad], 1)
    with pytest.raises(BlitzError, match="none of the 2 images .*first, .*bad.jpg: not a"):
        predict_files(ckpt.model, model, [bad, tmp_path], 1)
    assert "skipped" in capsys.readouterr().err  # the default on_skip: named on stderr


@pytest.mark.parametrize("where", ["out", "missing/out.csv"])
def test_csv_into_a_folder_or_a_missing_one_is_a_clear_error(tmp_path, where):
    (tmp_path / "out").mkdir()
    with pytest.raises(BlitzError, match="is a folder|does not exist"):
        write_csv([(tmp_path / "a.png", [("cat", 0.5)])], tmp_path / where)
    assert not (tmp_path / "missing").exists()


def test_names_that_are_not_utf8_are_printed_and_written_as_escapes(run_dir, tmp_path):
    (tmp_path / "images").mkdir()
    odd = tmp_path / "images" / os.fsdecode(b"caf\xe9.png")
    try:
        odd.write_bytes(png_bytes((10, 200, 10)))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    predictions, skipped = predict(run_dir, collect_images([tmp_path / "images"]), top_k=1)
    assert [p for p, _ in predictions] == [odd] and not skipped
    assert "caf\\xe9.png: " in format_prediction(predictions[0])
    write_csv(predictions, tmp_path / "out.csv")
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:  # strict: valid UTF-8
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class_1", "prob_1"] and rows[1][0].endswith("caf\\xe9.png")


def test_a_name_with_a_newline_or_an_escape_sequence_is_one_plain_line(run_dir, tmp_path):
    odd = tmp_path / "a\nb\x1b[31m.png"  # would split the line, and turn the terminal red
    odd.write_bytes(png_bytes((10, 200, 10)))
    (bad := tmp_path / "c\x1b]0;x\x07.png").write_bytes(b"no image")
    predictions, skipped = predict(run_dir, [odd, bad], top_k=1)
    line = format_prediction(predictions[0])
    assert line.startswith(f"{tmp_path}/a\\x0ab\\x1b[31m.png: ") and "\n" not in line
    assert [path for path, _ in skipped] == [bad]
    write_csv(predictions, tmp_path / "out.csv")  # the CSV keeps the name (quoted, as CSV does)
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:
        assert list(csv.reader(f))[1][0] == str(odd)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_cli_prints_the_good_names_the_bad_and_writes_the_csv(run_dir, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes((200, 30, 30)))
    os.mkfifo(tmp_path / "pipe.png")
    out = tmp_path / "out.csv"
    result = run_blitz("predict", run_dir, good, tmp_path / "pipe.png", "--csv", out, check=False)
    assert f"{good}: " in result.stdout and "pipe.png" not in result.stdout
    assert "skipped" in result.stderr and "pipe.png: not a regular file" in result.stderr
    assert len(out.read_text().splitlines()) == 2  # the header and good.png
    assert result.returncode == 1 and "skipped 1 of 2 files" in result.stderr
    missing = run_blitz("predict", run_dir, good, "--csv", tmp_path / "no" / "x.csv", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert missing.stdout == ""  # refused before any prediction was made
