"""Grad-CAM (blitz explain): every model family's heat map finds the class evidence where it
lies; file names stay in --out; the command end to end; blitz works without grad-cam."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from blitz.errors import BlitzError
from blitz.models import create_model, list_models
from blitz.models.configs import build_config
from blitz.outputs.explain import (
    _last_spatial_layer,
    class_index,
    explain_arrays,
    file_name,
    heat_maps,
    require_grad_cam,
    target_layer,
)
from blitz.outputs.trust import heat_map_pngs
from blitz.training.checkpoint import Checkpoint, ModelFacts, save_checkpoint
from conftest import run_blitz

pytest.importorskip("pytorch_grad_cam", reason="the explain extra (grad-cam) is not installed")

CLASSES = ["plain", "blob"]
MEAN, STD = (0.15, 0.15, 0.15), (0.25, 0.25, 0.25)
# per family: image side (lenet's linear layers take 32), small options for speed, and the
# training images and epochs it needs to learn the task (tried: 1.00 test accuracy each)
FAMILIES = {
    "lenet": (32, {}, 512, 3),
    "convnet": (32, {"widths": (8, 16, 32)}, 384, 2),
    "airbench": (48, {"widths": (8, 16, 16)}, 384, 2),
    "timm:resnet10t": (64, {}, 384, 1),  # its last stage is 2 x 2 at 64 px: a cell a quadrant
}


def blob_images(count: int, side: int, seed: int, where: int | None = None):
    """uint8 (N, 3, side, side) dark noise; class "blob" has a bright square, anywhere (or,
    with ``where``, in the middle of that quadrant: 0 top left, 1 top right, 2 bottom left,
    3 bottom right), class "plain" has none."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 3, side, side), dtype=np.uint8)
    labels = rng.integers(0, 2, count) if where is None else np.ones(count, dtype=np.int64)
    square = side // 5
    for i in np.flatnonzero(labels):
        if where is None:
            y, x = rng.integers(0, side - square, 2)
        else:
            y = (side // 4 if where < 2 else 3 * side // 4) - square // 2
            x = (side // 4 if where % 2 == 0 else 3 * side // 4) - square // 2
        images[i, :, y : y + square, x : x + square] = 230
    return torch.from_numpy(images), torch.from_numpy(labels)


def trained(
    name: str, side: int, options: dict, count: int = 512, epochs: int = 3
) -> tuple[nn.Module, ModelFacts]:
    """A model of the family taught blob-or-not in a few dozen steps."""
    torch.manual_seed(0)
    model = create_model(name, 2, 3, **options)
    images, labels = blob_images(count, side, seed=0)
    x = ((images.float() / 255) - MEAN[0]) / STD[0]
    if hasattr(model, "prepare"):  # airbench's whitening layer, from the training images
        model.prepare(x[:256])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    model.train()
    for _ in range(epochs):
        for batch in torch.arange(count).split(32):
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    facts = ModelFacts(name, options, 3, CLASSES, side, MEAN, STD)
    return model.eval(), facts


def quadrant(heat: np.ndarray) -> int:
    """The quadrant (0-3, as blob_images numbers them) of the heat map's peak."""
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    return 2 * int(row >= heat.shape[0] / 2) + int(col >= heat.shape[1] / 2)


def families() -> list:
    """Every registered model, and timm's backbones (through one of them)."""
    names = [*list_models(), "timm:resnet10t"]
    assert set(list_models()) <= set(FAMILIES), "a new model: give it a size in FAMILIES"
    return [pytest.param(n, marks=[pytest.mark.timm] if ":" in n else []) for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("name", families())
def test_the_heat_map_peaks_in_the_quadrant_that_holds_the_class_evidence(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    side, options, count, epochs = FAMILIES[name]
    model, facts = trained(name, side, options, count, epochs)
    test, labels = blob_images(200, side, seed=1)
    with torch.no_grad():
        x = ((test.float() / 255) - MEAN[0]) / STD[0]
        accuracy = (model(x).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, f"{name} did not learn the task ({accuracy:.2f}): the test says nothing"
    for where in range(4):
        images, _ = blob_images(4, side, seed=10 + where, where=where)
        maps = heat_maps(model, facts, images, [1] * len(images))
        assert maps.shape == (4, side, side)
        assert [quadrant(m) for m in maps] == [where] * 4, f"{name}: blob in quadrant {where}"


def test_each_family_is_explained_at_its_last_spatial_layer():
    lenet = create_model("lenet", 10, 3)
    assert target_layer(lenet, "lenet") is lenet.conv2
    convnet = create_model("convnet", 10, 3)
    assert target_layer(convnet, "convnet") is convnet.features
    airbench = create_model("airbench", 10, 3)
    assert target_layer(airbench, "airbench") is list(airbench.layers.children())[-2]
    # a model blitz has no entry for: its last module with a map larger than 1 x 1
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert _last_spatial_layer(plain) is plain[1]
    with pytest.raises(BlitzError, match="convolutional"):
        _last_spatial_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2)))


@pytest.mark.timm
def test_a_timm_model_is_explained_at_its_last_stage():
    pytest.importorskip("timm")
    model = create_model("timm:resnet10t", 2, 3)
    assert target_layer(model, "timm:resnet10t") is model.layer4


@pytest.mark.parametrize(
    "image",
    ["../../etc/passwd", ".hidden", "a b$(rm -rf).png", "\udcff\udcfe.png", "", "/", "x" * 300],
)
def test_file_names_never_leave_the_folder(image, tmp_path):
    from pathlib import Path

    name = file_name(7, Path(image), "../cat/..")
    assert name.startswith("007-") and name.endswith(".png") and "/" not in name
    assert not name.startswith(".") and ".." not in name.removesuffix(".png")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve() and len(name) < 100


def test_a_class_that_is_not_the_runs_is_refused_with_the_closest():
    facts = ModelFacts("lenet", {}, 3, ["cat", "dog"], 32, MEAN, STD)
    assert class_index(facts, "dog") == 1 and class_index(facts, None) is None
    with pytest.raises(BlitzError, match=r"--class 'dgo' is not a class .*did you mean dog"):
        class_index(facts, "dgo")


def test_explained_images_are_written_as_png_overlays(tmp_path):
    facts = ModelFacts("lenet", {}, 3, CLASSES, 32, MEAN, STD, temperature=2.0)
    torch.manual_seed(0)
    model = create_model("lenet", 2, 3).eval()
    images, _ = blob_images(3, 32, seed=3, where=0)
    arrays = list(images.permute(0, 2, 3, 1).numpy())
    done = explain_arrays(facts, model, [0, 1, 2], arrays, tmp_path, wanted=1)
    assert [e.written.name for e in done] == [f"00{i}-image{i - 1}-blob.png" for i in (1, 2, 3)]
    for e in done:
        with Image.open(e.written) as png:
            assert png.size == (128, 128) and png.mode == "RGB"  # scaled up 4x, whole pixels
        assert e.explained == "blob" and abs(sum(p for _, p in e.top[:1]) - e.top[0][1]) < 1e-9


def test_without_grad_cam_explain_says_how_to_install_and_the_report_notes_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if missing
    with pytest.raises(BlitzError, match=r"pip install 'blitz\[explain\]'"):
        require_grad_cam()
    cfg = build_config("seed", {"data.image_size": 32})
    ckpt = Checkpoint.of(create_model("lenet", 2, 3), cfg, CLASSES)
    pngs, note = heat_map_pngs(ckpt, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), [0, 1])
    assert pngs == [] and "No heat maps" in note and "grad-cam" in note


@pytest.mark.subprocess
def test_training_does_not_import_grad_cam():
    code = "import sys, blitz.workflows.runs; sys.exit('pytorch_grad_cam' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.subprocess
def test_explain_command_end_to_end(tmp_path):
    model, _ = trained("lenet", 32, {})
    cfg = build_config("seed", {"data.image_size": 32, "data.mean": MEAN, "data.std": STD})
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "model.pt", Checkpoint.of(model, cfg, CLASSES))
    images, _ = blob_images(2, 32, seed=4, where=3)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(images):
        (tmp_path / "in" / f"../in/{i} $x.png").write_bytes(_png(image))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out" / "deep"
    result = run_blitz("explain", tmp_path / "run", tmp_path / "in", "--out", out, check=False)
    assert result.returncode == 1 and "skipped broken.png" in result.stderr.replace(
        str(tmp_path / "in") + "/", ""
    )
    written = sorted(p.name for p in out.iterdir())
    assert written == ["001-0_x-blob.png", "002-1_x-blob.png"], written
    assert "(heat map of blob)" in result.stdout
    again = run_blitz("explain", tmp_path / "run", tmp_path / "in" / "0 $x.png", "--out", out,
                      "--class", "plain")  # fmt: skip
    assert "001-0_x-plain.png" in again.stdout
    bad = run_blitz("explain", tmp_path / "run", tmp_path / "in", "--out", out, "--class", "blb",
                    check=False)  # fmt: skip
    assert bad.returncode == 2 and "did you mean blob" in bad.stderr
