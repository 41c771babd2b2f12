"""The report pages: ``report.html`` for one run and a comparison of several, each a single
self-contained file (images embedded as base64 PNG, no scripts or fonts from the network)."""

from __future__ import annotations

import html
import json
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
    overlay_png,
    per_class_png,
)
from blitz.outputs.predict import printable
from blitz.outputs.trust import (
    calibrated,
    calibration_rows,
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
from blitz.training.multilabel import FIGURES, NAMES
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


def _read_config(run_dir: RunDir) -> dict[str, Any]:
    """The settings as plain data: the saved ones, or none if they cannot be read."""
    cfg = read_settings(run_dir)
    return cfg.to_dict() if cfg else {}


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


def write_comparison(run_dirs: list[RunDir], out: Path) -> Path:
    """A page comparing runs: metrics side by side, config differences, curves overlaid."""
    names = [d.path.name for d in run_dirs]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run (or a run twice): number them
        names = [f"{i}. {d}" for i, d in enumerate(run_dirs, 1)]
    metrics = {n: d.read_metrics() for n, d in zip(names, run_dirs)}
    configs = {n: _flatten(_read_config(d)) for n, d in zip(names, run_dirs)}
    curves = {
        n: (metrics[n].history, _in_epochs(read_metrics_csv(d.csv), metrics[n]))
        for n, d in zip(names, run_dirs)
    }
    sections = [
        section("Metrics", _side_by_side(metrics)),
        section("Settings that differ", _config_diff(configs)),
        section("Curves", img(overlay_png(curves, "epochs", "epoch"), "curves overlaid")),
    ]
    text = page("blitz: comparison of runs", html.escape(", ".join(names)), sections)
    write_atomic(out, printable(text).encode())
    return out


def _in_epochs(rows: list[dict], metrics: Metrics) -> list[dict]:
    """Rows with an ``epochs`` column (steps / steps per epoch): runs with other batch sizes
    take other numbers of steps, so only epochs line their curves up."""
    per_epoch = metrics.steps_per_epoch or metrics.steps / max(metrics.epochs, 1)
    return [{**row, "epochs": row["step"] / per_epoch} for row in rows]


def _side_by_side(metrics: dict[str, Metrics]) -> str:
    keys = {
        "test accuracy": lambda m: f"{100 * m.test_accuracy:.2f} %",
        "model": lambda m: f"{m.model} ({m.parameters:,} parameters)",
        "data": lambda m: m.data,
        "preset": lambda m: m.preset,
        "epochs / steps": lambda m: f"{m.epochs} / {m.steps}",
        "training time": lambda m: f"{m.train_seconds:.1f} s",
        "device": lambda m: m.device,
        **calibration_rows(),
    }
    if any(m.multi_label for m in metrics.values()):
        keys = {**keys, **_multilabel_rows()}
    rows = [(key, *(get(m) for m in metrics.values())) for key, get in keys.items()]
    classes = {tuple(m.classes) for m in metrics.values()}
    if len(classes) == 1 and len(next(iter(classes))) <= NUMBERS_UP_TO:  # same classes, few
        for c in next(iter(classes)):
            rows.append((f"{_class_figure(metrics)}: {c}",
                         *(_per_class(m, c) for m in metrics.values())))  # fmt: skip
    return table(rows, ("", *metrics))


def _multilabel_rows() -> dict[str, Any]:
    """Compare's rows of the multi-label figures ("" for a single-label run)."""

    def figure(key: str) -> Any:
        def shown(m: Metrics) -> str:
            if not m.multi_label:
                return ""
            value = m.multilabel[key]
            return f"{value:.4f}" if key == "hamming_loss" else f"{100 * value:.2f} %"

        return shown

    return {NAMES[key]: figure(key) for key in FIGURES}


def _class_figure(metrics: dict[str, Metrics]) -> str:
    """What compare shows per class: accuracy, or a multi-label run's AP (or both, mixed)."""
    kinds = {m.multi_label for m in metrics.values()}
    return "AP" if kinds == {True} else "accuracy / AP" if len(kinds) > 1 else "accuracy"


def _per_class(m: Metrics, name: str) -> str:
    share = m.per_class[name]["ap"] if m.multi_label else m.per_class_accuracy[name]
    return f"{100 * share:.1f} %"


def _config_diff(configs: dict[str, dict[str, Any]]) -> str:
    keys = sorted(set().union(*configs.values()))
    rows = [
        (key, *(json.dumps(c.get(key, "—")) for c in configs.values()))
        for key in keys
        if len({json.dumps(c.get(key)) for c in configs.values()}) > 1
    ]
    return table(rows, ("setting", *configs)) if rows else "<p>The settings are identical.</p>"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
