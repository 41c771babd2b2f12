"""A test's figures as the terminal shows them, in the seed's words where it has them: the
headline accuracy, the per-class table, the summary line, the confusion matrix (or its most
confused pairs) and the first images' true and predicted classes."""

from __future__ import annotations

import torch

from blitz.training.evaluate import (
    accuracy,
    class_scores,
    confused_pairs,
    worst_classes,
)

# classes up to which the terminal shows every class's row; past them, the worst classes' rows
TEXT_CLASSES = 100
# classes up to which it shows the confusion matrix (7 characters a cell: 20 classes fill a
# wide terminal, 10,000 would print 700 MB); past them, the most-confused pairs
MATRIX_CLASSES = 20
TEXT_PAIRS = 10
CLASS_COLUMNS = ("class", "correct", "total", "accuracy", "precision", "recall", "F1", "support")


def format_accuracy(matrix: torch.Tensor, role: str = "test") -> str:
    """The seed's headline sentence, with two decimals (``role``: which set's images)."""
    total = int(matrix.sum())
    return f"Accuracy of the network on the {total} {role} images: {100 * accuracy(matrix):.2f} %"


def class_rows(
    matrix: torch.Tensor, classes: list[str], order: list[int] | None = None
) -> list[tuple[str, ...]]:
    """The per-class table's rows as text, one per class (in ``order`` if given), under
    ``CLASS_COLUMNS``: the seed's correct, total and accuracy, then precision, recall, F1 and
    support as practitioners read them (recall is the accuracy, support the total)."""
    s = class_scores(matrix)
    columns = (matrix.diag(), s.support, s.recall, s.precision, s.recall, s.f1, s.support)
    values = [c.tolist() for c in columns]
    return [
        (classes[i], *(_cell(v[i]) for v in values))
        for i in (range(len(classes)) if order is None else order)
    ]


def _cell(value: float | int) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, float) else str(value)


def format_per_class(matrix: torch.Tensor, classes: list[str]) -> str:
    """A per-class table: correct, total, accuracy, precision, recall, F1, support; past
    TEXT_CLASSES classes, only the worst by F1."""
    order = worst_classes(matrix, TEXT_CLASSES) if len(classes) > TEXT_CLASSES else None
    table = text_table([CLASS_COLUMNS, *class_rows(matrix, classes, order)])
    if order is None:
        return table
    return (
        f"the {TEXT_CLASSES} classes of {len(classes)} with the lowest F1, worst first "
        f"(metrics.json holds every class):\n{table}"
    )


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as aligned text: the first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    widths[0] = max(widths[0], 8)
    return "\n".join(
        f"{row[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row[1:], widths[1:]))
        for row in rows
    )


def summary_figures(matrix: torch.Tensor, top5_accuracy: float | None) -> list[tuple[str, str]]:
    """(name, value) for balanced accuracy, macro and weighted F1, and top-5 accuracy where
    there is one (more than 5 classes)."""
    s = class_scores(matrix)
    figures = [
        ("balanced accuracy", s.balanced_accuracy),
        ("macro F1", s.macro_f1),
        ("weighted F1", s.weighted_f1),
        ("top-5 accuracy", top5_accuracy),
    ]
    return [(name, f"{100 * value:.2f} %") for name, value in figures if value is not None]


def format_summary(matrix: torch.Tensor, top5_accuracy: float | None) -> str:
    """One line: balanced accuracy, macro F1, weighted F1 and top-5 accuracy."""
    return ", ".join(f"{name} {value}" for name, value in summary_figures(matrix, top5_accuracy))


def format_confusion(matrix: torch.Tensor, classes: list[str]) -> str:
    """The confusion matrix as text (rows: truth, columns: prediction), short class names;
    past MATRIX_CLASSES classes, the most-confused pairs instead."""
    if len(classes) > MATRIX_CLASSES:
        return _format_pairs(matrix, classes)
    short = [c[:6] for c in classes]
    width = max(6, len(str(int(matrix.max()))) if matrix.numel() else 1)
    head = " " * 8 + " ".join(f"{s:>{width}}" for s in short)
    rows = [
        f"{s:<8}" + " ".join(f"{v:>{width}d}" for v in row)
        for s, row in zip(short, matrix.tolist())
    ]
    return "\n".join(["confusion matrix (rows: truth, columns: predicted)", head, *rows])


def _format_pairs(matrix: torch.Tensor, classes: list[str]) -> str:
    k = len(classes)
    pairs = [
        f"  {classes[t]} -> {classes[p]}: {n}" for t, p, n in confused_pairs(matrix, TEXT_PAIRS)
    ]
    head = (
        f"confusion matrix: {k} x {k}, too large to print (metrics.json holds it); "
        "the most-confused pairs (true -> predicted: images):"
    )
    return "\n".join([head, *(pairs or ["  none: every image is right"])])


def format_samples(labels: list[int], predicted: list[int], classes: list[str]) -> str:
    """The seed's look at the first test images: ground truth vs predicted class names."""
    truth = " ".join(f"{classes[i]:>5s}" for i in labels)
    guess = " ".join(f"{classes[i]:>5s}" for i in predicted)
    return f"GroundTruth:  {truth}\nPredicted:    {guess}"
