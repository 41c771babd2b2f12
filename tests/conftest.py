"""Fixtures: an isolated cache, and small datasets in every format blitz reads, made here."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["apple", "banana", "cherry"]

# headless chromium for the tests that open a page (the report, blitz serve's page)
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
needs_browser = pytest.mark.skipif(
    not BROWSER and not os.environ.get("BLITZ_REQUIRE_BROWSER"),
    reason="chromium is not installed (apt-get install chromium); .ci/run installs it",
)

# No test reaches the network: timm's hub is a cache made here, read offline (set before
# huggingface_hub is imported, which reads them once; subprocesses inherit them).
HUB_CACHE = Path(tempfile.mkdtemp(prefix="blitz-hub-"))
os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(HUB_CACHE))
HUB_MODELS = {"resnet18.a1_in1k"}  # what the presets fetch (the finetune preset's resnet18)


@pytest.fixture(scope="session", autouse=True)
def hub_weights() -> Path:
    """timm's hub as an offline cache holding the presets' models, with seeded random weights
    in the place and format (model.safetensors) that timm.create_model(pretrained=True) reads."""
    try:
        import timm
        from safetensors.torch import save_file
    except ImportError:  # without the timm extra, the tests that need it skip themselves
        names = ()
    else:
        names = HUB_MODELS
    for name in names:
        snapshot = HUB_CACHE / f"models--timm--{name}" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
        (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
        torch.manual_seed(0)
        save_file(timm.create_model(name).state_dict(), snapshot / "model.safetensors")
    yield HUB_CACHE
    shutil.rmtree(HUB_CACHE, ignore_errors=True)


def run_blitz(*args, cache=None, check=True) -> subprocess.CompletedProcess:
    """``python -m blitz ARGS`` in a subprocess, as a user runs it; optionally its own cache."""
    env = {**os.environ, "BLITZ_DATA": str(cache)} if cache else None
    result = subprocess.run(
        [sys.executable, "-m", "blitz", *map(str, args)], capture_output=True, text=True, env=env
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty BLITZ_DATA cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("BLITZ_DATA", str(root))
    return root


def png_bytes(color, size=32, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def folder_files(per_class: int = 4, test_split: str = "test", size: int = 32) -> dict[str, bytes]:
    """Relative path -> bytes of a tiny image-folder dataset: one solid colour per class."""
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    files = {}
    for split in ("train", test_split):
        for c, (name, color) in enumerate(zip(CLASSES, colors)):
            for i in range(per_class):
                shade = tuple(max(0, v - 10 * i) for v in color)
                files[f"{split}/{name}/{c}_{i}.png"] = png_bytes(shade, size)
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


def cifar_archive(path: Path, per_batch: int = 20) -> Path:
    """A cifar-10-python.tar.gz in the official layout (pickled dicts of numpy arrays), tiny."""
    rng = np.random.default_rng(0)
    files = {}
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
    for name in [*names, "test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_batch)],
        }
        files[f"cifar-10-batches-py/{name}"] = pickle.dumps(batch)
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    }
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps(meta)
    return write_tar(path, files)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_folder(tmp_path / "fruit", folder_files())


def shapes_folder(root: Path, count: int = 120) -> Path:
    """The generated shapes as an image folder of PNGs (train: ``count``, test: a third)."""
    from blitz.data.sources.shapes import CLASSES as SHAPES
    from blitz.data.sources.shapes import make_shapes

    for split, n, seed in (("train", count, 0), ("test", count // 3, 1)):
        images, labels = make_shapes(n, seed=seed)
        for row, (image, label) in enumerate(zip(images, labels.tolist())):
            path = root / split / SHAPES[label] / f"{row:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return root


def _browser(profile: Path) -> list[str]:
    assert BROWSER, "BLITZ_REQUIRE_BROWSER is set but no chromium is on PATH"
    return [BROWSER, *HEADLESS, f"--user-data-dir={profile / 'profile'}"]


def rendered_image_widths(page: Path, profile: Path) -> list[int]:
    """The natural width of every image of a blitz page (a report, doctor.html) as headless
    chromium decoded it (0: it did not decode): the page's own check script writes them."""
    uri = page.resolve().as_uri()
    dom = subprocess.run([*_browser(profile), "--dump-dom", uri], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    found = re.search(r'<pre id="image-check"[^>]*>(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    return json.loads(found.group(1))


def screenshot(page: Path, profile: Path, size: str = "1280,2400") -> Path:
    """A screenshot of a page in headless chromium."""
    shot = profile / "shot.png"
    subprocess.run([*_browser(profile), f"--window-size={size}", f"--screenshot={shot}",
                    page.resolve().as_uri()], capture_output=True, timeout=120)  # fmt: skip
    return shot
