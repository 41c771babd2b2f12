"""``report.html``: one run's page, a single self-contained file (images embedded as base64
PNG, no scripts or fonts from the network); ``outputs.comparison`` sets runs side by side."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from blitz.config.settings import Config
from blitz.data.counts import Copies, copies_note, imbalance_note
from blitz.data.dataset import AnySplit
from blitz.data.roles import SET_NAMES
from blitz.errors import BlitzError
from blitz.outputs.html import img, page, section, table
from blitz.outputs.plots import (
    NUMBERS_UP_TO,
    confusion_png,
    curves_png,
    image_png,
    per_class_png,
)
from blitz.outputs.predict import printable
from blitz.outputs.trust import (
    calibrated,
    calibration_section,
    heat_map_pngs,
)
from blitz.training.checkpoint import Checkpoint
from blitz.training.evaluate import (
    Evaluation,
    chance_note,
    confused_pairs,
    worst_classes,
    worst_errors,
)
from blitz.training.metrics import VALIDATION_FIGURES, Metrics
from blitz.training.progress import read_metrics_csv
from blitz.training.rundir import RunDir
from blitz.training.tables import CLASS_COLUMNS, class_rows, summary_figures
from blitz.utils.writes import write_atomic

WORST = 24  # images in the gallery of worst errors
FIGURE_CLASSES = 100  # classes drawn in the report's figures (more: the worst ones, a table)
PAIRS = 10  # rows in the table of most-confused pairs


def write_report(
    run_dir: RunDir,
    metrics: Metrics,
    test: AnySplit,
    result: Evaluation,
    ckpt: Checkpoint | None = None,
) -> Path:
    """``RUN_DIR/report.html`` from the run's metrics, its files and its test predictions;
    with its checkpoint ``ckpt``, probabilities after its temperature and heat maps."""
    cfg = read_settings(run_dir)
    config = cfg.to_dict() if cfg else {}
    title = f"blitz run {run_dir.path.name}"
    temperature = ckpt.model.temperature if ckpt else 1.0
    scaled = calibrated(result, test.labels, temperature)
    sections = [
        section("Summary", table(summary_rows(metrics, config))),
        data_section(metrics, cfg),
        section("Training curves", img(curves_of(run_dir, metrics), "training curves")),
        _results_section(metrics),
        calibration_section(metrics, result, test.labels, temperature),
        _errors_section(metrics, test, scaled, ckpt),
        files_section(run_dir, metrics),
    ]
    # a class folder's name that is not UTF-8 is shown as \\xNN, as the terminal shows it
    text = page(title, _subtitle(metrics), sections)
    write_atomic(run_dir.report, printable(text).encode())
    return run_dir.report


def read_settings(run_dir: RunDir) -> Config | None:
    """The run's saved settings, or None if they cannot be read."""
    try:
        return run_dir.read_config()
    except BlitzError:
        return None


def scored_set(metrics: Metrics) -> str:
    """The set the run's figures are on: "test", or "validation" where there is no test set."""
    return "validation" if metrics.test_set == "val" else "test"


def curves_of(run_dir: RunDir, metrics: Metrics) -> bytes:
    return curves_png(metrics.history, read_metrics_csv(run_dir.csv))


def _subtitle(metrics: Metrics) -> str:
    # names come from files and folders: every piece is escaped, like every other string
    head = html.escape(f"{metrics.model} on {metrics.data}: {scored_set(metrics)} accuracy ")
    tail = html.escape(f" after {_duration(metrics)}")
    return f"{head}<b>{100 * metrics.test_accuracy:.2f} %</b>{tail}"


def _duration(metrics: Metrics) -> str:
    """``2 epochs``, or ``300 steps (0.77 epochs)`` for a run stopped within an epoch."""
    per_epoch = metrics.steps_per_epoch
    epochs = metrics.steps / per_epoch if per_epoch else metrics.epochs
    if abs(epochs - round(epochs)) < 1e-9:
        return f"{round(epochs)} epoch{'s' if round(epochs) != 1 else ''}"
    return f"{metrics.steps} steps ({epochs:.2f} epochs)"


def summary_rows(metrics: Metrics, config: dict[str, Any]) -> list[tuple[str, str]]:
    optim, train = config.get("optim", {}), config.get("train", {})
    versions = ", ".join(f"{k} {v}" for k, v in metrics.versions.items())
    return [
        ("preset", metrics.preset),
        ("data", f"{metrics.data} ({len(metrics.classes)} classes)"),
        ("model", f"{metrics.model} ({metrics.parameters:,} parameters)"),
        (
            "optimizer",
            f"{optim.get('name')} lr {optim.get('lr')} ({optim.get('schedule')}), "
            f"momentum {optim.get('momentum')}, weight decay {optim.get('weight_decay')}",
        ),
        (
            "batch size, epochs, steps",
            f"{train.get('batch_size')}, {metrics.epochs}, {metrics.steps}",
        ),
        *_kept(metrics),
        ("device, seed", f"{metrics.device}, {metrics.seed}"),
        (f"{scored_set(metrics)} accuracy", f"{100 * metrics.test_accuracy:.2f} %"),
        (
            "time",
            f"training {metrics.train_seconds:.1f} s, total {metrics.total_seconds:.1f} s",
        ),
        ("versions", versions),
        ("report written", f"{datetime.now():%Y-%m-%d %H:%M}"),
    ]


def _kept(metrics: Metrics) -> list[tuple[str, str]]:
    """A row on the epoch whose weights are the model (train.keep, early stopping)."""
    if metrics.kept_epoch is None:  # a run written before it was recorded
        return []
    if metrics.kept == "last":
        return [("final weights", f"the last epoch's ({metrics.kept_epoch} of {metrics.epochs})")]
    # "best", or "" in a run written before: then only train.patience recorded the epoch
    return [("final weights", f"weights of epoch {metrics.kept_epoch} (the best validation "
             f"accuracy) kept after {metrics.epochs} epochs")]  # fmt: skip


def _results_section(metrics: Metrics) -> str:
    classes = metrics.classes
    matrix = metrics.matrix()
    accuracies = [metrics.per_class_accuracy.get(c, 0.0) for c in classes]
    shown = sorted(range(len(classes)), key=lambda i: accuracies[i])[:FIGURE_CLASSES]
    bars = per_class_png([classes[i] for i in shown], [accuracies[i] for i in shown])
    # many classes: figures at full size in scrolling boxes, rather than shrunk unreadable
    box = "<div class='scroll'>" if len(classes) > NUMBERS_UP_TO else "<div>"
    figures = f"{box}{img(bars, 'per-class accuracy')}</div>"
    if len(classes) <= FIGURE_CLASSES:
        figures += f"{box}{img(confusion_png(matrix, classes), 'confusion matrix')}</div>"
    warning = chance_note(matrix)
    body = (
        (f"<p class='warn'>{html.escape(warning)}</p>" if warning else "")
        + _many_classes_note(len(classes))
        + table(summary_figures(matrix, metrics.top5_accuracy))
        + f"<div class='row'>{figures}</div>"
        + f"<h3>Per class</h3>{_class_table(matrix, classes)}"
        + f"<h3>Most-confused pairs</h3>{_pairs_table(matrix, classes)}"
    )
    scored = (
        "validation set (the data has no test set)" if metrics.test_set == "val" else "test set"
    )
    return section(f"Results on the {scored}", body)


def data_section(metrics: Metrics, cfg: Config | None) -> str:
    """The sets, how they were made, the images per class in each, and any imbalance."""
    if not metrics.sets:  # a run written before the sets were recorded
        return ""
    rows = [(SET_NAMES[role], f"{n:,}") for role, n in metrics.sets.items()]
    made = ""
    if metrics.split:
        fractions = [
            f"{SET_NAMES[role]} {metrics.split[f'{role}_fraction']:g}"
            for role in ("val", "test")
            if metrics.split[f"{role}_fraction"]
        ]
        made = (
            f"<p class='note'>Split off the training images, per class, with split seed "
            f"{metrics.split['seed']:g}: {', '.join(fractions)} (which image is where: "
            "sets.csv).</p>"
        )
    counts = metrics.class_counts
    shown = list(zip(metrics.classes, *counts.values()))[:FIGURE_CLASSES]
    head = ("class", *(SET_NAMES[role] for role in counts))
    note = imbalance_note(metrics.classes, counts["train"], cfg) if "train" in counts else None
    copies = copies_note(Copies(metrics.copies, metrics.copy_example), metrics.sets)
    left_out = (
        f"<p class='note'>{len(metrics.excluded):,} images left out (--exclude): "
        f"{html.escape(', '.join(metrics.excluded[:5]))}{', ...' * (len(metrics.excluded) > 5)}"
        "</p>" if metrics.excluded else ""
    )  # fmt: skip
    body = (
        table(rows, ("set", "images"))
        + made
        + left_out
        + "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in (copies, note) if n)
        + f"<h3>Images per class</h3>{table(shown, head)}"
        + _validation(metrics)
    )
    return section("Data", body)


def _validation(metrics: Metrics) -> str:
    """The validation set's figures, where it is apart from the test set."""
    figures = metrics.validation
    if not figures:
        return ""
    rows = [
        (name.replace("_", " ").replace("top5", "top-5"), f"{100 * figures[name]:.2f} %")
        for name in VALIDATION_FIGURES
        if figures.get(name) is not None
    ]
    return "<h3>Validation (scored each epoch; the final weights here)</h3>" + table(rows)


def _class_table(matrix: torch.Tensor, classes: list[str]) -> str:
    """The terminal's per-class table; past FIGURE_CLASSES classes only the worst by F1, so
    that the page stays bounded (every class is in metrics.json)."""
    if len(classes) <= FIGURE_CLASSES:
        return table(class_rows(matrix, classes), CLASS_COLUMNS)
    worst = worst_classes(matrix, FIGURE_CLASSES)
    note = (
        f"<p class='note'>The {FIGURE_CLASSES} classes of {len(classes)} with the lowest F1, "
        "worst first; every class is in metrics.json.</p>"
    )
    return note + table(class_rows(matrix, classes, worst), CLASS_COLUMNS)


def _many_classes_note(count: int) -> str:
    # a figure's pixels grow with the square of the classes: past this many, 2,000 classes
    # took 23.5 GB to draw. The numbers stay whole in metrics.json.
    if count <= FIGURE_CLASSES:
        return ""
    return (
        f"<p class='note'>{count} classes: the bars show the {FIGURE_CLASSES} worst, and the "
        f"{count} x {count} confusion matrix is left out of the page (it is in metrics.json); "
        "the table below lists the most-confused pairs.</p>"
    )


def _pairs_table(matrix: torch.Tensor, classes: list[str]) -> str:
    totals = matrix.sum(1).tolist()
    rows = [
        (classes[t], classes[p], count, f"{100 * count / max(totals[t], 1):.1f} %")
        for t, p, count in confused_pairs(matrix, PAIRS)
    ]
    head = ("true class", "predicted as", "images", "share of the true class")
    return table(rows, head) if rows else "<p>No confusions: every test image is right.</p>"


def _errors_section(
    metrics: Metrics, test: AnySplit, result: Evaluation, ckpt: Checkpoint | None
) -> str:
    classes = metrics.classes
    rows = worst_errors(result, test.labels, WORST)
    if not len(rows):
        return section("Worst errors", f"<p>No errors on the {scored_set(metrics)} set.</p>")
    truth, predicted = test.labels[rows].tolist(), result.predicted[rows].tolist()
    captions = [
        f"{classes[t]} → {classes[p]} {100 * c:.0f}%"
        for t, p, c in zip(truth, predicted, result.confidence[rows].tolist())
    ]
    names = test.row_ids("test")  # the file, so that a mislabelled image can be found and fixed
    files = [printable(names[row]) for row in rows.tolist()]  # a non-UTF-8 name as \xNN
    images = test.images_at(rows)
    heats, heat_note = heat_map_pngs(ckpt, images, predicted)
    beside: list[bytes | None] = [*heats] or [None] * len(rows)
    figures = map(thumbnail, images, captions, files, beside)
    note = (
        f"<p class='note'>Misclassified {scored_set(metrics)} images with the highest loss: truth, "
        "then prediction and its confidence; under each, its file. "
        f"{html.escape(heat_note)}</p>"
    )
    return section("Worst errors", f"{note}<div class='gallery'>{''.join(figures)}</div>")


def thumbnail(image: torch.Tensor, caption: str, file: str, heat: bytes | None = None) -> str:
    """One image (and its heat map) with its caption and file name under it (text, escaped:
    names come from disk)."""
    shown = img(image_png(image), file) + (img(heat, f"heat map: {file}") if heat else "")
    return (
        f"<figure>{shown}<figcaption>{html.escape(caption)}<br>"
        f"<code>{html.escape(file)}</code></figcaption></figure>"
    )


def files_section(run_dir: RunDir, metrics: Metrics) -> str:
    """The pictures the run already wrote: the seed's test grid and a few training images."""
    scored = scored_set(metrics).capitalize()
    parts = [
        f"<h3>{html.escape(caption)}</h3>{img(path.read_bytes(), caption)}"
        for path, caption in (
            (run_dir.test_predictions, f"{scored} images: truth → prediction (the seed's look)"),
            (run_dir.train_images, "Training images"),
        )
        if path.is_file()
    ]
    return section("Images", "".join(parts)) if parts else ""
