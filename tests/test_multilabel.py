"""Several labels per image: tables that list them, the task detected and said, the split kept
stratified by label, BCE training, the figures against scikit-learn's, thresholds from the
validation set only, and predict, export, serve and the report of a multi-label run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blitz
from blitz.config.data_settings import DataConfig
from blitz.config.loading import list_presets
from blitz.data.sources import load_data
from blitz.data.sources.shapes import CLASSES, MULTI_CLASSES, make_multishapes
from blitz.data.sources.table import read_table
from blitz.data.stratify import stratified_rows
from blitz.errors import BlitzError
from blitz.models import create_model, list_models
from blitz.models.configs import build_config
from blitz.training.context import RunContext, silent
from blitz.training.engine import build_loop
from blitz.training.loop import TrainHooks
from blitz.training.multilabel import (
    bce_loss,
    chance_note,
    choose_thresholds,
    multilabel_scores,
)
from blitz.training.progress import Progress
from blitz.training.step import train_step
from conftest import run_blitz

sk = pytest.importorskip("sklearn.metrics")
NAMES = list(CLASSES[:MULTI_CLASSES])
SHOWN = ["<circle>", *NAMES[1:]]  # a table's class names, one that HTML must escape


def write_images(folder: Path, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """``count`` multishapes images as PNG files in ``folder``: (file, its labels) each."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = make_multishapes(count, seed)
    rows = []
    for i, (image, hot) in enumerate(zip(images, labels)):
        name = f"{seed}_{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        rows.append((name, [SHOWN[c] for c in torch.nonzero(hot)[:, 0].tolist()]))
    return rows


def write_table(path: Path, rows: list[tuple], header: str = "path,labels") -> Path:
    path.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def tiny(tmp_path: Path, lines: list[str]) -> Path:
    """A table of its ``lines`` (after the header line) over black 8 px images."""
    for i in range(len(lines) - 1):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.csv"


# --- reading tables ---


def test_a_label_cell_that_lists_labels_is_multi_label_and_said(tmp_path):
    said = []
    rows = ["path,labels", "0.png,cat dog", "1.png,cat", "2.png,dog", "3.png,", "4.png,bird cat"]
    layout = read_table(tiny(tmp_path, rows), log=said.append).layout
    assert layout.classes == ["bird", "cat", "dog"]
    assert dict(layout.sets["train"]) == {
        "0.png": (1, 2), "1.png": (1,), "2.png": (2,), "3.png": (), "4.png": (0, 1),
    }  # fmt: skip
    assert "task multi-label (2 of 5 label cells list several, split by ' '" in said[0]
    said.clear()
    read_table(tiny(tmp_path, rows), "multi-label", log=said.append)
    assert said[0].endswith(": task multi-label (--task)")  # chosen, not found: no "to choose"


def test_one_0_1_column_per_class_is_multi_label(tmp_path):
    rows = ["path,cat,dog,split", "0.png,1,1,train", "1.png,0,0,train", "2.png,0,1,train"]
    layout = read_table(tiny(tmp_path, rows), log=silent).layout
    assert layout.classes == ["cat", "dog"]
    assert dict(layout.sets["train"]) == {"0.png": (0, 1), "1.png": (), "2.png": (1,)}


def test_another_delimiter_is_chosen_and_a_class_name_keeps_its_spaces(tmp_path):
    rows = ["path,labels", "0.png,sea lion;dog", "1.png,sea lion", "2.png,dog", "3.png,dog"]
    layout = read_table(tiny(tmp_path, rows), delimiter=";", log=silent).layout
    assert layout.classes == ["dog", "sea lion"]
    assert dict(layout.sets["train"])["0.png"] == (0, 1)


def test_class_names_with_spaces_stay_single_label_and_it_is_said(tmp_path):
    said = []
    rows = ["path,label", "0.png,golden retriever", "1.png,cat", "2.png,cat"]
    layout = read_table(tiny(tmp_path, rows), log=said.append).layout
    assert layout.classes == ["cat", "golden retriever"]
    assert "task single-label" in said[0] and "'golden retriever', read whole" in said[0]


@pytest.mark.parametrize(
    ("rows", "task", "message"),
    [
        (["path,labels", "0.png,cat dog", "1.png,cat", "2.png,dog", "3.png,cat;dog"], "auto",
         r"line 5: the label cell 'cat;dog' lists labels separated by ';', but "
         r"--label-delimiter \(data.label_delimiter\) is ' ' \(mixed delimiters"),
        (["path,labels", "0.png,", "1.png,"], "multi-label", "the label column is empty in every"),
        (["path,labels", "0.png,cat dog", "1.png,cat", "2.png,dog"], "single-label",
         "line 2: the label 'cat dog' lists several classes .* but the task is single-label"),
        (["path,label", "0.png,cat", "1.png,"], "auto",
         "line 3 has an empty label: .* allowed with --task multi-label"),
        (["path,label", "0.png,", "1.png,cat;dog", "2.png,cat", "3.png,dog"], "auto",
         "line 3: the label 'cat;dog' lists .* --task multi-label --label-delimiter ';'"),
        (["path,labels"], "auto", "has a header but no rows"),
        (["path,cat,dog", "0.png,1,2"], "auto", "class column 'dog' holds '2', not 0 or 1"),
        (["path,cat,dog", "0.png,1,0", "1.png,0,1"], "single-label", "one 0/1 column per class"),
    ],
)  # fmt: skip
def test_bad_multi_label_tables_are_clear_errors(tmp_path, rows, task, message):
    with pytest.raises(BlitzError, match=message):
        read_table(tiny(tmp_path, rows), task=task, log=silent)


def test_a_folder_is_never_read_as_multi_label():
    with pytest.raises(BlitzError, match="--task multi-label, but shapes gives each image one"):
        load_data(DataConfig(source="shapes:20", task="multi-label"), silent)
    with pytest.raises(BlitzError, match="--task single-label, but multishapes gives images"):
        load_data(DataConfig(source="multishapes:20", task="single-label"), silent)


# --- the split ---


def test_the_split_keeps_every_label_in_every_set_and_is_reproducible():
    labels = make_multishapes(300, 0)[1]
    labels[:2] = 0
    labels[0, 0] = 1  # ... and a label on one image only: no set but training can have it
    rare = torch.zeros(300, 1)
    rare[0] = 1
    labels = torch.cat([labels, rare], 1)
    picked = stratified_rows(labels, {"val": 0.1, "test": 0.2}, seed=3)
    assert sorted(torch.cat(list(picked.values())).tolist()) == list(range(300))
    assert [len(picked[r]) for r in ("train", "val", "test")] == [210, 30, 60]
    for role, rows in picked.items():
        present = labels[rows].sum(0)
        assert (present[:-1] > 0).all(), role
    assert labels[picked["train"], -1].sum() == 1
    again = stratified_rows(labels, {"val": 0.1, "test": 0.2}, seed=3)
    assert all(torch.equal(picked[r], again[r]) for r in picked)


def test_a_split_off_table_says_which_labels_a_set_lacks(tmp_path):
    rows = write_images(tmp_path, 40, seed=0)
    rows[0] = (rows[0][0], ["unique"])
    said = []
    table = write_table(tmp_path / "t.csv", [(f, " ".join(labels)) for f, labels in rows])
    data = load_data(DataConfig(source=str(table), workers=0), said.append)
    assert data.multi_label and data.train.labels.shape == (28, 7)
    assert any("the validation set has no image labelled 'unique'" in line for line in said)
    assert any("split 40 training images, stratified by label" in line for line in said)


def test_a_streamed_multi_label_table_loads_multi_hot_batches(tmp_path):
    rows = write_images(tmp_path, 30, seed=0)
    table = write_table(tmp_path / "t.csv", [(f, " ".join(labels)) for f, labels in rows])
    data = load_data(DataConfig(source=str(table), workers=0, max_memory="0"), silent)
    assert data.train.storage == "streamed from disk" and data.multi_label
    _, images, labels = next(data.train.load([torch.arange(4)], torch.device("cpu")))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 6)
    names = [name for name, _ in rows]
    first = data.train.row_ids("train")[0]
    expected = {label for name, labels in rows if name == first for label in labels}
    assert {data.classes[c] for c in torch.nonzero(labels[0])[:, 0].tolist()} == expected
    assert first in names


def test_other_data_is_scored_with_its_labels_in_the_runs_order():
    from blitz.data.dataset import ImageData, Split
    from blitz.data.roles import as_test_set

    split = Split(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([[1.0, 0], [1, 1]]))
    other = as_test_set(ImageData("t", ["b", "a"], split), ["a", "b", "c"], silent)
    assert other.test_set().labels.tolist() == [[0, 1, 0], [1, 1, 0]]


# --- training and figures ---


def test_bce_with_balanced_positive_weights():
    logits, targets = torch.randn(8, 3), (torch.rand(8, 3) > 0.5).float()
    cfg = build_config("seed").optim
    weights = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=weights
    )
    assert torch.allclose(bce_loss(logits, targets, cfg, weights), expected)


def random_predictions(n: int = 200, k: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, k, generator=gen) < 0.3).float()
    probs = (0.5 * labels + 0.7 * torch.rand(n, k, generator=gen)).clamp(0, 1)
    return probs, labels


def test_every_figure_is_scikit_learns_on_the_same_predictions():
    probs, labels = random_predictions()
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    got = multilabel_scores(probs, labels, thresholds, list("abcde"), digits=12)
    y, p = labels.numpy().astype(int), probs.numpy()
    guess = (p >= np.array(thresholds)).astype(int)
    assert got.map == pytest.approx(sk.average_precision_score(y, p, average="macro"))
    assert got.micro_f1 == pytest.approx(sk.f1_score(y, guess, average="micro"))
    assert got.macro_f1 == pytest.approx(sk.f1_score(y, guess, average="macro"))
    assert got.subset_accuracy == pytest.approx(sk.accuracy_score(y, guess))
    assert got.hamming_loss == pytest.approx(sk.hamming_loss(y, guess))
    precision, recall, f1, support = sk.precision_recall_fscore_support(y, guess)
    for c, name in enumerate("abcde"):
        row = got.per_class[name]
        assert row["precision"] == pytest.approx(precision[c])
        assert row["recall"] == pytest.approx(recall[c])
        assert row["f1"] == pytest.approx(f1[c])
        assert row["support"] == support[c]
        assert row["ap"] == pytest.approx(sk.average_precision_score(y[:, c], p[:, c]))


def test_each_threshold_gives_its_class_the_best_f1_of_any_cut():
    probs, labels = random_predictions(seed=1)
    chosen, absent = choose_thresholds(probs, labels, "auto")
    assert absent == []
    for c, threshold in enumerate(chosen):
        y, p = labels[:, c].numpy(), probs[:, c].numpy()
        best = max(sk.f1_score(y, p >= cut, zero_division=0) for cut in np.unique(p))
        assert sk.f1_score(y, p >= threshold) == pytest.approx(best)
    assert choose_thresholds(probs, labels, 0.25)[0] == [0.25] * 5
    edge = torch.tensor([[0.9], [0.8], [0.3], [0.2]]), torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    assert choose_thresholds(*edge, "auto")[0] == [pytest.approx(0.55)]  # not 0.8: no image on it


def test_a_class_without_positives_keeps_the_default_threshold():
    probs, labels = random_predictions(k=3)
    labels[:, 1] = 0
    chosen, absent = choose_thresholds(probs, labels, "auto")
    assert absent == [1] and chosen[1] == 0.5


CASES = [*(("seed", {"model.name": name}) for name in list_models()),
         *((preset, {}) for preset in sorted(list_presets()))]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "overrides"), CASES, ids=lambda c: str(c))
def test_every_model_and_preset_trains_a_multi_label_step(preset, overrides):
    if preset == "finetune":
        pytest.importorskip("timm")
    settings = {"data.source": "multishapes:10", "train.compile": False, **overrides}
    cfg = build_config(preset, settings)
    data = load_data(cfg.data, silent)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 6, 3, **cfg.model.options)
    ctx = RunContext(cfg, torch.device("cpu"), log=silent, quiet=True)
    loop = build_loop(ctx, data, model, Progress(cfg, silent, True), TrainHooks())
    rows = torch.arange(4)
    images, labels = data.train.images_at(rows), data.train.labels[rows]
    loss, logits = train_step(loop, rows, images, labels, 1.0)
    assert loop.multi_label and logits.shape == (4, 6) and torch.isfinite(loss)


def test_settings_made_for_one_class_per_image_are_refused_or_said():
    from blitz.training.multilabel import check_settings

    said = []
    cfg = build_config("seed", {"data.mixup": 0.2, "optim.class_weights": "balanced"})
    check_settings(cfg, True, said.append)
    assert "MixUp and CutMix are turned off" in said[0] and "pos_weight" in said[1]
    with pytest.raises(BlitzError, match="--sampler .* does not apply to multi-label"):
        check_settings(build_config("seed", {"train.sampler": "balanced"}), True, silent)
    with pytest.raises(BlitzError, match="--loss .* does not apply to multi-label"):
        check_settings(build_config("seed", {"optim.loss": "mse"}), True, silent)
    with pytest.raises(BlitzError, match="--threshold .* is for multi-label data only"):
        check_settings(build_config("seed", {"train.threshold": 0.4}), False, silent)


# --- whole runs ---


@pytest.mark.slow
def test_multishapes_trains_to_a_macro_map_of_at_least_0_9(tmp_path):
    run = blitz.train(data="multishapes:2000", out=tmp_path / "run", quiet=True)
    assert run.metrics.multi_label and run.metrics.multilabel["map"] >= 0.9
    assert run.metrics.test_accuracy == run.metrics.multilabel["subset_accuracy"]


def split_table(root: Path, poison: bool = False) -> Path:
    """A table with train, val and test rows; ``poison``: every test row's labels inverted."""
    rows = []
    for role, count, seed in (("train", 300, 0), ("val", 60, 1), ("test", 60, 2)):
        for file, labels in write_images(root, count, seed):
            if poison and role == "test":
                labels = [n for n in SHOWN if n not in labels] or [SHOWN[0]]
            rows.append((file, " ".join(labels), role))
    return write_table(root / ("poisoned.csv" if poison else "t.csv"), rows, "path,labels,split")


SHORT = {"preset": "fast-cpu", "max_steps": 40, "quiet": True}


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    run = blitz.train(data=str(split_table(root / "data")), out=root / "run", **SHORT)
    return root, run


@pytest.mark.slow
def test_thresholds_come_from_the_validation_set_only(table_run, tmp_path):
    root, run = table_run
    poisoned = split_table(root / "data", poison=True)
    other = blitz.train(data=str(poisoned), out=tmp_path / "run", **SHORT)
    assert run.metrics.multilabel["map"] != other.metrics.multilabel["map"]  # the test differs
    mine, theirs = (r._checkpoint.model.thresholds for r in (run, other))
    assert len(mine) == 6 and mine == theirs
    record = json.loads((run.path / "metrics.json").read_text())
    assert record["multilabel"]["thresholds"] == pytest.approx(list(mine), abs=1e-6)
    assert record["task"] == "multi-label"


@pytest.mark.slow
def test_predict_answers_every_label_over_its_threshold(table_run, tmp_path):
    root, run = table_run
    files = sorted((root / "data").glob("2_*.png"))[:6]
    found = run.predict(files)
    cut = dict(zip(run.classes, run._checkpoint.model.thresholds))
    for prediction in found:
        assert len(prediction.top) == 6
        assert prediction.labels == [c for c, p in prediction.top if p >= cut[c]]
    out = tmp_path / "p.csv"
    run_blitz("predict", run.path, *files, "--csv", out)
    rows = list(csv.DictReader(out.open()))
    assert [row["labels"].split() for row in rows] == [p.labels for p in found]


@pytest.mark.slow
def test_export_matches_pytorch_and_lists_the_thresholds(table_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from blitz.outputs.export import Deployable, random_images, run_export

    _, run = table_run
    path = run.export("onnx", tmp_path / "model.onnx")
    facts = run._checkpoint.model
    images = random_images(facts, 4, seed=1)
    with torch.no_grad():
        expected = Deployable(run.model, facts)(images)
    assert torch.allclose(run_export("onnx", path, images), expected, atol=1e-4)
    described = json.loads(path.with_name("model.onnx.json").read_text())
    assert described["task"] == "multi-label" and list(described["thresholds"]) == run.classes
    assert described["output"]["probabilities"].startswith("sigmoid")


@pytest.mark.slow
@pytest.mark.subprocess
def test_serve_answers_label_sets(table_run):
    from test_serve import Server

    root, run = table_run
    files = sorted((root / "data").glob("2_*.png"))[:3]
    expected = [p.labels for p in run.predict(files)]
    server = Server(run.path).wait_ready()
    try:
        sent = [("files", (f.name, f.read_bytes())) for f in files]
        answers = server.post(files=sent).json()["predictions"]
    finally:
        server.stop()
    assert [a["labels"] for a in answers] == expected


@pytest.mark.slow
def test_eval_report_and_sets_of_a_multi_label_run(table_run):
    root, run = table_run
    scores = run.evaluate(quiet=True)
    assert scores.map == pytest.approx(run.metrics.multilabel["map"], abs=1e-5)
    quiet = run_blitz("eval", run.path, "--quiet").stdout.splitlines()
    assert len(quiet) == 1 and quiet[0].startswith("multi-label figures on the test set: macro mAP")
    page = run.report().read_text()
    assert "AP per class" in page and "precision-recall curves" in page
    assert "Worst predictions" in page and " → " in page
    assert "&lt;circle&gt;" in page and "<circle>" not in page
    out = root / "compare.html"
    run_blitz("report", run.path, run.path, "--out", out)
    compared = out.read_text()
    shown = f"{100 * run.metrics.multilabel['map']:.2f} %"
    assert f"<tr><td>macro mAP</td><td>{shown}</td><td>{shown}</td></tr>" in compared
    assert "<td>AP: &lt;circle&gt;</td>" in compared
    sets = (run.path / "sets.csv").read_text().splitlines()
    assert sets[0] == "set,class,image" and '"[""' in sets[1]


# SIGTERM at the start of step AT: the run saves its checkpoint and stops, to be resumed
STOP_AT = """
import os, sys
from blitz import cli
from blitz.training import step
at, calls, original = int(sys.argv[1]), [0], step.bce_loss
def stopping(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), 15)
    return original(*args, **kwargs)
step.bce_loss = stopping
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_stopped_multi_label_run_resumes_to_the_same_model(tmp_path):
    import os
    import subprocess
    import sys

    from test_faults import finished, start_blitz, wait_all

    train = ["train", "--preset", "seed", "--data", "multishapes:220", "--val-fraction", "0.1",
             "--batch-size", "16", "--epochs", "2", "--lr", "0.05", "--checkpoint-every", "5",
             "--quiet"]  # fmt: skip
    cache, alone, stopped = tmp_path / "cache", tmp_path / "alone", tmp_path / "stopped"
    env = {**os.environ, "BLITZ_DATA": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", STOP_AT, "12", *train, "--out", str(stopped)]
    stopping = subprocess.Popen(command, env=env, text=True, stderr=subprocess.PIPE)
    ran = wait_all([start_blitz([*train, "--out", alone], cache), stopping])
    assert ran[0][0] == 0 and ran[1][0] != 0 and not (stopped / "metrics.json").exists()
    resumed = wait_all([start_blitz(["train", "--resume", stopped, "--quiet"], cache)])
    assert resumed[0][0] == 0, resumed[0][1]
    (weights_a, metrics_a), (weights_b, metrics_b) = finished(alone), finished(stopped)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a["multilabel"] == metrics_b["multilabel"] and metrics_a["task"] == "multi-label"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_give_one_process_figures_and_thresholds(tmp_path):
    args = ["train", "--data", "multishapes:300", "--val-fraction", "0.1", "--preset", "seed",
            "--batch-size", "16", "--max-steps", "20", "--quiet"]  # fmt: skip
    found = []
    for out, extra in (("one", []), ("two", ["--devices", "2"])):
        run_blitz(*args, *extra, "--out", tmp_path / out, cache=tmp_path / "cache")
        found.append(json.loads((tmp_path / out / "metrics.json").read_text())["multilabel"])
    assert found[0] == found[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_multi_label_run_prints_its_result_before_importing_what_draws(tmp_path):
    from test_startup import DRAWING, TRAINING, python

    code = TRAINING.replace("{drawing}", repr(DRAWING)).replace(
        "runs.save_grids = grids",
        "runs.finish_multilabel.__globals__['save_training_grid'] = grids",
    )
    args = ["train", "--data", "multishapes:60", "--max-steps", "2", "--out", str(tmp_path / "r")]
    lines = python(code, *args).splitlines()
    result = next(i for i, line in enumerate(lines) if "| run directory: " in line)
    assert lines[result].startswith("test macro mAP ")
    assert lines[result + 1] == "imported before the result: []"


def test_a_model_no_better_than_random_scores_is_said_to_have_learned_nothing():
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, 4, generator=gen) < 0.3).float()
    names = ["a", "b", "c", "d"]
    random = multilabel_scores(torch.rand(400, 4, generator=gen), labels, [0.5] * 4, names)
    note = chance_note(random, labels)
    assert note is not None and "learned nothing useful" in note and "averaged: 3" in note
    learned = labels * 0.8 + torch.rand(400, 4, generator=gen) * 0.2  # positives score higher
    assert chance_note(multilabel_scores(learned, labels, [0.5] * 4, names), labels) is None
