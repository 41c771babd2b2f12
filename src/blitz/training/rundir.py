"""The run directory: the one module that knows its files' names, and typed records of what is
in them. Everything a run leaves (settings, checkpoints, metrics, report, pictures) is read and
written through ``RunDir``; a file a stranger put there is checked before it is used."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

import torch

from blitz.config.loading import parse_nested
from blitz.config.settings import Config, check_types, plain_name
from blitz.config.types import is_number
from blitz.data.roles import ROLES, Assignment
from blitz.errors import BlitzError, UnusableFile
from blitz.files import read_regular, remove_temporary_files
from blitz.models.configs import config_from_dict
from blitz.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from blitz.training.evaluate import Scores
from blitz.training.multilabel import FIGURES as MULTILABEL_FIGURES
from blitz.utils.locks import locked
from blitz.utils.writes import write_atomic, write_json

METRICS_FORMAT = 1
SETS_HEADER = ("set", "class", "image")
VALIDATION_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top5_accuracy")
MAX_SETS_BYTES = 2**30  # a line per image: far more than any dataset blitz reads in a run
MAX_JSON_BYTES = 2**30  # config.json, metrics.json: a confusion matrix of thousands of classes
NAME_BYTES = "surrogateescape"  # how Python holds a file name that is not UTF-8 (os.fsdecode)
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


class RunDir:
    """A run's folder and the files in it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.json"
        self.model = self.path / "model.pt"
        self.last = self.path / "last.pt"  # the newest training checkpoint: --resume's start
        self.best = self.path / "best.pt"  # the epoch with the best accuracy
        self.csv = self.path / "metrics.csv"
        self.sets = self.path / "sets.csv"  # which image is in which set (blitz.data.roles)
        self.mlflow = self.path / "mlflow.json"  # the MLflow run this run logs to, if any
        self.report = self.path / "report.html"
        self.train_images = self.path / "train_images.png"
        self.test_predictions = self.path / "test_predictions.png"
        self.tensorboard = self.path / "tensorboard"
        self.lock_file = self.path / ".lock"
        self.made: list[Path] = []  # the folders this run created, deepest first (runs/ too)

    def __str__(self) -> str:
        return str(self.path)

    @staticmethod
    def default(preset: str) -> RunDir:
        """``runs/<timestamp>-<preset>``, the preset's name reduced to letters, digits, '.',
        '_' and '-' (it may come from a stranger's settings file: it never leaves ``runs/``)."""
        return RunDir(Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{plain_name(preset)}")

    @property
    def finished(self) -> bool:
        return self.metrics.exists()

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; refuse to clobber a finished or resumable run unless asked, or
        to scatter a run among a folder's other files."""
        others = self._foreign_files()
        if others and not overwrite:
            raise BlitzError(
                f"--out {self} holds files that are not a blitz run ({others[0]}, ...): choose "
                "a new or empty folder, or pass --overwrite to write the run among them"
            )
        if not overwrite and self.finished:
            raise BlitzError(
                f"{self} already holds a finished run: choose another --out or pass --overwrite"
            )
        if not overwrite and self.last.exists():
            raise BlitzError(
                f"{self} holds an unfinished run: continue it with blitz train --resume {self}, "
                "or pass --overwrite to start again"
            )
        self._make()
        # the old results go first, with the old model's exports (model.onnx and its JSON, ...):
        # served or shipped beside the new run, they would answer for a model that is gone
        exports = [p for p in self.path.glob("model.*") if p.is_symlink() or not p.is_dir()]
        for old in (self.metrics, self.last, self.best, *exports):
            old.unlink(missing_ok=True)

    def _foreign_files(self) -> list[str]:
        """The files of a folder that holds no blitz run at all (a run's own leftovers, such
        as exports or temporary files, are not foreign)."""
        marks = (self.config, self.metrics, self.model, self.last)
        if not self.path.is_dir() or any(mark.exists() for mark in marks):
            return []
        return sorted(p.name for p in self.path.iterdir() if p != self.lock_file)

    def _make(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise BlitzError(f"--out {self.path} is a file, not a folder: choose another --out")
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.made += [p for p in missing if p not in self.made]
        except OSError as exc:
            raise BlitzError(f"cannot create run directory {self}: {exc.strerror or exc}") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Only one process writes into a run directory at a time."""
        self._make()
        busy = f"another blitz process is writing into {self}: wait for it, or choose another --out"
        with locked(self.lock_file, wait=False, busy=busy):
            remove_temporary_files(self.path)  # a killed writer's half files
            yield

    def remove_if_unused(self) -> None:
        """A run refused before its first checkpoint leaves nothing behind: the files it wrote
        go, and the folders it made (``runs/`` too) if that leaves them empty (a user's own
        files stay)."""
        if self.finished or self.last.exists():
            return
        written = (
            self.config,
            self.csv,
            self.sets,
            self.mlflow,
            self.report,
            self.train_images,
            self.test_predictions,
        )
        for path in (*written, self.lock_file):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)
        for folder in (self.path, *self.made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    # --- records ---

    def write_config(self, cfg: Config) -> None:
        write_json(self.config, cfg.to_dict())

    def read_config(self) -> Config:
        raw = self._read_json(self.config)
        if not isinstance(raw, dict):
            raise BlitzError(f"{self.config} holds no settings: it was not written by blitz")
        return config_from_dict(raw, raw.get("preset", "custom"))

    def write_sets(self, sets: Assignment) -> None:
        """``sets.csv``: set, class, image, one row per image (``roles.record``)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(SETS_HEADER)
        writer.writerows((role, cls, image) for role, rows in sets.items() for image, cls in rows)
        # a file name that is not UTF-8 keeps its bytes, so read_sets finds the same file
        write_atomic(self.sets, out.getvalue().encode("utf-8", NAME_BYTES))

    def read_sets(self) -> Assignment | None:
        """The sets ``write_sets`` wrote; None for a run written before they were recorded."""
        if not self.sets.exists():
            return None
        problem = f"{self.sets} cannot be used: it was changed by hand or not written by blitz"
        try:
            data = read_regular(self.sets, MAX_SETS_BYTES, follow=False)
            reader = csv.reader(io.StringIO(data.decode("utf-8", NAME_BYTES), newline=""))
            rows = [(reader.line_num, row) for row in reader]
        except (OSError, csv.Error) as exc:
            raise BlitzError(f"{problem} ({exc})") from None
        if not rows or rows[0][1] != list(SETS_HEADER):
            raise BlitzError(f"{problem} (its first row is not {','.join(SETS_HEADER)})")
        return _assignment(rows[1:], problem)

    def write_metrics(self, metrics: Metrics) -> None:
        """Written last: its presence marks the run finished."""
        write_json(self.metrics, metrics.to_dict())

    def read_metrics(self) -> Metrics:
        if not self.metrics.exists():  # anything else there is refused when read
            raise BlitzError(f"no metrics.json in {self}: pass a finished run directory")
        try:
            return Metrics.from_dict(self._read_json(self.metrics))
        except BlitzError as exc:
            raise BlitzError(
                f"{self.metrics} cannot be used ({exc}): it was changed by hand or not written "
                f"by blitz; run blitz eval {self} to measure the model again"
            ) from None

    def _read_json(self, path: Path) -> Any:
        try:
            text = read_regular(path, MAX_JSON_BYTES, follow=False).decode("utf-8")
            return parse_nested(json.loads, text, str(path))
        except OSError as exc:
            raise BlitzError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BlitzError(f"cannot read {path}: {exc}") from None

    def save_model(self, ckpt: Checkpoint, name: str = "model") -> None:
        """``model.pt`` (the final weights), ``last.pt`` or ``best.pt``."""
        save_checkpoint(getattr(self, name), ckpt)

    def drop_resume_point(self) -> None:
        """Delete ``last.pt`` once the run is finished: there is nothing left to resume, and it
        holds the optimizer's state besides the weights (with Adam, three times model.pt)."""
        self.last.unlink(missing_ok=True)

    def load_model(self) -> Checkpoint:
        if not self.path.is_dir():
            raise BlitzError(f"{self} is not a folder: pass a run directory written by blitz train")
        return load_checkpoint(self.model)

    def load_resumable(self) -> Checkpoint:
        """The newest complete checkpoint of an unfinished run (what --resume continues from)."""
        if self.finished:
            raise BlitzError(
                f"{self} holds a finished run: there is nothing to resume. To train on from its "
                f"settings, start a new run: blitz train --config {self} --out NEW_DIR"
            )
        if not self.last.exists():
            raise BlitzError(
                f"no checkpoint to resume in {self}: the run stopped before its first checkpoint "
                f"(or this is not a run directory); start it again with --out {self} --overwrite"
            )
        ckpt = load_checkpoint(self.last)
        if ckpt.training is None:
            raise BlitzError(f"{self.last} holds weights only, not a training state to resume")
        return ckpt


def _assignment(rows: list[tuple[int, list[str]]], problem: str) -> Assignment:
    """``sets.csv``'s (line, row) pairs as the sets; a row of another shape or an image listed
    twice (it would be scored twice, or be in two sets) is a BlitzError opening with ``problem``."""
    sets: Assignment = {}
    first_line: dict[str, int] = {}  # image -> the line that lists it
    for line, row in rows:
        if len(row) != 3 or row[0] not in ROLES:
            raise BlitzError(f"{problem} (a row is not set,class,image: {row[:3]})")
        if row[2] in first_line:
            raise BlitzError(
                f"{problem} (line {line} lists image {row[2]!r} again, as line "
                f"{first_line[row[2]]} does): delete the repeated line"
            )
        first_line[row[2]] = line
        sets.setdefault(row[0], []).append((row[2], row[1]))
    return sets
