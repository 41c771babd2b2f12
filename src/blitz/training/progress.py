"""What the training loop reports as it goes: bars or lines, the seed's running loss,
``metrics.csv`` and TensorBoard. The loop calls ``step`` once per optimizer step."""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from blitz.config.settings import Config
from blitz.data.dataset import Log
from blitz.errors import BlitzError
from blitz.files import open_new, read_regular
from blitz.training.rundir import RunDir
from blitz.utils.writes import write_failed

CSV_FIELDS = ("step", "epoch", "loss", "accuracy", "lr", "images_per_s")
MAX_METRICS_CSV = 64 * 2**20  # a row per 50 steps: a million steps take about 1 MB
EPOCH_LINES = 20  # epoch lines in a log at most (about)
INTERVAL = 50  # steps per metrics.csv row and bar update: .item() syncs the device, so not always


class Tracker(Protocol):
    """Where the loop's rows also go (tracking.MlflowTracker): described here, not imported,
    because tracking is an output built on the run directory, above the loop."""

    def log_step(self, row: dict[str, Any], step: int) -> None: ...

    def log_epoch(self, record: dict[str, Any], step: int) -> None: ...


class Meter:
    """Sums of loss, correct predictions and images over an interval, kept on the device."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss: Any = 0.0
        self.correct: Any = 0
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()

    def state_dict(self) -> dict[str, float]:
        """The sums so far, as plain numbers (a checkpoint carries them across a restart)."""
        return {"loss": float(self.loss), "correct": float(self.correct),
                "images": self.images, "steps": self.steps}  # fmt: skip

    def load_state_dict(self, saved: dict[str, float]) -> None:
        self.loss, self.correct = saved["loss"], saved["correct"]
        self.images, self.steps = int(saved["images"]), int(saved["steps"])

    def add(self, loss: Any, correct: Any, images: int) -> None:
        self.loss = self.loss + loss
        self.correct = self.correct + correct
        self.images += images
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Mean loss, accuracy and images/s since the last read; then start a new interval."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        out = {
            "loss": float(self.loss) / max(self.steps, 1),
            "accuracy": float(self.correct) / max(self.images, 1),
            "images_per_s": self.images / seconds,
            "images": self.images,
        }
        self.reset()
        return out


class CsvLog:
    """``metrics.csv``: one row per interval, flushed so another tool can follow it live.

    A resumed run keeps the rows up to the step it resumes from (later ones are redone)."""

    def __init__(self, path: Path, resumed_step: int = 0) -> None:
        self.path = path
        old = read_metrics_csv(path) if resumed_step else []  # a new run reads none
        kept = [r for r in old if r["step"] <= resumed_step]
        # a new file, never through a link planted at its name (files.open_new)
        self.file = io.TextIOWrapper(open_new(path), encoding="utf-8", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=CSV_FIELDS)
        self.writer.writeheader()
        for row in kept:
            self.write(row)

    def write(self, row: dict[str, float]) -> None:
        try:
            self.writer.writerow({k: _fmt(row[k]) for k in CSV_FIELDS})
            self.file.flush()
        except OSError as exc:  # a full disk
            raise write_failed(self.path, exc) from None

    def close(self) -> None:
        self.file.close()


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as numbers (empty if the file is missing)."""
    if not path.is_file():
        return []
    try:  # a run directory may come from anyone: only a regular file of its own is read
        data = read_regular(path, MAX_METRICS_CSV, follow=False)
        rows = csv.DictReader(io.StringIO(data.decode("utf-8", "replace"), newline=""))
        return [row for row in map(_numbers, rows) if row]
    except OSError as exc:
        raise BlitzError(f"cannot read {path}: {exc.strerror or exc}") from None
    except csv.Error as exc:  # a NUL, a field of megabytes: no metrics.csv blitz wrote
        raise BlitzError(f"cannot read {path}: {exc}; delete it to report without it") from None


def _numbers(row: dict[str, str]) -> dict[str, float] | None:
    """A row as numbers; a row edited into something else is left out, not a crash."""
    try:
        numbers = {k: float(v) for k, v in row.items() if k in CSV_FIELDS}
    except (TypeError, ValueError):
        return None
    # the curves are drawn from these: a row without them (a header edited) is left out too
    return numbers if {"step", "loss", "lr"} <= numbers.keys() else None


def open_tensorboard(folder: Path):
    """A ``SummaryWriter``, or a clear error when the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise BlitzError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or leave out --tensorboard)"
        ) from None
    if folder.is_symlink():  # blitz makes a folder here: a link was planted, to write elsewhere
        folder.unlink()
    try:
        return SummaryWriter(str(folder))  # which writes its first event at once
    except OSError as exc:
        raise write_failed(folder, exc) from None


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (its stderr is no terminal, yet shows bars)."""
    return "ipykernel" in sys.modules


def notebook_tqdm() -> type[tqdm]:
    """tqdm's widget bar in a notebook (a text bar where ipywidgets is missing)."""
    from tqdm.auto import tqdm as auto

    return auto


class Progress:
    """Observer of the loop: a tqdm bar on a terminal, else one line per epoch (or the seed's
    running-loss lines); rows for metrics.csv and TensorBoard when given a run directory."""

    def __init__(
        self,
        cfg: Config,
        log: Log,
        quiet: bool,
        out: RunDir | None = None,
        resumed_step: int = 0,
        tracker: Tracker | None = None,
    ) -> None:
        self.cfg, self.log, self.quiet, self.tracker = cfg, log, quiet, tracker
        self.seed_lines = cfg.train.log_every
        self.use_bar = not quiet and not self.seed_lines and (sys.stderr.isatty() or in_notebook())
        self.out = out
        self.csv = CsvLog(out.csv, resumed_step) if out else None
        self.board = open_tensorboard(out.tensorboard) if out and cfg.train.tensorboard else None
        self.interval, self.epoch_meter, self.running = Meter(), Meter(), Meter()
        self.bar: tqdm | None = None
        self.last_step = resumed_step  # a resumed epoch may end before it takes a step
        self.resumed: dict[str, dict[str, float]] = {}  # meters' sums from a checkpoint

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """A new epoch of ``steps`` steps, ``done`` of them already (in a resumed run)."""
        self.epoch, self.in_epoch = epoch, done
        for meter in (self.interval, self.epoch_meter, self.running):
            meter.reset()
        # a resumed run's first rows sum the steps before the restart too, as if never stopped
        for name, saved in self.resumed.items():
            getattr(self, name).load_state_dict(saved)
        self.resumed = {}
        if self.use_bar:
            desc = f"epoch {epoch + 1}/{self.cfg.train.epochs}"
            bar = notebook_tqdm() if in_notebook() else tqdm
            self.bar = bar(total=steps, initial=done, desc=desc, unit="step", dynamic_ncols=True)

    def state_dict(self) -> dict[str, dict[str, float]]:
        """What the rows in progress have summed (for checkpoints)."""
        return {"interval": self.interval.state_dict(), "running": self.running.state_dict()}

    def load_state_dict(self, saved: dict[str, dict[str, float]]) -> None:
        """Continue the rows of a checkpoint's run (applied when its epoch starts again)."""
        self.resumed = saved

    def step(self, step: int, loss, correct, images: int, optimizer) -> None:
        """Count one optimizer step (its loss, correct predictions and batch size, tensors left
        on the device); sync the device only at interval ends."""
        self.in_epoch += 1
        self.last_step = step
        for meter in (self.interval, self.epoch_meter, self.running):
            meter.add(loss, correct, images)
        if self.seed_lines and self.in_epoch % self.seed_lines == 0:
            # the seed's line: '[%d, %5d] loss: %.3f'
            line = f"[{self.epoch + 1}, {self.in_epoch:5d}] loss: {self.running.read()['loss']:.3f}"
            self.log(line)
        if self.bar is not None:
            self.bar.update()
        if step % INTERVAL == 0:
            self._flush(step, optimizer.param_groups[0]["lr"])

    def _flush(self, step: int, lr: float) -> None:
        if not self.interval.steps:
            return
        row = {"step": step, "epoch": self.epoch + 1, "lr": lr, **self.interval.read()}
        del row["images"]
        if self.csv:
            self.csv.write(row)
        if self.tracker:
            self.tracker.log_step(row, step)
        if self.board:
            for key in ("loss", "accuracy", "lr", "images_per_s"):
                self.board.add_scalar(f"train/{key}", row[key], step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.3f}",
                acc=f"{100 * row['accuracy']:.1f}%",
                img_s=f"{row['images_per_s']:.0f}",
            )

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Close the epoch's interval, add its ``train_accuracy`` to ``record`` (the history
        keeps it), and print its line (unless a bar showed it)."""
        self._flush(self.last_step, record["lr"])
        epoch = self.epoch_meter.read()
        record.setdefault("train_accuracy", round(epoch["accuracy"], 6))
        if self.tracker:
            self.tracker.log_epoch(record, self.last_step)
        images_per_s = epoch["images"] / max(record["seconds"], 1e-9)  # the loop's time alone
        if self.bar is not None:
            if "val_accuracy" in record:
                self.bar.set_postfix_str(
                    f"{self.bar.postfix}, val={100 * record['val_accuracy']:.1f}%"
                )
            self.bar.close()
            self.bar = None
        if self.board and "val_accuracy" in record:
            self.board.add_scalar("val/accuracy", record["val_accuracy"], self.last_step)
        epochs = self.cfg.train.epochs
        if not (self.quiet or self.use_bar) and _worth_a_line(record["epoch"], epochs):
            self.log(format_epoch(record, epochs, images_per_s))

    def close(self, failed: bool = False) -> None:
        """Close metrics.csv and TensorBoard, each whatever the other does. One that cannot
        write its last rows (a full disk) is a BlitzError, unless the run ``failed``: then
        the failure that stopped it is the one to tell, once, and no traceback follows it."""
        problems = []
        for sink, path in ((self.csv, "csv"), (self.board, "tensorboard")):
            try:
                if sink:
                    sink.close()
            except OSError as exc:  # TensorBoard's writer raises what its thread could not write
                problems.append(write_failed(getattr(self.out, path), exc))
        if problems and not failed:
            raise problems[0]


def _worth_a_line(epoch: int, epochs: int) -> bool:
    """Every epoch's line up to 20 epochs; past that, about 20 lines and the last (a tiny
    dataset may train for hundreds of one-step epochs)."""
    return epochs <= EPOCH_LINES or epoch % math.ceil(epochs / EPOCH_LINES) == 0 or epoch == epochs


def format_epoch(record: dict[str, Any], epochs: int, images_per_s: float) -> str:
    """``epoch 1/3: loss 1.812, train accuracy 33.1 %, val accuracy 41.2 %, ...``."""
    parts = [f"loss {record['train_loss']:.3f}"]
    parts.append(f"train accuracy {100 * record['train_accuracy']:.1f} %")
    if "val_accuracy" in record:
        parts.append(f"val accuracy {100 * record['val_accuracy']:.1f} %")
    if "val_map" in record:  # multi-label: the accuracies are of whole label sets
        parts.append(f"val mAP {100 * record['val_map']:.1f} %")
    parts += [f"lr {record['lr']:.3g}", f"{images_per_s:.0f} images/s", f"{record['seconds']} s"]
    return f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts)
