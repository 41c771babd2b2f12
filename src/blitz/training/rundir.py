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
from datetime import datetime
from pathlib import Path
from typing import Any

from blitz.config.checks import plain_name
from blitz.config.loading import parse_nested
from blitz.config.settings import Config
from blitz.data.roles import ROLES, Assignment
from blitz.errors import BlitzError
from blitz.files import read_regular, remove_temporary_files
from blitz.models.configs import config_from_dict
from blitz.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from blitz.training.metrics import Metrics
from blitz.utils.cells import cell_text, text_cell
from blitz.utils.locks import locked
from blitz.utils.writes import check_output_file, write_atomic, write_json

SETS_HEADER = ("set", "class", "image")
MAX_SETS_BYTES = 2**30  # a line per image: far more than any dataset blitz reads in a run
MAX_JSON_BYTES = 2**30  # config.json, metrics.json: a confusion matrix of thousands of classes
NAME_BYTES = "surrogateescape"  # how Python holds a file name that is not UTF-8 (os.fsdecode)


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
        rows = ((role, cls, image) for role, listed in sets.items() for image, cls in listed)
        writer.writerows(map(text_cell, row) for row in rows)  # as a spreadsheet's text
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
            rows = [(reader.line_num, list(map(cell_text, row))) for row in reader]
        except (OSError, csv.Error) as exc:
            raise BlitzError(f"{problem} ({exc})") from None
        if not rows or rows[0][1] != list(SETS_HEADER):
            raise BlitzError(f"{problem} (its first row is not {','.join(SETS_HEADER)})")
        return _assignment(rows[1:], problem)

    def write_metrics(self, metrics: Metrics) -> None:
        """Written last: its presence marks the run finished."""
        write_json(self.metrics, metrics.to_dict())

    def read_metrics(self) -> Metrics:
        if not self.path.is_dir():
            raise BlitzError(f"no run directory at {self}: pass one written by blitz train")
        if not self.metrics.exists():  # anything else there is refused when read
            raise BlitzError(f"no metrics.json in {self}: pass a finished run directory")
        try:
            return Metrics.from_dict(self._read_json(self.metrics))
        except BlitzError as exc:
            raise BlitzError(
                f"{self.metrics} cannot be used ({exc}): it was changed by hand or not written "
                f"by blitz. The model still answers (blitz eval {self} tests it again, predict "
                "and export use it); the run's record is only written by training"
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
        if not self.model.exists() and self.last.exists():
            raise BlitzError(
                f"the run in {self} has not finished (it was stopped while training): continue "
                f"it with blitz train --resume {self}"
            )
        return load_checkpoint(self.model)

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is one of this run's own files, which no export or CSV may be
        written over: every file this class names (settings, sets, checkpoints, metrics,
        report, pictures, logs, lock), in a folder that holds a run."""
        return self.config.exists() and path.name in {
            p.name for p in vars(self).values() if isinstance(p, Path) and p != self.path
        }

    def load_resumable(self) -> Checkpoint:
        """The newest complete checkpoint of an unfinished run (what --resume continues from)."""
        others = self._foreign_files()
        if not self.path.is_dir() or others:
            held = f" (it holds {others[0]}, ...)" if others else ""
            raise BlitzError(
                f"{self} is not a run directory{held}: --resume takes the --out folder of a "
                "run that blitz train started"
            )
        if self.finished:
            raise BlitzError(
                f"{self} holds a finished run: there is nothing to resume. To train on from its "
                f"settings, start a new run: blitz train --config {self} --out NEW_DIR"
            )
        if not self.last.exists():
            raise BlitzError(
                f"no checkpoint to resume in {self}: the run stopped before its first "
                f"checkpoint; start it again with --out {self} --overwrite"
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


def check_output(path: Path, what: str, suffix: str = "") -> None:
    """``check_output_file``, and no file of a run directory (``RunDir.owns``): an export
    named ``model.pt`` beside the run's own would destroy the run."""
    check_output_file(path, what, suffix)
    if RunDir(path.parent).owns(path):
        raise BlitzError(
            f"cannot write {what} to {path}: that is a file of the run in {path.parent}; "
            "choose another name"
        )
