"""blitz doctor: each finding on planted problems (a copy across the sets, a near copy, a wrong
label, a corrupt file, an odd image, an imbalance), no false copies on clean data, the page in
a real browser, and ``blitz train --exclude`` dropping exactly the images listed."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blitz import cli
from blitz.config.data_settings import DataConfig
from blitz.data.dataset import silent
from blitz.data.exclude import read_excluded
from blitz.data.roles import record
from blitz.data.sources import load_data
from blitz.data.sources.shapes import CLASSES, make_shapes
from blitz.diagnosis.balance import class_name_findings
from blitz.diagnosis.check import Checks, diagnose
from blitz.diagnosis.duplicates import near_pairs
from blitz.diagnosis.labels import fold_of_rows, label_findings
from conftest import needs_browser, rendered_image_widths, run_blitz, screenshot

COPY_KINDS = {"leak", "near-leak", "two-labels", "duplicate", "near-duplicate"}
HOSTILE = "<img src=x onerror=alert(1)>.png"  # a file name that must never become HTML


def write_shapes(root: Path, train: int = 300, test: int = 60) -> Path:
    """A clean image folder: train/ and test/ of the generated shapes, as PNG files."""
    for role, count, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = make_shapes(count, seed)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            path = root / role / CLASSES[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return root


COLOURS = {"red": (200, 50, 50), "green": (50, 190, 60), "blue": (50, 60, 200), "grey": (128,) * 3}


def write_colours(root: Path, train: int = 40, test: int = 10) -> Path:
    """An image folder a cheap model learns in a few steps: classes by colour, each image a
    smooth random texture of its class's colour (no two alike)."""
    rng = np.random.default_rng(0)
    for role, count in (("train", train), ("test", test)):
        for name, colour in COLOURS.items():
            for i in range(count):
                texture = np.array(colour) + rng.normal(0, 45, (8, 8, 3))
                small = Image.fromarray(texture.clip(0, 255).astype(np.uint8))
                path = root / role / name / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                small.resize((32, 32), Image.Resampling.BILINEAR).save(path)
    return root


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def plant(root: Path) -> dict[str, str]:
    """Plant one of each problem in a colour folder; returns kind -> the image it names."""
    shutil.copy(_first(root / "test/red"), root / "train/red" / HOSTILE)
    near = Image.open(_first(root / "test/green")).resize((64, 64), Image.Resampling.BICUBIC)
    near.save(root / "train/green/near.jpg", "JPEG", quality=70)  # resized and re-encoded
    shutil.move(_first(root / "train/red"), root / "train/blue/wrong.png")
    (root / "train/green/corrupt.png").write_bytes(_first(root / "train/green").read_bytes()[:200])
    shutil.copy(_first(root / "train/blue"), root / "train/red/twice.png")
    for extra in sorted((root / "train/grey").iterdir())[8:]:  # 8 of them, the others 40
        extra.unlink()
    Image.new("RGB", (200, 40), (128, 128, 128)).save(root / "train/grey/wide.png")
    return {
        "leak": f"train/red/{HOSTILE}",
        "near-leak": "train/green/near.jpg",
        "label": "train/blue/wrong.png",
        "unreadable": "train/green/corrupt.png",
        "two-labels": "train/red/twice.png",
        "odd-image": "train/grey/wide.png",
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = write_colours(tmp_path_factory.mktemp("doctor") / "data")
    return root, plant(root)


@pytest.fixture(scope="module")
def doctored(planted, tmp_path_factory) -> tuple[Path, dict[str, str], Path, str]:
    """``blitz doctor`` run on the planted folder, as a user runs it."""
    root, expected = planted
    out = tmp_path_factory.mktemp("doctor-out")
    cache = tmp_path_factory.mktemp("cache")
    # 300 steps a fold (fast-cpu's own budget is 150): at 100-150 steps the wrong label's 'red'
    # stays just under confident learning's threshold for 'red' (which twice.png, a blue image
    # labelled red, lowers); at 200 and 300 both planted label errors are found
    result = run_blitz("doctor", root, "--out", out, "--folds", "2", "--steps", "300", cache=cache)
    return root, expected, out, result.stdout


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_planted_problem_is_found_without_training(planted):
    root, expected = planted
    found = diagnose(str(root), None, Checks(folds=0), silent)
    kinds = {(f.kind, f.image) for f in found.findings}
    for kind, image in expected.items():
        if kind != "label":  # the label check trains: see the test of the command
            assert (kind, image) in kinds, kind
    leak = next(f for f in found.findings if f.kind == "leak")
    assert leak.other.startswith("test/red/") and leak.role == "train"
    assert found.findings[0].kind == "leak"  # leakage first
    balance = [f.detail for f in found.findings if f.kind == "imbalance"]
    assert any("grey" in detail and "training set" in detail for detail in balance)
    for detail in (d for d in balance if "imbalanced" in d):  # counts named as their set's
        assert f"{detail.split(' set:')[0]} images per class" in detail, detail
    assert "the training images' labels were not checked (--folds 0)" in found.notes


@pytest.mark.slow
def test_clean_data_gives_no_copy_findings(tmp_path):
    folder = diagnose(str(write_shapes(tmp_path / "clean")), None, Checks(folds=0), silent)
    in_memory = diagnose("shapes:600", None, Checks(folds=0), silent)
    for found in (folder, in_memory):
        assert found.images > 0
        assert not [f for f in found.findings if f.kind in COPY_KINDS | {"unreadable"}]


def test_near_pairs_match_a_naive_comparison():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = (np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64)) * (rng.random(40) < 0.5)
    hashes = np.concatenate([base, base ^ flips.astype(np.uint64)])  # half a bit apart
    naive = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(len(hashes)) for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 3
    }  # fmt: skip
    assert set(near_pairs(hashes, 3)) == naive and len(naive) >= 40


def test_class_names_that_differ_in_case_or_punctuation_are_found():
    (found,) = class_name_findings(["cat", "Cat", "dog", "hot_dog", "hot-dog"])
    assert "'cat' and 'Cat'" in found.detail and "'hot_dog' and 'hot-dog'" in found.detail
    assert not class_name_findings(["cat", "dog"])


def test_folds_are_stratified_and_cover_every_row():
    labels = torch.arange(103) % 4
    fold = fold_of_rows(labels, 5)
    for label in range(4):
        per_fold = torch.bincount(fold[labels == label], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1
    assert sorted(fold.unique().tolist()) == list(range(5))


def test_label_findings_flag_a_confidently_contradicted_label():
    data = load_data("shapes:100", silent)
    gen = torch.Generator().manual_seed(0)
    probabilities = {}
    wrong = 7
    for role, split in data.sets().items():
        labels = split.labels
        # right and sure of it, with some noise so that no two rows are alike
        noise = 0.1 * torch.rand(len(labels), 10, generator=gen)
        probs = 0.8 * torch.nn.functional.one_hot(labels, 10) + noise
        if role == "train":
            truth = (int(labels[wrong]) + 1) % 10
            probs[wrong] = 0.01
            probs[wrong, truth] = 0.91
        probabilities[role] = probs / probs.sum(1, keepdim=True)
    found = label_findings(data, probabilities)
    image = data.train.row_ids("train")[wrong]
    assert [f.image for f in found] == [image]
    assert found[0].suggested == CLASSES[(int(data.train.labels[wrong]) + 1) % 10]
    assert found[0].score > 0.9


def test_read_excluded_takes_doctor_csv_sets_csv_and_plain_lists(tmp_path):
    doctor_csv = tmp_path / "doctor.csv"
    doctor_csv.write_text("kind,image,set\nleak,train/a.png,train\nimbalance,,train\n")
    sets_csv = tmp_path / "sets.csv"
    sets_csv.write_text("set,class,image\ntrain,cat,train/b.png\n")
    plain = tmp_path / "list.txt"
    plain.write_text("# left out by hand\ntrain/c.png\n\n  test/d.png  \n")
    assert read_excluded(doctor_csv) == {"train/a.png"}
    assert read_excluded(sets_csv) == {"train/b.png"}
    assert read_excluded(plain) == {"train/c.png", "test/d.png"}


def test_exclude_drops_exactly_the_listed_images(tmp_path):
    whole = record(load_data("shapes:200", silent))
    ids = [image for rows in whole.values() for image, _ in rows]
    listed = set(random.Random(0).sample(ids, 25)) | {"train/nonexistent"}
    (tmp_path / "list.txt").write_text("\n".join(sorted(listed)) + "\n")
    lines = []
    data = load_data(
        DataConfig(source="shapes:200", exclude=str(tmp_path / "list.txt")), lines.append
    )
    kept = record(data)
    for role, rows in whole.items():
        assert [r for r in rows if r[0] not in listed] == kept[role]  # order and labels kept
    assert data.excluded == sorted(listed - {"train/nonexistent"})
    assert "left out 25 images" in lines[-1] and "1 it names are not in shapes" in lines[-1]


def test_doctor_refuses_bad_input_clearly(tmp_path, capsys):
    assert cli.main(["doctor", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["doctor", "shapes:100", "--folds", "1"]) == 2
    assert "--folds 1" in capsys.readouterr().err
    assert cli.main(["doctor", "shapes:100", "--run", str(tmp_path)]) == 2
    assert "drop DATA" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["doctor", "shapes:100", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_command_finds_each_planted_problem_and_the_wrong_label(doctored):
    _, expected, out, stdout = doctored
    rows = _rows(out / "doctor.csv")
    kinds = {(row["kind"], row["image"]) for row in rows}
    assert set(expected.items()) <= kinds
    wrong = next(row for row in rows if row["image"] == expected["label"])
    assert wrong["label"] == "blue" and wrong["suggested"] == "red"
    assert rows[0]["kind"] == "leak" and "Same image in two sets (leakage): 1" in stdout
    assert "wrote" in stdout and (out / "doctor.html").is_file()
    assert "cross-validated fast-cpu models agree with" in stdout  # how far to trust them


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_page_escapes_names_and_shows_each_finding(doctored):
    _, expected, out, _ = doctored
    page = (out / "doctor.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    for image in expected.values():
        if image != expected["leak"]:
            assert image in page
    assert page.count("<script") == 1  # the report's own image check, and nothing else


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.subprocess
@needs_browser
def test_the_page_renders_in_a_real_browser(doctored, tmp_path):
    _, _, out, _ = doctored
    page = out / "doctor.html"
    widths = rendered_image_widths(page, tmp_path)
    assert len(widths) == page.read_text(encoding="utf-8").count("<img ") >= 8  # 3 pairs, 2 more
    assert all(w > 0 for w in widths)  # every thumbnail decoded
    shot = screenshot(page, tmp_path)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_exclude_leaves_out_what_doctor_csv_lists(doctored, tmp_path):
    root, expected, out, _ = doctored
    listed = {row["image"] for row in _rows(out / "doctor.csv") if row["image"]}
    run = tmp_path / "run"
    common = ["train", "--data", root, "--max-steps", "3", "--skip-bad-images", "--quiet"]
    run_blitz(*common, "--exclude", out / "doctor.csv", "--out", run, cache=tmp_path / "c")
    run_blitz(*common, "--out", tmp_path / "whole", cache=tmp_path / "c")
    kept = {row["image"] for row in _rows(run / "sets.csv")}
    whole = {row["image"] for row in _rows(tmp_path / "whole" / "sets.csv")}
    assert kept == whole - listed and expected["leak"] in whole - kept
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["excluded"] == sorted(listed & whole)
    assert json.loads((run / "config.json").read_text())["data"]["exclude"]
    assert (root / expected["label"]).is_file()  # nothing deleted or moved
    # the cheap check every run makes: the leaked copy is warned of, in the report too
    assert metrics["copies"] == {} and "copies of training images" not in (
        run / "report.html").read_text(encoding="utf-8")  # fmt: skip
    whole_metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert whole_metrics["copies"] == {"test": 1}
    assert "copies of training images" in (tmp_path / "whole" / "report.html").read_text()
    assert "left out (--exclude)" in (run / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_runs_own_model_checks_its_test_images(tmp_path):
    import blitz

    root = write_shapes(tmp_path / "data", train=200, test=40)
    run = blitz.train(data=root, max_steps=60, out=tmp_path / "run", quiet=True)
    found = blitz.doctor(run=run.path, folds=0, out=tmp_path / "doc", quiet=True)
    assert found.run == str(run.path) and found.images == 240
    assert (tmp_path / "doc" / "doctor.csv").is_file()
    assert not [f for f in found.findings if f.kind == "label" and f.role == "train"]
