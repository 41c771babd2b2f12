"""Data bigger than memory: streamed through DataLoader workers, it trains and tests exactly as
the same data held in memory; bad files and dying workers are clear errors."""

import json
import multiprocessing
import os
import signal

import pytest
import torch

from blitz.config.data_settings import DataConfig
from blitz.data import stream
from blitz.data.dataset import Split
from blitz.data.sources import load_data
from blitz.data.stream import StreamSplit
from blitz.errors import BlitzError
from conftest import folder_files, run_blitz, shapes_folder, write_folder, write_tar

forks = pytest.mark.skipif(
    multiprocessing.get_start_method() != "fork", reason="patches reach workers only by fork"
)


def load(source, **settings):
    logs = []
    return load_data(DataConfig(source=str(source), **settings), log=logs.append), logs


def test_the_memory_budget_chooses_the_path_and_says_why(tmp_path):
    folder = write_folder(tmp_path / "fruit", folder_files())
    held, _ = load(folder)
    streamed, logs = load(folder, max_memory="10KB")  # 24 images of 3 KB each do not fit
    assert isinstance(held.train, Split) and isinstance(streamed.train, StreamSplit)
    assert "more than --max-memory (10 KB): streaming them from disk" in "\n".join(logs)
    assert held.storage().startswith("in memory") and streamed.storage() == "streamed from disk"
    assert isinstance(load(folder, max_memory="1MB")[0].train, Split)


def test_streamed_images_are_the_decoded_images(tmp_path):
    archive = write_tar(tmp_path / "fruit.tar.gz", folder_files(size=40))  # resized to 32
    held, _ = load(archive)
    streamed, logs = load(archive, max_memory="0", workers=2)
    assert any("extracting" in line for line in logs)
    assert held.classes == streamed.classes
    for a, b in ((held.train, streamed.train), (held.test, streamed.test)):
        rows = torch.arange(len(a))
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.images_at(rows), b.images_at(rows))
        batches = list(rows.flip(0).split(5))
        for (ra, ia, la), (rb, ib, lb) in zip(
            a.load(batches, a.labels.device), b.load(batches, a.labels.device)
        ):
            assert torch.equal(ra, rb) and torch.equal(ia, ib) and torch.equal(la, lb)


PHOTO_AUGMENTATION = ["crop_scale=0.5", "auto_augment=trivial", "mixup=0.2", "cutmix=1.0"]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("preset", "augment"),
    [("seed", []), ("fast-cpu", []), ("fast-cpu", PHOTO_AUGMENTATION)],
    ids=["seed", "fast-cpu", "photo-augmentation"],
)
def test_streaming_trains_and_tests_like_the_tensor_path(tmp_path, preset, augment):
    """The CI check of issue 6: same data, one run in memory, one streamed (fast-cpu adds random
    flips and shifts, and the photo augmentation random-resized crops, TrivialAugment, MixUp and
    CutMix, all drawn on the device after loading, so they match too)."""
    folder = shapes_folder(tmp_path / "shapes", 120)
    runs = {}
    augment = [arg for setting in augment for arg in ("--set", f"data.{setting}")]
    for name, extra in (("memory", []), ("stream", ["--max-memory", "0", "--workers", "2"])):
        extra = [*extra, *augment]
        args = ["train", "--preset", preset, "--data", folder, "--epochs", "3"]
        args += ["--batch-size", "16", "--lr", "0.02", "--out", tmp_path / name, "--quiet", *extra]
        args += ["--val-fraction", "0.25", "--set", "train.eval_every_epoch=true"]
        run_blitz(*args)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    memory, streamed = runs["memory"], runs["stream"]
    assert memory["data_storage"].startswith("in memory")
    assert streamed["data_storage"] == "streamed from disk"
    assert memory["confusion_matrix"] == streamed["confusion_matrix"]
    assert memory["test_accuracy"] == streamed["test_accuracy"]
    for a, b in zip(memory["history"], streamed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["val_accuracy"] == b["val_accuracy"]
    losses = [h["train_loss"] for h in memory["history"]]
    assert losses[-1] < losses[0]  # it learned, so the comparison means something
    assert (tmp_path / "stream" / "report.html").exists()


def bad_folder(tmp_path):
    files = folder_files()
    files["train/apple/broken.png"] = b"not a png at all"
    return write_folder(tmp_path / "fruit", files)


def test_a_bad_streamed_image_is_named(tmp_path):
    data, _ = load(bad_folder(tmp_path), max_memory="0", workers=0)
    rows = torch.arange(len(data.train))
    with pytest.raises(BlitzError, match=r"cannot decode image train/apple/broken.png \(not a"):
        list(data.train.load(rows.split(8), torch.device("cpu")))


def test_skip_bad_images_checks_streamed_files_once(tmp_path):
    data, logs = load(bad_folder(tmp_path), max_memory="0", workers=1, skip_bad_images=True)
    assert "train/apple/broken.png" not in data.train.names and len(data.train) == 12
    assert any(line.startswith("skipped 1 image that cannot be decoded") for line in logs)
    rows = torch.arange(len(data.train))
    assert len(data.train.images_at(rows)) == 12


def _killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does


def _out_of_memory(*args, **kwargs):
    raise MemoryError("cannot allocate")


@pytest.mark.slow
@forks
@pytest.mark.parametrize(
    "failure, message",
    [(_killed, "exited unexpectedly"), (_out_of_memory, "Caught MemoryError")],
)
def test_a_failing_worker_is_a_clear_error(tmp_path, monkeypatch, failure, message):
    data, _ = load(write_folder(tmp_path / "fruit", folder_files()), max_memory="0", workers=2)
    monkeypatch.setattr(stream, "decode_image", failure)  # forked workers inherit the patch
    rows = torch.arange(len(data.train))
    with pytest.raises(BlitzError, match="a data-loading worker process failed") as error:
        list(data.train.load(rows.split(4), torch.device("cpu")))
    assert message in str(error.value) and "--workers" in str(error.value)


@pytest.mark.parametrize(
    "setting, value",
    [("max_memory", "lots"), ("max_memory", "-1GB"), ("workers", -1), ("workers", "many")],
)
def test_bad_streaming_settings_are_named(setting, value):
    with pytest.raises(BlitzError, match=f"invalid value .*{value}"):
        DataConfig(**{setting: value})
