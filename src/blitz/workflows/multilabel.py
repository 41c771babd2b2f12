"""The end of a multi-label run: the thresholds chosen on the validation set (never the test
set), the test's figures shown and recorded, the model saved with its thresholds; and the
same figures for ``blitz eval`` and ``blitz report`` of a finished run."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from blitz.config.checks import option_name
from blitz.config.settings import Config
from blitz.data.dataset import AnySplit, ImageData, label_text
from blitz.training.checkpoint import Checkpoint
from blitz.training.context import Log, RunContext
from blitz.training.distributed import SINGLE
from blitz.training.loop import Loop
from blitz.training.metrics import Metrics
from blitz.training.multilabel import (
    DEFAULT_THRESHOLD,
    MultiLabelScores,
    chance_note,
    choose_thresholds,
    format_scores,
    multilabel_scores,
    predicted_sets,
    split_logits,
)
from blitz.training.rundir import RunDir
from blitz.workflows.record import SAMPLES, publish, run_metrics, sample_rows


@dataclass
class Scored:
    """A multi-label set's logits, its labels, and its figures at the run's thresholds."""

    logits: torch.Tensor  # (N, K) float32, CPU
    labels: torch.Tensor  # (N, K) multi-hot
    scores: MultiLabelScores

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.sigmoid()


def score_split(
    model: nn.Module, split: AnySplit, cfg: Config, classes: list[str], thresholds, world=SINGLE
) -> Scored:
    """A split's figures at ``thresholds``."""
    logits, labels = split_logits(model, split, cfg, world)
    return Scored(logits, labels, multilabel_scores(logits.sigmoid(), labels, thresholds, classes))


def fit_thresholds(
    model: nn.Module, data: ImageData, cfg: Config, log: Log, world=SINGLE
) -> list[float]:
    """Per class, the threshold with the best F1 on the validation set (or ``train.threshold``
    for all); without a validation set apart from the test set, where they come from is said."""
    k, fixed = len(data.classes), cfg.train.threshold
    if data.val is None:
        log(
            f"no validation set to choose thresholds on: every class's is {DEFAULT_THRESHOLD} "
            f"(split one off with --val-fraction 0.1, or set {option_name('train.threshold')})"
        )
        return [DEFAULT_THRESHOLD if fixed == "auto" else float(fixed)] * k
    logits, labels = split_logits(model, data.val, cfg, world)
    chosen, absent = choose_thresholds(logits.sigmoid(), labels, fixed)
    if fixed != "auto":
        log(f"threshold {fixed} for every class ({option_name('train.threshold')})")
        return chosen
    where = "the validation set" + (", which is also the scored set" * data.test_is_val)
    flag = option_name("train.threshold")
    log(f"thresholds: one per class, for its best F1 on {where} ({flag} P: one for all)")
    if absent:
        names = ", ".join(repr(data.classes[c]) for c in absent[:10])
        log(
            f"note: the validation set has no image labelled {names}: {DEFAULT_THRESHOLD} for those"
        )
    return chosen


def finish_multilabel(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    loop: Loop,
    report: bool = True,
    on_result: Callable[[Metrics], None] | None = None,
) -> Metrics | None:
    """Choose the thresholds on validation, test, and (first process) show the results, save
    the model with its thresholds, write metrics.json, hand it to ``on_result``, then draw the
    pictures and the report."""
    classes = data.classes
    thresholds = fit_thresholds(loop.eval_net, data, ctx.cfg, ctx.log, ctx.world)
    started = time.perf_counter()
    test = score_split(loop.eval_net, data.test_set(), ctx.cfg, classes, thresholds, ctx.world)
    eval_seconds = time.perf_counter() - started
    validation = None
    if data.val is not None and not data.test_is_val:
        validation = score_split(loop.eval_net, data.val, ctx.cfg, classes, thresholds, ctx.world)
    run_dir = ctx.writes
    if run_dir is None:
        return None
    show_results(test, data, ctx.log)
    ctx.log("calibration: left out (temperature scaling calibrates a softmax over one class)")
    ckpt = Checkpoint.of(model, ctx.cfg, classes, thresholds=tuple(thresholds))
    run_dir.save_model(ckpt)
    metrics = run_metrics(ctx, data, model, loop, test_fields(test.scores), eval_seconds)
    if validation is not None:
        metrics.validation = {"accuracy": validation.scores.subset_accuracy,
                              **validation.scores.record()}  # fmt: skip
    publish(run_dir, metrics, on_result)
    save_training_grid(data, run_dir)
    save_test_grid(test, data, run_dir)
    if report:
        ctx.log(f"report: {write_report(run_dir, metrics, data.test_set(), test, ckpt)}")
    return metrics


def test_fields(scores: MultiLabelScores) -> dict[str, Any]:
    """The Metrics fields of a multi-label test (its accuracy is the subset accuracy)."""
    return {
        "test_accuracy": scores.subset_accuracy,
        "confusion_matrix": [],
        "per_class_accuracy": {},
        "macro_f1": scores.macro_f1,
        "per_class": scores.per_class,
        "task": "multi-label",
        "multilabel": scores.record(),
    }


def _sample_sets(test: Scored, data: ImageData) -> tuple[torch.Tensor, list[str], list[str]]:
    """The grid's test rows, and their true and predicted label sets as text."""
    rows = sample_rows(SAMPLES, len(test.labels))
    truth = label_text(test.labels[rows], data.classes)
    hot = predicted_sets(test.probs[rows], test.scores.thresholds).float()
    return rows, truth, label_text(hot, data.classes)


def show_results(test: Scored, data: ImageData, log: Log) -> None:
    """The test's figures on the terminal, after the sample images' true and predicted sets."""
    _, truth, guess = _sample_sets(test, data)
    log("\n".join(f"{t}  ->  {g}" for t, g in zip(truth, guess)))
    log(format_scores(test.scores, "validation" if data.test_is_val else "test"))
    if note := chance_note(test.scores, test.labels):  # said even under --quiet
        print(f"blitz: {note}", file=sys.stderr)


def save_test_grid(test: Scored, data: ImageData, run_dir: RunDir) -> None:
    """The sample test images, captioned true -> predicted label sets."""
    from blitz.outputs.plots import save_image_grid  # matplotlib and torchvision: seconds

    rows, truth, guess = _sample_sets(test, data)
    captions = [f"{t}\n→ {g}" for t, g in zip(truth, guess)]
    save_image_grid(data.test_set().images_at(rows), captions, run_dir.test_predictions)


def save_training_grid(data: ImageData, run_dir: RunDir) -> None:
    """The sample training images with their labels (the seed's first look at the data)."""
    from blitz.outputs.plots import save_image_grid  # matplotlib and torchvision: seconds

    rows = sample_rows(SAMPLES, len(data.train))
    names = label_text(data.train.labels[rows], data.classes)
    save_image_grid(data.train.images_at(rows), names, run_dir.train_images)


def write_report(run_dir: RunDir, metrics: Metrics, split: AnySplit, test: Scored,
                 ckpt: Checkpoint):  # fmt: skip
    """report.html of a multi-label run."""
    from blitz.outputs.multireport import write_multilabel_report

    return write_multilabel_report(run_dir, metrics, split, test.probs, test.labels, ckpt)


def eval_multilabel(ckpt: Checkpoint, model: nn.Module, data: ImageData, run_dir: RunDir,
                    log: Log) -> Scored:  # fmt: skip
    """``blitz eval`` of a multi-label run: its test set's figures at the run's thresholds."""
    thresholds = list(ckpt.model.thresholds)
    test = score_split(model, data.test_set(), ckpt.cfg, data.classes, thresholds)
    show_results(test, data, log)
    return test
