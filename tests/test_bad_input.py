"""Bad input the user can hand blitz: each is a clear error naming the file, or is converted or
skipped with one line saying so. (Missing paths, flat folders, no test/, different classes, one
corrupt image, a plain file and '..' in a tar are in test_data.py; bad options in test_cli.py.)"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from blitz.config import DataConfig
from blitz.data import load_data
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


def test_skipping_every_image_of_a_class_is_an_error(tmp_path):
    files = {k: (b"x" if k.startswith("test/apple") else v) for k, v in folder_files().items()}
    with pytest.raises(BlitzError, match="test/apple has no images left"):
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
