"""Bad input the user can hand blitz, and a damaged, unwritable or full cache: each is a clear
error naming the file, or is converted or skipped with one line saying so. (Missing paths, flat
folders, no test/, different classes, one corrupt image, a plain file and '..' in a tar are in
test_data.py; bad options in test_cli.py.)"""

import errno
import io
import os
import random
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from blitz.config.data_settings import DataConfig
from blitz.data import folders
from blitz.data.sources import load_data
from blitz.errors import BlitzError
from conftest import folder_files, png_bytes, write_folder, write_tar, write_zip


def image_bytes(array, mode=None, fmt="PNG", palette=None) -> bytes:
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette:
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def load(path, **settings):
    logs = []
    return load_data(DataConfig(source=str(path), **settings), log=logs.append), logs


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_class_folder_without_images_is_named(tmp_path, content):
    folder = write_folder(tmp_path / "fruit", folder_files())
    (folder / "train" / "durian").mkdir()
    if content:
        (folder / "train" / "durian" / content).write_text("no pictures here")
    with pytest.raises(BlitzError, match="class folder train/durian in .* has no images"):
        load(folder)


def test_non_image_files_are_ignored_counted_and_said_once(tmp_path):
    files = {**folder_files(), "README.md": b"hi", "train/apple/Thumbs.db": b"\0", "x/y.csv": b""}
    data, logs = load(write_folder(tmp_path / "fruit", files))
    assert len(data.train) == 12
    notes = [line for line in logs if "not images" in line]
    assert len(notes) == 1 and notes[0].startswith("ignored 3 files that are not images")


def bad_files():
    good = folder_files()
    truncated = good["train/apple/0_1.png"][:60]
    return {**good, "train/apple/0_1.png": truncated, "test/cherry/bad.jpg": b"not a jpeg"}


def test_corrupt_and_truncated_images_are_all_named(tmp_path):
    with pytest.raises(BlitzError) as error:
        load(write_folder(tmp_path / "fruit", bad_files()))
    message = str(error.value)
    assert message.startswith("cannot decode images train/apple/0_1.png")
    assert "test/cherry/bad.jpg" in message and "--skip-bad-images" in message


def test_skip_bad_images_skips_and_counts_them(tmp_path):
    data, logs = load(write_folder(tmp_path / "fruit", bad_files()), skip_bad_images=True)
    assert (len(data.train), len(data.test)) == (11, 12)
    assert data.train.labels.tolist() == [0] * 3 + [1] * 4 + [2] * 4
    assert any(line.startswith("skipped 2 images that cannot be decoded") for line in logs)
    (tmp_path / "fruit" / "notes.txt").write_text("mine")  # the folder changed: decoded again
    first = load(tmp_path / "fruit", skip_bad_images=True)[1]
    again = load(tmp_path / "fruit", skip_bad_images=True)[1]  # from the cache
    said = [line for line in first if line.startswith(("skipped", "ignored"))]
    assert len(said) == 2 and [f"{line} (when it was decoded)" for line in said] == again


def test_skipping_every_image_of_a_class_is_an_error(tmp_path):
    files = {k: (b"x" if k.startswith("test/apple") else v) for k, v in folder_files().items()}
    with pytest.raises(BlitzError, match="test set's class 'apple' has no images left"):
        load(write_folder(tmp_path / "fruit", files), skip_bad_images=True)


@pytest.mark.parametrize("side", [40, 50])  # over the limit (PIL warns), over twice it (errors)
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    files = {**folder_files(), "train/apple/bomb.png": png_bytes((1, 2, 3), size=side)}
    with pytest.raises(BlitzError, match="train/apple/bomb.png.*decompression bomb"):
        load(write_folder(tmp_path / "fruit", files))


def test_grey_palette_rgba_and_16_bit_images_are_converted(tmp_path):
    palette = [10, 20, 30] + [0] * 765
    odd = {
        "grey": image_bytes(np.full((32, 32), 128, np.uint8), "L"),
        "palette": image_bytes(np.zeros((32, 32), np.uint8), "P", palette=palette),
        "rgba": image_bytes(np.full((32, 32, 4), (40, 50, 60, 0), np.uint8), "RGBA"),
        "wide": image_bytes(np.full((32, 32), 128 * 257, np.uint16)),  # 16-bit grey
    }
    files = {**folder_files(), **{f"train/apple/{k}.png": v for k, v in odd.items()}}
    data, _ = load(write_folder(tmp_path / "fruit", files))
    pixels = {}
    for name, row in zip(sorted(odd), range(4)):  # decoded in name order, after 0_0..0_3
        pixels[name] = data.train.images[4 + row, :, 0, 0].tolist()
    assert pixels == {
        "grey": [128] * 3,
        "palette": [10, 20, 30],
        "rgba": [40, 50, 60],
        "wide": [128] * 3,
    }


@pytest.mark.parametrize("suffix", ["tar", "zip"])
@pytest.mark.parametrize("member", ["/etc/train/a/x.png", "train/../../a/x.png"])
def test_archives_with_members_outside_are_refused(tmp_path, cache, suffix, member):
    writer = write_tar if suffix == "tar" else write_zip
    archive = writer(tmp_path / f"evil.{suffix}", {**folder_files(), member: png_bytes(0)})
    with pytest.raises(BlitzError, match="points outside the archive"):
        load(archive)
    assert not (tmp_path / "a").exists() and not list(cache.rglob("*.png"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_bad_image_fails_the_cli_cleanly_and_leaves_no_finished_run(tmp_path):
    folder = write_folder(tmp_path / "fruit", bad_files())
    env = {**os.environ, "BLITZ_DATA": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "blitz", "train", "--data", folder, "--out", out, "--quiet"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot decode images train/apple/0_1.png" in result.stderr
    assert not (out / "metrics.json").exists()
    command += ["--skip-bad-images", "--max-steps", "2"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "metrics.json").exists()


# --- the cache, $BLITZ_DATA: damaged, unwritable or full, it never stops a run with a traceback


def decoded_files(cache):
    return sorted((cache / "decoded").glob("*.pt"))


# random bytes, seeded: torch's unpickler meets each with another error (with these seeds:
# UnpicklingError, IndexError, KeyError, UnicodeDecodeError)
RANDOM = {f"random bytes {seed}": random.Random(seed).randbytes(4096) for seed in (0, 2, 20, 195)}


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", *RANDOM, "empty"])
def test_a_damaged_decode_cache_is_said_deleted_and_rebuilt(image_folder, cache, damage):
    first, _ = load(image_folder)
    [cached] = decoded_files(cache)
    raw = cached.read_bytes()
    bad = {"truncated": raw[: len(raw) // 2], **RANDOM, "empty": b""}
    cached.write_bytes(bad[damage])
    second, logs = load(image_folder)
    assert [line for line in logs if line.startswith("the decoded cache")] == [
        f"the decoded cache {cached} is damaged (cut short or overwritten): rebuilding it"
    ]
    assert torch.equal(first.train.images, second.train.images)
    assert decoded_files(cache) == [cached] and cached.read_bytes() != bad[damage]
    third, logs = load(image_folder)
    assert not logs and torch.equal(first.test.images, third.test.images)


def fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("problem", ["a regular file", errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_a_decode_cache_that_cannot_be_written_is_said_and_the_run_goes_on(
    image_folder, cache, monkeypatch, problem
):
    if problem == "a regular file":
        cache.write_text("not a folder")
    else:  # a read-only folder or file system, a full disk (root may write anywhere: simulated)
        monkeypatch.setattr(torch, "save", fail_with(problem))
    data, logs = load(image_folder)
    assert len(data.train) == 12
    [line] = [line for line in logs if "decoded cache" in line]
    assert line.startswith("could not write the decoded cache") and "going on without it" in line
    assert cache.is_file() or not list((cache / "decoded").iterdir())  # no half-written file


@pytest.mark.slow
def test_downloads_into_a_cache_that_is_a_file_are_one_clear_error(cache):
    cache.write_text("not a folder")
    for source in ("cifar10", "mnist"):
        with pytest.raises(BlitzError, match=f"cannot write to {cache}/{source} .*BLITZ_DATA"):
            load(source)
    data, logs = load("auto")
    assert data.name == "shapes" and "cannot write to" in logs[0]


def test_an_archive_cannot_be_extracted_into_a_cache_that_is_a_file(tmp_path, cache):
    cache.write_text("not a folder")
    archive = write_tar(tmp_path / "fruit.tar", folder_files())
    with pytest.raises(BlitzError, match=f"cannot write to {cache}/extracted .*BLITZ_DATA"):
        load(archive, max_memory="0")


@pytest.mark.parametrize("full", ["before", "while writing"])
def test_extracting_onto_a_full_disk_is_one_clear_error(tmp_path, cache, monkeypatch, full):
    if full == "before":
        monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
        message = "free some space or set BLITZ_DATA"
    else:
        monkeypatch.setattr(folders, "_write_new", fail_with(errno.ENOSPC))
        message = "cannot extract .*No space left on device"
    archive = write_tar(tmp_path / "fruit.tar", folder_files())
    with pytest.raises(BlitzError, match=message):
        load(archive, max_memory="0")
    left = [p.name for p in (cache / "extracted").iterdir()]
    assert len(left) == 1 and left[0].endswith(".lock")  # nothing half-extracted


@pytest.mark.parametrize("count", ["9", "200001", "99999999999999", "x", "-5"])
def test_shapes_refuses_a_count_it_cannot_draw(count):
    with pytest.raises(BlitzError, match=f"shapes:{count}.*from 10 to 200,000"):
        load(f"shapes:{count}")


def test_class_folders_differing_only_in_case_or_punctuation_are_named_in_a_note(tmp_path):
    folders_ = ["cat", "Cat", "dog", "sea lion", "sea-lion", "Sea_Lion", "ant"]
    files = {f"{name}/{i}.png": png_bytes((9 * n, 30, 30 + i)) for n, name in
             enumerate(folders_) for i in range(4)}  # fmt: skip
    data, logs = load(write_folder(tmp_path / "animals", files))
    assert len(data.classes) == 7  # kept apart, as written
    notes = [line for line in logs if "differ only in case" in line]
    assert len(notes) == 1 and "'Cat' and 'cat'" in notes[0]
    assert "'Sea_Lion' and 'sea lion' and 'sea-lion'" in notes[0] and "'dog'" not in notes[0]
    _, logs = load(write_folder(tmp_path / "fruit", folder_files()))
    assert not any("differ only in case" in line for line in logs)
