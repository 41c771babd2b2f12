"""Images per class in each set: the table a run prints and reports, and the note on class
imbalance (accuracy then favours the large classes)."""

from __future__ import annotations

import torch

from blitz.config import Config
from blitz.data import ImageData

IMBALANCE = 3.0  # the largest class this many times the smallest: worth a note
TABLE_CLASSES = 20  # more classes than this: a one-line summary instead of the table


def label_counts(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Images per class, (classes,) int64 on the CPU."""
    return torch.bincount(labels.cpu(), minlength=classes)


def class_counts(data: ImageData) -> dict[str, list[int]]:
    """Per set ("train", "val", "test"), the images of each class."""
    k = len(data.classes)
    return {role: label_counts(split.labels, k).tolist() for role, split in data.sets().items()}


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class, n / (classes * its count) (scikit-learn's "balanced"): every class weighs
    the same in the loss in total (--class-weights balanced, --sampler balanced)."""
    counts = label_counts(labels, classes).float()
    return len(labels) / (classes * counts.clamp(min=1))


def format_counts(classes: list[str], counts: dict[str, list[int]]) -> str:
    """A table of images per class and set; past TABLE_CLASSES classes, one line per set."""
    if len(classes) > TABLE_CLASSES:
        return "\n".join(
            f"{role} images per class: {_spread(classes, n)}" for role, n in counts.items()
        )
    width = max(8, *map(len, classes))
    head = f"{'class':<{width}}" + "".join(f"{role:>8}" for role in counts)
    rows = [
        f"{name:<{width}}" + "".join(f"{n[i]:>8}" for n in counts.values())
        for i, name in enumerate(classes)
    ]
    return "\n".join(["images per class", head, *rows])


def _spread(classes: list[str], counts: list[int]) -> str:
    low = min(range(len(counts)), key=counts.__getitem__)
    high = max(range(len(counts)), key=counts.__getitem__)
    return f"{counts[low]} ({classes[low]}) to {counts[high]} ({classes[high]})"


def imbalance_note(classes: list[str], train: list[int], cfg: Config | None) -> str | None:
    """A note when the largest training class has IMBALANCE times the images of the smallest,
    saying what the run (``cfg``; None: unknown) does about it."""
    low, high = min(train), max(train)
    if high < IMBALANCE * max(low, 1):
        return None
    on = [f"--{name.replace('_', '-')} balanced" for name, value in _remedies(cfg) if value]
    answer = (
        f"this run uses {' and '.join(on)}"
        if on
        else "consider --class-weights balanced or --sampler balanced"
    )
    return (
        f"the classes are imbalanced: {_spread(classes, train)} training images per class "
        f"({high / max(low, 1):.1f}x). Accuracy favours the large classes: read balanced "
        f"accuracy and macro F1 too; {answer}"
    )


def _remedies(cfg: Config | None) -> list[tuple[str, bool]]:
    if cfg is None:
        return []
    return [
        ("class_weights", cfg.optim.class_weights == "balanced"),
        ("sampler", cfg.train.sampler == "balanced"),
    ]
