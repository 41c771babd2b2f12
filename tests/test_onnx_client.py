"""The README's ten-line onnxruntime client, run as written on a real export and its
description (model.onnx.json), gives blitz predict's label and probability."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_blitz

README = Path(__file__).resolve().parents[1] / "README.md"


def client_code() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- onnx-client[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert found, "the README lost its onnxruntime client (or its onnx-client marker)"
    return found.group(1)


def test_the_readme_client_is_ten_lines():
    assert len(client_code().strip().splitlines()) == 10


def pictures(folder: Path) -> list[Path]:
    """A large sideways JPEG (decoded at a reduced scale, turned upright), a wide PNG, grey."""
    rng = np.random.default_rng(3)
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    big = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    big.save(folder / "big.jpg", quality=90, exif=exif)
    Image.fromarray(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (35, 35), dtype=np.uint8)).save(folder / "grey.png")
    return [folder / "big.jpg", folder / "wide.png", folder / "grey.png"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_client_gives_predicts_answer(tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    args = ["--preset", "seed", "--data", "shapes:100", "--epochs", "1", "--set", "train.tta=flip"]
    run_blitz("train", *args, "--out", run, cache=tmp_path / "cache")
    run_blitz("export", run, "--format", "onnx")
    script = tmp_path / "client.py"
    script.write_text(client_code().replace("runs/notebook", run.as_posix()))
    files = pictures(tmp_path / "images")
    run_blitz("predict", run, *files, "--csv", tmp_path / "p.csv")
    expected = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "p.csv").open())}
    for path in files:
        out = subprocess.run([sys.executable, script, path], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        label, probability = out.stdout.split()
        assert label == expected[path.name]["class_1"]
        assert abs(float(probability) - float(expected[path.name]["prob_1"])) <= 1e-4
