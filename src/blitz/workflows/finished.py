"""A finished run again: its checkpoint tested (``blitz eval``) and its report rebuilt
(``blitz report``), on the run's own data or on other images."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from torch import nn

from blitz.data.dataset import ImageData
from blitz.data.sources import load_data, load_test_data
from blitz.training.calibration import measure
from blitz.training.checkpoint import Checkpoint
from blitz.training.context import Log
from blitz.training.devices import resolve_device
from blitz.training.evaluate import Evaluation, evaluate
from blitz.training.rundir import RunDir
from blitz.workflows.multilabel import Scored, eval_multilabel, score_split
from blitz.workflows.multilabel import write_report as write_multilabel
from blitz.workflows.printouts import show_results
from blitz.workflows.runs import check_classes, on_device


def eval_run(run_dir: RunDir, source: str | None, log: Log) -> Evaluation | Scored:
    """Test a finished run's checkpoint, on its own data or on ``source`` (a multi-label run:
    its figures at its thresholds)."""
    ckpt, model, data = _load_run(run_dir, source, log)
    if ckpt.model.task == "multi-label":
        return eval_multilabel(ckpt, model, data, run_dir, log)
    result = evaluate(model, data.test_set(), ckpt.cfg, len(data.classes))
    show_results(result, data, log)
    if result.logits is not None:  # the probabilities as predict gives them, and without T
        temperature = ckpt.model.temperature
        log(measure(result.logits, data.test_set().labels, temperature).summary())
    return result


def _load_run(
    run_dir: RunDir, source: str | None, log: Log
) -> tuple[Checkpoint, nn.Module, ImageData]:
    ckpt = run_dir.load_model()
    cfg = ckpt.cfg
    if source is None:  # the run's own split
        data = load_data(cfg.data, log, run_dir.read_sets())
        check_classes(data, ckpt, run_dir)
    else:
        data = load_test_data(replace(cfg.data, source=source), ckpt.model.classes, log)
        if note := _seen_note(run_dir, source, cfg.data.source, data):
            print(f"blitz: {note}", file=sys.stderr)  # said even under --quiet
    device = resolve_device(cfg.train.device)
    return ckpt, on_device(ckpt.build_model(), device, cfg), data


def _seen_note(run_dir: RunDir, source: str, own: str, data: ImageData) -> str | None:
    """A warning where ``--data`` is the run's own data and so holds the images it trained or
    validated on (recorded in sets.csv): a figure on them is no held-out figure."""
    sets = run_dir.read_sets()
    if sets is None or not _same_source(source, own):
        return None
    seen = {image for role in ("train", "val") for image, _ in sets.get(role, [])}
    images = data.test_set().row_ids("test")
    count = sum(image in seen for image in images)
    if not count:
        return None
    return (
        f"warning: {count} of these {len(images)} images are ones the run trained or validated "
        f"on, so this is no held-out figure; blitz eval {run_dir} without --data tests on its "
        "own test set"
    )


def _same_source(a: str, b: str) -> bool:
    """Whether two ``--data`` values name the same data: the same file or folder, or the same
    generated or downloaded set by name."""
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def rebuild_report(run_dir: RunDir, log: Log) -> Path:
    """Write ``report.html`` again from model.pt, metrics.json and the run's data."""
    metrics = run_dir.read_metrics()
    ckpt, model, data = _load_run(run_dir, None, log)
    test = data.test_set()
    if ckpt.model.task == "multi-label":
        thresholds = list(ckpt.model.thresholds)
        scored = score_split(model, test, ckpt.cfg, data.classes, thresholds)
        return write_multilabel(run_dir, metrics, test, scored, ckpt)
    result = evaluate(model, test, ckpt.cfg, len(data.classes))
    from blitz.outputs.report import write_report

    return write_report(run_dir, metrics, test, result, ckpt)
