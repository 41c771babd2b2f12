"""``report.html`` of a multi-label run: its figures (mAP, F1, subset accuracy, Hamming loss),
per-class AP bars and precision-recall curves, a table of the classes, and the worst-predicted
images with their true and predicted label sets (every string escaped)."""

from __future__ import annotations

import html
from pathlib import Path

import torch
import torch.nn.functional as F

from blitz.data.dataset import AnySplit, label_text
from blitz.outputs.html import img, page, section, table
from blitz.outputs.plots import per_class_png, pr_curves_png
from blitz.outputs.predict import printable
from blitz.outputs.report import (
    FIGURE_CLASSES,
    WORST,
    curves_of,
    data_section,
    files_section,
    read_settings,
    scored_set,
    summary_rows,
    thumbnail,
)
from blitz.training.checkpoint import Checkpoint
from blitz.training.metrics import Metrics
from blitz.training.multilabel import FIGURES, NAMES, predicted_sets
from blitz.training.rundir import RunDir
from blitz.utils.writes import write_atomic

CLASS_HEAD = ("class", "precision", "recall", "F1", "AP", "support", "threshold")


def write_multilabel_report(
    run_dir: RunDir,
    metrics: Metrics,
    test: AnySplit,
    probs: torch.Tensor,
    labels: torch.Tensor,
    ckpt: Checkpoint,
) -> Path:
    """``RUN_DIR/report.html`` from the run's metrics and its test set's probabilities."""
    cfg = read_settings(run_dir)
    config = cfg.to_dict() if cfg else {}
    head = f"{metrics.model} on {metrics.data}: {scored_set(metrics)} macro mAP "
    subtitle = html.escape(head) + f"<b>{100 * metrics.multilabel['map']:.2f} %</b>"
    sections = [
        section("Summary", table(summary_rows(metrics, config))),
        data_section(metrics, cfg),
        section("Training curves", img(curves_of(run_dir, metrics), "training curves")),
        _results_section(metrics, probs, labels),
        _worst_section(metrics, test, probs, labels, list(ckpt.model.thresholds)),
        files_section(run_dir, metrics),
    ]
    text = page(f"blitz run {run_dir.path.name}", subtitle, sections)
    write_atomic(run_dir.report, printable(text).encode())
    return run_dir.report


def _results_section(metrics: Metrics, probs: torch.Tensor, labels: torch.Tensor) -> str:
    from sklearn.metrics import precision_recall_curve

    record, classes = metrics.multilabel, metrics.classes
    shares = [(NAMES[key], f"{100 * record[key]:.2f} %") for key in FIGURES[:-1]]
    rows = [*shares, (NAMES["hamming_loss"], f"{record['hamming_loss']:.4f}")]
    per_class = record["per_class"]
    figures = [(c, *(per_class[c][k] for k in ("precision", "recall", "f1", "ap", "support",
                                                "threshold"))) for c in classes]  # fmt: skip
    shown = sorted(range(len(classes)), key=lambda c: per_class[classes[c]]["ap"])
    shown = shown[:FIGURE_CLASSES]  # the worst, where there are many
    bars = per_class_png([classes[c] for c in shown],
                         [per_class[classes[c]]["ap"] for c in shown], "AP")  # fmt: skip
    curves = {}
    for c in shown[: min(len(shown), 20)]:  # a legible plot: the 20 worst classes
        if labels[:, c].any():
            precision, recall, _ = precision_recall_curve(labels[:, c].numpy(), probs[:, c].numpy())
            curves[classes[c]] = (recall.tolist(), precision.tolist())
    body = (
        table(rows)
        + "<div class='row'><div>"
        + img(bars, "AP per class")
        + "</div><div>"
        + img(pr_curves_png(curves), "precision-recall curves")
        + "</div></div><h3>Per class</h3><p class='note'>A label is predicted where its "
        "probability is at least its class's threshold (chosen on the validation set).</p>"
        + table(figures, CLASS_HEAD)
    )
    return section(f"Results on the {scored_set(metrics)} set", body)


def _worst_section(
    metrics: Metrics, test: AnySplit, probs: torch.Tensor, labels: torch.Tensor, thresholds: list
) -> str:
    """The images whose predicted label set is wrong, the surest mistakes (highest binary
    cross-entropy) first: truth, then prediction, then the file."""
    guess = predicted_sets(probs, thresholds)
    wrong = (guess != labels.bool()).any(1)
    loss = F.binary_cross_entropy(probs.clamp(1e-7, 1 - 1e-7), labels.float(), reduction="none")
    order = loss.mean(1).masked_fill(~wrong, -1).argsort(descending=True, stable=True)
    rows = order[: min(WORST, int(wrong.sum()))]
    if not len(rows):
        return section(
            "Worst predictions", f"<p>Every {scored_set(metrics)} image's set is right.</p>"
        )
    truth = label_text(labels[rows], metrics.classes)
    predicted = label_text(guess[rows].float(), metrics.classes)
    captions = [f"{t} → {p}" for t, p in zip(truth, predicted)]
    names = test.row_ids("test")
    files = [printable(names[row]) for row in rows.tolist()]
    figures = map(thumbnail, test.images_at(rows), captions, files)
    note = (
        f"<p class='note'>{scored_set(metrics).capitalize()} images whose predicted label set is "
        "wrong, the surest mistakes first: true labels → predicted labels; under each, its "
        "file.</p>"
    )
    return section("Worst predictions", f"{note}<div class='gallery'>{''.join(figures)}</div>")
