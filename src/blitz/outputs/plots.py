"""Figures of a run, as PNG files or bytes: image grids, curves, per-class bars, confusion."""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from blitz.outputs.predict import printable  # noqa: E402
from blitz.training.calibration import Reliability  # noqa: E402
from blitz.utils.writes import write_atomic  # noqa: E402

PAD = 2
NUMBERS_UP_TO = 20  # classes up to which the confusion matrix prints its counts in the cells


def plain_text(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw with names taken as they are: a class called "$5 $HOME" is not maths, a name in
    a script the font lacks costs a blank box, not a warning per glyph, and a folder name whose
    bytes are not UTF-8 is drawn with them as \\xNN (the font cannot take its surrogates)."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> bytes:
        args = tuple(_drawable(a) for a in args)
        kwargs = {k: _drawable(v) for k, v in kwargs.items()}
        with plt.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            return draw(*args, **kwargs)

    return drawn


def _drawable(value: object) -> object:
    """A text argument (a title, a list of names) made printable; anything else as it is."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [printable(v) for v in value]
    return value


def figure_png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes; closes it (pyplot keeps every open figure alive otherwise)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@plain_text
def image_grid_png(images: torch.Tensor, captions: list[str], per_row: int = 8) -> bytes:
    """Rows of ``make_grid`` over uint8 images (N, C, H, W), each image captioned."""
    per_row = min(per_row, len(images))
    rows = -(-len(images) // per_row)
    lines = max(c.count("\n") + 1 for c in captions)
    fig, axes = plt.subplots(
        rows, 1, figsize=(per_row * 1.3, rows * (1.2 + 0.18 * lines)), squeeze=False
    )
    for r, ax in enumerate(axes[:, 0]):
        chunk = images[r * per_row : (r + 1) * per_row].cpu()
        grid = make_grid(chunk, nrow=per_row, padding=PAD, pad_value=255)
        ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", interpolation="nearest")
        cell = images.shape[3] + PAD
        ax.set_xticks([PAD / 2 + cell * (i + 0.5) for i in range(len(chunk))])
        ax.set_xticklabels(captions[r * per_row : (r + 1) * per_row], fontsize=8)
        ax.set_yticks([])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    return figure_png(fig)


def image_png(image: torch.Tensor) -> bytes:
    """One uint8 image (C, H, W), grey or RGB, as PNG bytes: its pixels, no figure around them."""
    pixels = image.cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def save_image_grid(
    images: torch.Tensor, captions: list[str], path: Path, per_row: int = 8
) -> None:
    """The seed's grid of images with labels, written as a PNG file."""
    write_atomic(path, image_grid_png(images, captions, per_row))


def curves_png(history: list[dict], steps: list[dict], title: str = "") -> bytes:
    """Training loss, learning rate and test accuracy: per step interval where logged, and
    per epoch from the history."""
    return overlay_png({title: (history, steps)})


@plain_text
def overlay_png(
    runs: dict[str, tuple[list[dict], list[dict]]], x: str = "step", x_label: str = "optimizer step"
) -> bytes:
    """The same three panels with one line per run (run name -> (history, metrics.csv rows));
    ``x`` names the rows' column for the horizontal axis."""
    fig, (loss_ax, lr_ax, acc_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, (history, steps) in runs.items():
        label = name or None
        if steps:
            loss_ax.plot([r[x] for r in steps], [r["loss"] for r in steps], label=label)
            lr_ax.plot([r[x] for r in steps], [r["lr"] for r in steps], label=label)
            loss_ax.set_xlabel(x_label)
            lr_ax.set_xlabel(x_label)
        else:  # an older run without metrics.csv: the per-epoch history only
            loss_ax.plot(_epochs(history), [h["train_loss"] for h in history], "o-", label=label)
            lr_ax.plot(_epochs(history), [h.get("lr", math.nan) for h in history], "o-")
            loss_ax.set_xlabel("epoch")
            lr_ax.set_xlabel("epoch")
        scored = [h for h in history if "val_accuracy" in h]
        acc_ax.plot(_epochs(scored), [100 * h["val_accuracy"] for h in scored], "o-", label=label)
    loss_ax.set(title="training loss", ylabel="loss")
    lr_ax.set(title="learning rate", ylabel="lr")
    lr_ax.set_ylim(bottom=0)  # a constant rate otherwise gets a zoomed axis of equal ticks
    acc_ax.set(title="validation accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, lr_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # whole steps, epochs
        ax.grid(alpha=0.3)
    if not any("val_accuracy" in h for history, _ in runs.values() for h in history):
        _empty(acc_ax, "no validation set\n(--val-fraction 0.1 splits one off)")
    if len(runs) > 1:
        loss_ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _empty(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _epochs(history: list[dict]) -> list[int]:
    return [h["epoch"] for h in history]


@plain_text
def per_class_png(classes: list[str], accuracies: list[float], what: str = "accuracy") -> bytes:
    """Horizontal bars of a per-class figure (accuracy; ``what``: another share, as AP),
    worst class at the top."""
    order = sorted(range(len(classes)), key=lambda i: accuracies[i])
    height = max(2.5, 0.28 * len(classes) + 1)
    fig, ax = plt.subplots(figsize=(6.5, height))
    values = [100 * accuracies[i] for i in order]
    bars = ax.barh(range(len(order)), values, color="#4c72b0")
    ax.set_yticks(range(len(order)), [classes[i] for i in order], fontsize=_font(len(classes)))
    ax.invert_yaxis()
    ax.set(xlim=(0, 108), xlabel=f"{what} (%)", title=f"{what} per class (worst first)")
    if len(classes) <= NUMBERS_UP_TO:
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def pr_curves_png(curves: dict[str, tuple[list[float], list[float]]]) -> bytes:
    """Precision against recall, a curve per class (``curves``: name -> (recall, precision))."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, (recall, precision) in curves.items():
        ax.step(recall, precision, where="post", label=name, alpha=0.8)
    ax.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="recall", ylabel="precision",
           title="precision-recall per class")  # fmt: skip
    if curves and len(curves) <= NUMBERS_UP_TO:
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def confusion_png(matrix: torch.Tensor, classes: list[str]) -> bytes:
    """Heat map of the confusion matrix (rows: truth), counts in the cells for few classes."""
    k = len(classes)
    side = max(5.0, 0.45 * k) if k <= NUMBERS_UP_TO else 0.2 * k + 2
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    font = _font(k)
    ax.set_xticks(range(k), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(k), classes, fontsize=font)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix")
    if k <= NUMBERS_UP_TO:
        threshold = matrix.max().item() / 2
        for (i, j), count in zip(_cells(k), matrix.flatten().tolist()):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    return figure_png(fig)


def _cells(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(k)]


def _font(classes: int) -> float:
    return 9 if classes <= NUMBERS_UP_TO else 6


@plain_text
def lr_find_png(lrs: list[float], losses: list[float], suggestion: float) -> bytes:
    """Smoothed loss against the learning rate (log scale), the suggested value marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss")
    # a log axis labels its ticks in mathtext ($\mathdefault{10^{-6}}$), which plain_text shows
    # as written: plain labels (1e-06) instead, minor ticks too where the range is short
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    low = min(losses)  # the diverging tail would otherwise flatten the interesting part
    margin = 0.02 * abs(low) + 3 * (losses[0] - low)
    ax.set_ylim(low - 0.02 * abs(low), losses[0] + margin)
    ax.set_title("learning-rate range test")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def reliability_png(panels: dict[str, Reliability]) -> bytes:
    """Reliability diagrams side by side (title -> bins), e.g. before and after temperature
    scaling: accuracy per bin of top probability against the diagonal of perfect calibration,
    and under each the images in every bin."""
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    for column, (title, bins) in enumerate(panels.items()):
        top, bottom = axes[0, column], axes[1, column]
        lefts, width = bins.edges[:-1], bins.edges[1] - bins.edges[0]
        shown = [a if n else 0.0 for a, n in zip(bins.accuracy, bins.counts)]
        top.bar(lefts, shown, width, align="edge", color="#4c72b0", edgecolor="white",
                label="accuracy")  # fmt: skip
        gaps = [c - a if n else 0.0 for a, c, n in zip(shown, bins.confidence, bins.counts)]
        top.bar(lefts, gaps, width, bottom=shown, align="edge", color="#dd8452", alpha=0.5,
                label="gap to the mean top probability")  # fmt: skip
        top.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
        top.set(xlim=(0, 1), ylim=(0, 1), title=title, ylabel="accuracy in the bin")
        top.legend(fontsize=7, loc="upper left")
        bars = bottom.bar(lefts, bins.counts, width, align="edge", color="#999999")
        bottom.bar_label(bars, fontsize=6, padding=1)
        bottom.set(xlim=(0, 1), xlabel="top probability", ylabel="images")
        bottom.set_ylim(0, max(max(bins.counts), 1) * 1.25)
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def risk_coverage_png(
    curves: dict[str, tuple[list[float], list[float], list[float]]],
    thresholds: tuple[float, ...],
) -> bytes:
    """Accuracy on the images answered against the share answered, most confident first, one
    line per name -> (coverage, accuracy, the top probability of each); the points where a
    --min-confidence of each threshold would stop are marked on the first line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for index, (name, (coverage, accuracy, confidence)) in enumerate(curves.items()):
        ax.plot([100 * c for c in coverage], [100 * a for a in accuracy], label=name)
        if index or not coverage:
            continue
        for p in thresholds:  # the last image answered at this threshold
            answered = sum(c >= p for c in confidence)
            if answered:
                x, y = 100 * coverage[answered - 1], 100 * accuracy[answered - 1]
                ax.plot(x, y, "o", color="tab:red")
                ax.annotate(f"P={p:g}", (x, y), textcoords="offset points", xytext=(4, -12),
                            fontsize=8)  # fmt: skip
    ax.set(xlabel="images answered (%)", ylabel="accuracy on them (%)", xlim=(0, 101),
           title="risk-coverage: abstaining below a top probability P")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)
