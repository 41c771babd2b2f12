"""The classes: how many images each has per set (a table, and a finding where the largest
class has ``IMBALANCE`` times the images of the smallest, or where a class's share of the
test set is far from its share of the training set), and names that differ only in case,
spacing or punctuation (``cat/`` and ``Cat/``: blitz keeps them apart)."""

from __future__ import annotations

from blitz.data.counts import IMBALANCE, class_counts, imbalance_note
from blitz.data.dataset import ImageData, similar_classes_note
from blitz.data.roles import SET_NAMES
from blitz.diagnosis.findings import Finding

SHARE_FACTOR = 2.0  # a class this many times more (or less) common in a held-out set


def balance_findings(data: ImageData) -> list[Finding]:
    """Imbalance within each set, and held-out sets whose class mix differs from training's."""
    counts = class_counts(data)
    out = []
    for role, per_class in counts.items():
        low, high = min(per_class), max(per_class)
        if high >= IMBALANCE * max(low, 1):
            note = imbalance_note(data.classes, per_class, None, SET_NAMES[role]) or ""
            out.append(Finding("imbalance", role=role, score=round(1 - low / high, 4),
                               detail=f"{SET_NAMES[role]} set: {note}"))  # fmt: skip
    train = counts["train"]
    for role in ("val", "test"):
        if role in counts and (shifted := _shifted(data.classes, train, counts[role])):
            out.append(Finding("imbalance", role=role, score=0.5,
                               detail=f"{SET_NAMES[role]} set: {shifted}"))  # fmt: skip
    return out


def _shifted(classes: list[str], train: list[int], held: list[int]) -> str | None:
    """The classes whose share of a held-out set is SHARE_FACTOR times off their training share."""
    total_train, total_held = sum(train), sum(held)
    off = []
    for name, a, b in zip(classes, train, held):
        ratio = (b / total_held + 1e-9) / (a / total_train + 1e-9)
        if not 1 / SHARE_FACTOR <= ratio <= SHARE_FACTOR and a + b >= 10:
            off.append(f"{name!r} {100 * b / total_held:.1f} % (training: "
                       f"{100 * a / total_train:.1f} %)")  # fmt: skip
    if not off:
        return None
    more = f" and {len(off) - 5} more" if len(off) > 5 else ""
    return (
        f"its mix of classes differs from the training set's: {'; '.join(off[:5])}{more}. Its "
        "accuracy then weighs the classes differently from training"
    )


def class_name_findings(classes: list[str]) -> list[Finding]:
    """Class names that differ only in case, spacing or punctuation (data.dataset's check)."""
    note = similar_classes_note(classes)
    return [Finding("class-names", detail=note.removeprefix("note: "))] if note else []
