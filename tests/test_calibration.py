"""Calibration: the figures against a direct numpy computation, the temperature fitted on the
validation set alone (never the test set), stored in model.pt, used by predict, the API and the
ONNX export alike; --min-confidence abstains exactly below P."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import blitz
from blitz.errors import BlitzError
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.outputs.export import export_model, random_images, run_export
from blitz.outputs.predict import UNKNOWN, check_min_confidence, classify, decide
from blitz.outputs.trust import calibrated
from blitz.training import calibration
from blitz.training.calibration import (
    BINS,
    calibrate,
    calibration_figures,
    fit_temperature,
    logit_figures,
    risk_coverage,
)
from blitz.training.checkpoint import Checkpoint, _digest, load_checkpoint, save_checkpoint
from blitz.training.evaluate import score
from blitz.training.metrics import Metrics
from blitz.training.rundir import RunDir
from blitz.workflows.finished import eval_run
from conftest import run_blitz

# fixed probabilities: 3 classes, top probabilities on bin edges (1/3, 0.4, 0.6, 1.0) and inside
PROBS = np.array([
    [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.4, 0.4], [1.0, 0.0, 0.0], [0.34, 0.33, 0.33],
    [0.1, 0.85, 0.05], [0.25, 0.5, 0.25], [0.05, 0.15, 0.8], [0.45, 0.45, 0.1], [0.3, 0.3, 0.4],
])  # fmt: skip
LABELS = np.array([0, 1, 1, 0, 2, 1, 0, 2, 1, 2])


def numpy_reference(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """ECE and MCE as Guo et al. define them, NLL and Brier, written out directly."""
    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece, mce, counts = 0.0, 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        counts.append(int(inside.sum()))
        if inside.any():
            gap = abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
    nll = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    brier = np.mean(np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1))
    return {"ece": ece, "mce": mce, "nll": nll, "brier": brier, "bin_counts": counts}


@pytest.mark.parametrize("bins", [BINS, 10, 1])
def test_figures_match_a_direct_numpy_computation(bins):
    got = calibration_figures(torch.tensor(PROBS), torch.tensor(LABELS), bins)
    expected = numpy_reference(PROBS, LABELS, bins)
    assert got["bin_counts"] == expected["bin_counts"] and sum(got["bin_counts"]) == len(LABELS)
    for key in ("ece", "mce", "nll", "brier"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key


def test_figures_from_logits_are_those_of_their_softmax():
    logits = torch.randn(300, 7, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 7, (300,), generator=torch.Generator().manual_seed(1))
    for t in (1.0, 0.5, 2.5):
        probs = (logits.double() / t).softmax(1).numpy()
        got, expected = logit_figures(logits, labels, t), numpy_reference(probs, labels.numpy())
        assert got["bin_counts"] == expected["bin_counts"]
        for key in ("ece", "mce", "nll", "brier"):
            assert got[key] == pytest.approx(expected[key], rel=1e-9), key


def over_confident(count: int, seed: int, scale: float = 4.0):
    """Logits of a model right about 70 % of the time, ``scale`` times surer than it should
    be: scores z = noise + 1.5 on the true class have the posterior softmax(1.5 z) (a
    Gaussian's log-likelihood ratio), so T = ``scale`` calibrates ``scale`` * 1.5 z."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (count,), generator=g)
    z = torch.randn(count, 5, generator=g)
    z[torch.arange(count), labels] += 1.5
    return 1.5 * z * scale, labels


def test_the_temperature_lowers_validation_nll_and_keeps_every_prediction():
    logits, labels = over_confident(2000, seed=0)
    t = fit_temperature(logits, labels)
    assert 3.5 < t < 4.5  # the over-confidence it was given
    before, after = F.cross_entropy(logits, labels), F.cross_entropy(logits / t, labels)
    assert after < before - 0.1
    grid = [F.cross_entropy(logits / (t * f), labels) for f in (0.95, 1.05)]
    assert all(after <= g for g in grid)  # a minimum, not just lower
    result = score(logits, labels, 5)
    scaled = calibrated(result, labels, t)  # accuracy unchanged by construction
    assert torch.equal(scaled.predicted, result.predicted)
    assert torch.equal(scaled.matrix, result.matrix) and scaled.accuracy == result.accuracy
    assert logit_figures(logits, labels, t)["ece"] < logit_figures(logits, labels)["ece"] / 2


def test_a_well_calibrated_or_degenerate_set_keeps_a_sane_temperature():
    logits, labels = over_confident(2000, seed=1, scale=1.0)
    assert 0.9 < fit_temperature(logits, labels) < 1.1
    # every image right with a huge margin: NLL falls forever as T shrinks; the range stops it
    sure = torch.eye(3)[torch.arange(30) % 3] * 50
    assert fit_temperature(sure, torch.arange(30) % 3) >= calibration.TEMPERATURE_RANGE[0]


class Poisoned(torch.Tensor):
    """Test-set logits that fail if anything reads them while the temperature is fitted."""

    fitting = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if Poisoned.fitting:
            raise AssertionError("the test set was read while fitting the temperature")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_calibrate_fits_on_validation_and_never_reads_the_test_set(monkeypatch):
    val_logits, val_labels = over_confident(500, seed=2)
    test_logits, test_labels = over_confident(400, seed=3)
    seen = []

    def spy(logits, labels):
        seen.append(len(labels))
        Poisoned.fitting = True
        try:
            return fit_temperature(logits, labels)
        finally:
            Poisoned.fitting = False

    monkeypatch.setattr(calibration, "fit_temperature", spy)
    found = calibrate(test_logits.as_subclass(Poisoned), test_labels, val_logits, val_labels)
    assert seen == [500] and found.fitted_on == "validation"
    assert found.temperature == pytest.approx(fit_temperature(val_logits, val_labels))
    test = found.sets["test"]
    assert test["after"]["ece"] < test["before"]["ece"] and set(found.sets) == {
        "test",
        "validation",
    }
    record = json.loads(json.dumps(found.record()))  # as metrics.json holds it
    assert record["bins"] == BINS and record["test"]["before"]["bin_counts"]
    assert Metrics.from_dict(_metrics(calibration=record)).calibration == record


def test_without_a_validation_set_the_temperature_stays_one_and_says_why():
    logits, labels = over_confident(100, seed=4)
    found = calibrate(logits, labels, None, None)
    assert found.temperature == 1.0 and found.fitted_on is None
    assert "no validation set" in found.summary() and "after" not in found.sets["test"]


def test_too_few_or_only_right_validation_images_fit_no_temperature():
    logits, labels = over_confident(100, seed=5)
    few = calibrate(logits, labels, logits[:19], labels[:19])
    assert few.temperature == 1.0 and few.fitted_on is None and "19 validation images" in few.note
    assert calibrate(logits, labels, logits[:20], labels[:20]).fitted_on == "validation"
    right = logits.argmax(1) == labels
    sure = calibrate(logits, labels, logits[right], labels[right])  # T would fall to 0.05
    assert sure.temperature == 1.0 and "every validation image is predicted right" in sure.note
    assert "after" not in sure.sets["test"] and "probabilities are left as" in sure.summary()


def _metrics(**extra) -> dict:
    return {"test_accuracy": 0.5, "classes": ["a", "b"], "confusion_matrix": [[1, 0], [1, 0]],
            "per_class_accuracy": {"a": 1.0, "b": 0.0}, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "record",
    [{"temperature": "hot"}, {"temperature": 1.0, "test": [1]},
     {"temperature": 1.0, "test": {"before": {"ece": "x", "mce": 0, "nll": 0, "brier": 0}}}],
)  # fmt: skip
def test_a_metrics_file_with_broken_calibration_is_refused(record):
    with pytest.raises(BlitzError, match="calibration"):
        Metrics.from_dict(_metrics(calibration=record))


def test_risk_coverage_is_accuracy_of_the_most_confident():
    confidence = torch.tensor([0.9, 0.5, 0.99, 0.7])
    correct = torch.tensor([True, False, True, False])
    coverage, accuracy, threshold = risk_coverage(confidence, correct)
    assert coverage == [0.25, 0.5, 0.75, 1.0] and accuracy == [1.0, 1.0, 2 / 3, 0.5]
    assert threshold == pytest.approx([0.99, 0.9, 0.7, 0.5])


def _checkpoint(tmp_path, temperature: float) -> Checkpoint:
    cfg = build_config("fast-cpu", {"data.image_size": 16})
    torch.manual_seed(0)
    model = create_model("convnet", 4, 3, **cfg.model.options).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, Checkpoint.of(model, cfg, ["a", "b", "c", "d"], temperature=temperature))
    return load_checkpoint(path)


def test_a_checkpoint_keeps_its_temperature_and_an_older_one_loads_with_one(tmp_path):
    assert _checkpoint(tmp_path, 2.5).model.temperature == 2.5
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    del raw["model"]["temperature"]  # as blitz wrote it before temperature scaling
    raw["digest"] = _digest(raw)
    torch.save(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").model.temperature == 1.0
    raw["model"]["temperature"] = -1.0
    raw["digest"] = _digest(raw)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(BlitzError, match="model.temperature"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.slow
def test_predict_and_the_onnx_export_agree_on_calibrated_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = _checkpoint(tmp_path, 2.5)
    images = random_images(ckpt.model, 6, seed=5)
    arrays = list(images.permute(0, 2, 3, 1).numpy())
    model = ckpt.build_model()
    export_model(ckpt.model, model, "onnx", tmp_path / "m.onnx")
    exported = run_export("onnx", tmp_path / "m.onnx", images).softmax(1)
    predicted = classify(ckpt.model, model, list(range(6)), arrays, top_k=4)
    raw = classify(ckpt.model, model, list(range(6)), arrays, top_k=4, calibrated=False)
    for row, (_, top) in enumerate(predicted):
        by_class = dict(top)
        got = [by_class[c] for c in ckpt.model.classes]
        np.testing.assert_allclose(got, exported[row].numpy(), atol=1e-5)
    # the temperature did something: raw probabilities are sharper (T > 1)
    assert all(r[1][0][1] > p[1][0][1] for r, p in zip(raw, predicted))
    assert [r[1][0][0] for r in raw] == [p[1][0][0] for p in predicted]


def test_abstaining_happens_exactly_below_p():
    top = [("cat", 0.7), ("dog", 0.3)]
    assert decide(top, None) == "cat" and decide(top, 0.7) == "cat" and decide(top, 0.0) == "cat"
    assert decide(top, math.nextafter(0.7, 1)) == UNKNOWN and decide(top, 1.0) == UNKNOWN
    for bad in (-0.1, 1.5, math.nan, True):
        with pytest.raises(BlitzError, match="expected a probability in"):
            check_min_confidence(bad)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short run with a validation set, hence a fitted temperature."""
    root = tmp_path_factory.mktemp("calibrated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLITZ_DATA", str(root / "cache"))
        spied = []
        original = calibration.fit_temperature

        def spy(logits, labels):
            spied.append(len(labels))
            return original(logits, labels)

        mp.setattr(calibration, "fit_temperature", spy)
        trained = blitz.train("shapes:400", "fast-cpu", max_steps=150, val_fraction=0.25,
                              set={"train.min_steps": 0}, out=root / "run",
                              quiet=True)  # fmt: skip
    return trained, spied


@pytest.mark.slow
def test_a_run_fits_its_temperature_on_the_validation_images_and_records_it(run):
    trained, spied = run
    sets = trained.metrics.sets
    assert spied == [sets["val"]] and sets["val"] != sets["test"]  # not the test set
    record = trained.metrics.calibration
    temperature = load_checkpoint(trained.path / "model.pt").model.temperature
    assert record["temperature"] == pytest.approx(temperature, abs=1e-6) and temperature != 1.0
    assert record["fitted_on"] == "validation" and {"test", "validation"} <= set(record)
    val = record["validation"]
    assert val["after"]["nll"] <= val["before"]["nll"]
    page = (trained.path / "report.html").read_text()
    assert "Calibration and abstaining" in page and f"T = {temperature:.4g}" in page
    lines = []  # blitz eval says the same, with the temperature model.pt keeps
    eval_run(RunDir(trained.path), None, lines.append)
    after = f"{100 * record['test']['after']['ece']:.2f} %"
    assert any(line.startswith("calibration (test") and after in line for line in lines), lines


@pytest.mark.slow
def test_the_api_predicts_calibrated_raw_and_abstaining(run):
    trained, _ = run
    images = random_images(load_checkpoint(trained.path / "model.pt").model, 8, seed=2)
    calibrated_ = trained.predict(images, top_k=2)
    raw = trained.predict(images, top_k=2, calibrated=False)
    assert [p.top[0][0] for p in calibrated_] == [p.top[0][0] for p in raw]
    assert [p.probability for p in calibrated_] != [p.probability for p in raw]
    p = sorted(x.probability for x in calibrated_)[4]  # a middle one: some below, some not
    answered = trained.predict(images, min_confidence=p)
    assert [x.abstained for x in answered] == [x.probability < p for x in calibrated_]
    assert all((x.label == UNKNOWN) == x.abstained for x in answered)
    assert sum(x.abstained for x in answered) == 4
    just_above = trained.predict(images, min_confidence=math.nextafter(p, 1))
    assert sum(x.abstained for x in just_above) == 5  # the image at exactly p now abstains
    with pytest.raises(BlitzError, match="min_confidence"):
        trained.predict(images, min_confidence=2)


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_command_abstains_below_min_confidence_and_gives_raw(run, tmp_path):
    trained, _ = run
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    images = random_images(load_checkpoint(trained.path / "model.pt").model, 4, seed=9)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    found = trained.predict(folder)
    p = sorted(x.probability for x in found)[2]
    out = tmp_path / "p.csv"
    result = run_blitz("predict", trained.path, folder, "--min-confidence", repr(p), "--csv", out)
    assert result.stdout.count(f"{UNKNOWN} (below") == 2
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] == UNKNOWN for r in rows] == [x.probability < p for x in found]
    raw = run_blitz("predict", trained.path, folder, "--raw").stdout
    assert raw != run_blitz("predict", trained.path, folder).stdout
    bad = run_blitz("predict", trained.path, folder, "--min-confidence", "80", check=False)
    assert bad.returncode == 2 and "expected a probability in [0, 1]" in bad.stderr


@pytest.mark.slow
def test_the_api_explains_files_into_a_folder(run, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from PIL import Image

    trained, _ = run
    images = random_images(load_checkpoint(trained.path / "model.pt").model, 2, seed=4)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    written = trained.explain([tmp_path / "0.png", tmp_path / "1.png"], tmp_path / "heat")
    predicted = [p.label for p in trained.predict([tmp_path / "0.png", tmp_path / "1.png"])]
    assert [p.name for p in written] == [f"00{i + 1}-{i}-{c}.png" for i, c in enumerate(predicted)]
    other = trained.classes[-1]
    again = trained.explain(tmp_path / "0.png", tmp_path / "heat", class_name=other)
    assert again[0].name == f"001-0-{other}.png" and again[0].is_file()
    with pytest.raises(BlitzError, match="image files or folders"):
        trained.explain(images, tmp_path / "heat")
