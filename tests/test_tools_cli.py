"""The report, export and lr-find commands end to end, and the report in a real browser."""

import importlib.util
import re

import numpy as np
import pytest
import torch

from blitz.data.preprocess import normalize
from blitz.outputs.export import random_images, run_export
from blitz.training.checkpoint import load_checkpoint
from blitz.workflows.lrfind import has_diverged, smooth, suggest
from conftest import (
    folder_files,
    needs_browser,
    rendered_image_widths,
    run_blitz,
    screenshot,
    write_folder,
)

blitz = run_blitz


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run on generated data, shared by the tests here."""
    root = tmp_path_factory.mktemp("tools")
    args = ["--preset", "seed", "--data", "shapes:200", "--batch-size", "16", "--lr", "0.02"]
    args += ["--epochs", "2"]
    result = blitz(
        "train",
        *args,
        "--val-fraction",
        "0.1",
        "--out",
        root / "run",
        cache=root / "cache",
    )
    return root, result


@pytest.mark.slow
def test_train_prints_one_line_per_epoch_when_not_a_terminal(run):
    _, result = run
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ")
    assert "val accuracy" in lines[0] and "images/s" in lines[0]


@pytest.mark.slow
@pytest.mark.subprocess
def test_report_command_rebuilds_and_compares(run, tmp_path):
    root, _ = run
    (root / "run" / "report.html").unlink()
    result = blitz("report", root / "run", cache=root / "cache")
    assert "report.html" in result.stdout and (root / "run" / "report.html").is_file()
    out = tmp_path / "cmp.html"
    blitz("report", root / "run", root / "run", "--out", out, cache=root / "cache")
    assert "Settings" in out.read_text() and "identical" in out.read_text()
    assert "test ECE (before → after T)" in out.read_text()  # calibration, side by side
    missing = blitz("report", tmp_path, cache=root / "cache", check=False)
    assert missing.returncode == 2 and "metrics.json" in missing.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trip(run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    root, _ = run
    out = tmp_path / f"model.{fmt}"
    result = blitz("export", root / "run", "--format", fmt, "--out", out, cache=root / "cache")
    assert "max abs difference" in result.stdout and "uint8" in result.stdout
    ckpt = load_checkpoint(root / "run" / "model.pt")
    model = ckpt.build_model()
    images = random_images(ckpt.model, 7, seed=3)  # another batch size than at export time
    with torch.inference_mode():  # the export divides by the temperature fitted on val
        expected = model(normalize(images, ckpt.model.mean, ckpt.model.std))
        expected = expected / ckpt.model.temperature
    assert ckpt.model.temperature != 1.0
    got = run_export(fmt, out, images)
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.subprocess
def test_export_of_a_missing_run_is_a_clear_error(tmp_path):
    result = blitz("export", tmp_path / "nope", cache=tmp_path, check=False)
    assert result.returncode == 2 and "is not a folder: pass a run directory" in result.stderr


def test_smoothing_and_stop_rule_match_naive_code():
    losses = [2.0, 1.5, 1.2, 1.0, 5.0]
    beta, avg, naive = 0.9, 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        naive.append(avg / (1 - beta ** (i + 1)))
    assert smooth(losses, beta) == pytest.approx(naive)
    assert smooth([3.0])[0] == pytest.approx(3.0)  # bias-corrected: no pull towards zero
    assert has_diverged([1.0, 0.5, 2.5]) and not has_diverged([1.0, 0.5, 1.5])
    assert has_diverged([1.0, float("nan")])
    assert suggest([0.1, 1.0, 10.0], [2.0, 1.0, float("inf")]) == pytest.approx(0.1)


@pytest.mark.slow
@pytest.mark.subprocess
def test_lr_find_writes_a_plot_and_suggests_a_rate(tmp_path):
    out = tmp_path / "lr.png"
    result = blitz(
        "lr-find",
        "--data",
        "shapes:200",
        "--batch-size",
        "16",
        "--steps",
        "60",
        "--out",
        out,
        cache=tmp_path / "cache",
    )
    rate = float(re.search(r"suggested learning rate: (\S+)", result.stdout).group(1))
    assert 1e-7 < rate < 10 and out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_handles_many_images_in_batches(run, tmp_path):
    root, _ = run
    files = folder_files(per_class=100)  # 600 images, more than one batch of 256
    folder = write_folder(tmp_path / "many", files)
    result = blitz(
        "predict", root / "run", folder, "--csv", tmp_path / "p.csv", cache=root / "cache"
    )
    assert result.stdout.count(" %") == len(files)
    assert len((tmp_path / "p.csv").read_text().splitlines()) == len(files) + 1


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.subprocess
@needs_browser
def test_report_renders_in_a_real_browser(run, tmp_path):
    root, _ = run
    page = root / "run" / "report.html"
    widths = rendered_image_widths(page, tmp_path)
    html_text = page.read_text()
    assert len(widths) == html_text.count("<img ") and all(w > 0 for w in widths)  # all decoded
    # the figures (reliability diagram and risk-coverage curve among them), beside the worst
    # errors' thumbnails (32 px) and their Grad-CAM heat maps (128 px, where grad-cam is)
    figures = sum(w > 300 for w in widths)
    assert figures >= 7 and "Calibration and abstaining" in html_text
    if importlib.util.find_spec("pytorch_grad_cam"):
        assert sum(w == 128 for w in widths) == sum(w == 32 for w in widths) > 0
    shot = screenshot(page, tmp_path)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000
