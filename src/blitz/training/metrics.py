"""``metrics.json``'s record of a finished run (``Metrics``): its fields, how a file a stranger
wrote is checked before it is used, and how a confusion matrix of many classes is stored."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

import torch

from blitz.config.checks import check_types
from blitz.config.types import is_number
from blitz.data.roles import ROLES
from blitz.errors import UnusableFile
from blitz.training.evaluate import Scores
from blitz.training.multilabel import FIGURES as MULTILABEL_FIGURES

METRICS_FORMAT = 1
VALIDATION_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top5_accuracy")
# classes up to which metrics.json holds the whole confusion matrix; past them its non-zero
# cells (10,000 classes are 100 million counts, which JSON needs gigabytes to write)
DENSE_CLASSES = 1000


@dataclass
class Metrics:
    """``metrics.json``: what a finished run measured. Written last, it marks a run finished."""

    test_accuracy: float
    classes: list[str]
    confusion_matrix: list[list[int]]  # [] past DENSE_CLASSES: confusion_cells holds it
    per_class_accuracy: dict[str, float]
    train_seconds: float = 0.0  # the loop alone, device synchronised
    eval_seconds: float = 0.0
    compile_seconds: float = 0.0
    total_seconds: float = 0.0  # command start to printed accuracy
    epochs: int = 0
    steps: int = 0
    steps_per_epoch: int = 0  # 0 in runs written before it was recorded
    train_images: int = 0
    test_images: int = 0
    seed: int = 0
    device: str = ""
    device_name: str = ""
    processes: int = 1
    preset: str = ""
    data: str = ""
    data_storage: str = ""
    model: str = ""
    parameters: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    # views of the confusion matrix (see evaluate.ClassScores); None in runs written before
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    top5_accuracy: float | None = None  # also None with 5 classes or fewer
    # class -> {"precision", "recall", "f1", "support"}; empty in runs written before
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    # the sets (blitz.data.roles); empty or "test" in runs written before
    sets: dict[str, int] = field(default_factory=dict)  # images per set: train, val, test
    test_set: str = "test"  # the set the figures above are on: "test", or "val" if none
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # per set, per class
    split: dict[str, float] | None = None  # what was split off the training images, and how
    # val and test images that are copies of training images, and one [copy, original] pair
    copies: dict[str, int] = field(default_factory=dict)
    copy_example: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # images --exclude left out, by id
    validation: dict[str, Any] = field(default_factory=dict)  # its accuracy and the views above
    # temperature scaling (training.calibration.Calibration.record): the temperature, where it
    # was fitted, and per set ECE, MCE, NLL, Brier before and after it; empty in runs before
    calibration: dict[str, Any] = field(default_factory=dict)
    # the epoch whose weights model.pt holds, and which: "best" (validation accuracy) or "last"
    # (train.keep, or no validation set); None and "" in runs written before
    kept_epoch: int | None = None
    kept: str = ""
    # [true class, predicted class, images] per non-zero cell, past DENSE_CLASSES classes
    confusion_cells: list[list[int]] = field(default_factory=list)
    # "multi-label": several labels per image; test_accuracy is then the subset accuracy, the
    # confusion matrix is empty, and ``multilabel`` holds the figures that fit (mAP, micro and
    # macro F1, Hamming loss, the thresholds, per class precision, recall, F1, AP, support)
    task: str = "single-label"
    multilabel: dict[str, Any] = field(default_factory=dict)
    format: int = METRICS_FORMAT

    def __post_init__(self) -> None:
        check_types(self, "metrics.json")
        k = len(self.classes)
        self._check_matrix(k)
        _require(
            all(isinstance(h, dict) and all(is_number(v) for v in h.values())
                for h in self.history),
            "its history is not a list of records of numbers",
        )  # fmt: skip
        self._check_sets(k)
        shares = (self.test_accuracy, self.balanced_accuracy, self.macro_f1, self.weighted_f1,
                  self.top5_accuracy)  # fmt: skip
        # a report of "500 %" from a hand-edited file would be believed
        _require(all(v is None or 0 <= v <= 1 for v in shares), "its accuracies are not in [0, 1]")

    def _check_matrix(self, k: int) -> None:
        """The confusion matrix whole (K x K), or past DENSE_CLASSES classes its cells; a
        multi-label run has none, but its figures."""
        _require(self.task in ("single-label", "multi-label"), "its task is unknown")
        if self.task == "multi-label":
            figures = [self.multilabel.get(key) for key in MULTILABEL_FIGURES]
            _require(all(map(is_number, figures)), "its multi-label figures are not numbers")
            _require(not self.confusion_matrix, "it is multi-label but has a confusion matrix")
            return
        if self.confusion_matrix or k <= DENSE_CLASSES:
            rows = self.confusion_matrix
            square = len(rows) == k and all(len(r) == k for r in rows)
            _require(square, f"its confusion matrix is not {k} x {k}, one row per class")
            return
        cells = self.confusion_cells
        fit = all(len(c) == 3 and min(c) >= 0 and max(c[:2]) < k for c in cells)
        _require(fit, f"its confusion cells are not [true, predicted, images] of {k} classes")

    def _check_sets(self, k: int) -> None:
        """The sets' records (a run directory may come from anyone: its report shows them)."""
        named = set(self.sets) | set(self.class_counts) | set(self.copies)
        _require(named <= set(ROLES), "it names unknown sets")
        _require(self.test_set in ("test", "val"), "its test_set is not test or val")
        _require(all(map(is_number, self.sets.values())), "its set sizes are not numbers")
        _require(
            all(isinstance(c, list) and len(c) == k and all(map(is_number, c))
                for c in self.class_counts.values()),
            f"its class counts are not {k} numbers per set",
        )  # fmt: skip
        split = self.split or {}
        known = set(split) <= {"val_fraction", "test_fraction", "seed"}
        _require(known and all(map(is_number, split.values())), "its split is not numbers")
        shown = [self.validation.get(key) for key in VALIDATION_FIGURES]
        _require(all(v is None or is_number(v) for v in shown), "its validation is not numbers")
        self._check_calibration()

    def _check_calibration(self) -> None:
        """The calibration figures the report and compare show: numbers where numbers go."""
        record = self.calibration
        if not record:
            return
        _require(is_number(record.get("temperature")), "its calibration has no temperature")
        for role in ("test", "validation"):
            sets = record.get(role) or {}
            _require(isinstance(sets, dict), f"its calibration of the {role} set is not a record")
            for figures in sets.values():
                ok = isinstance(figures, dict) and all(
                    is_number(figures.get(key)) for key in ("ece", "mce", "nll", "brier")
                )
                _require(ok, f"its calibration of the {role} set is not numbers")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def test_fields(figures: Scores) -> dict[str, Any]:
        """The fields that hold the test set's figures (its accuracy is ``test_accuracy``)."""
        fields = asdict(figures)
        return {"test_accuracy": fields.pop("accuracy"), **fields}

    @property
    def test_scores(self) -> Scores | None:
        """The test set's figures, in the shape ``Run.evaluate`` returns them; None in runs
        written before they were all recorded."""
        if self.balanced_accuracy is None or self.macro_f1 is None or self.weighted_f1 is None:
            return None
        return Scores(
            self.test_accuracy, self.balanced_accuracy, self.macro_f1, self.weighted_f1,
            self.top5_accuracy, self.per_class,
        )  # fmt: skip

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    @property
    def headline(self) -> str:
        """``test accuracy 93.75 %``, or a multi-label run's ``test macro mAP 95.10 %``."""
        role = "validation" if self.test_set == "val" else "test"
        if self.multi_label:
            return f"{role} macro mAP {100 * self.multilabel['map']:.2f} %"
        return f"{role} accuracy {100 * self.test_accuracy:.2f} %"

    def matrix(self) -> torch.Tensor:
        """The (K, K) confusion matrix, from whichever form the file holds it in."""
        if self.confusion_matrix:
            return torch.tensor(self.confusion_matrix, dtype=torch.int64)
        k = len(self.classes)
        matrix = torch.zeros(k, k, dtype=torch.int64)
        if self.confusion_cells:
            true, predicted, images = torch.tensor(self.confusion_cells).T
            matrix[true, predicted] = images
        return matrix

    @classmethod
    def from_dict(cls, raw: Any) -> Metrics:
        """Today's records and older ones (fields added since take their defaults); keys this
        version does not know are left out."""
        _require(isinstance(raw, dict), "it holds no JSON object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:  # a required field missing
            raise UnusableFile(str(exc).split(")", 1)[-1].strip() or str(exc)) from None


class MatrixRecord(TypedDict, total=False):
    """The ``Metrics`` fields that hold a confusion matrix."""

    confusion_matrix: list[list[int]]
    confusion_cells: list[list[int]]


def matrix_record(matrix: torch.Tensor) -> MatrixRecord:
    """A (K, K) confusion matrix as metrics.json holds it: whole up to DENSE_CLASSES classes,
    past them its non-zero cells (at most one per test image)."""
    if len(matrix) <= DENSE_CLASSES:
        return {"confusion_matrix": matrix.tolist()}
    cells = matrix.nonzero()  # (cells, 2): true, predicted
    counts = matrix[cells[:, 0], cells[:, 1]]
    return {
        "confusion_matrix": [],
        "confusion_cells": torch.cat([cells, counts[:, None]], 1).tolist(),
    }


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise UnusableFile(problem)
