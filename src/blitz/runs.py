"""A run from start to finish: data, model, training, testing, and the run directory it leaves."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blitz import __version__
from blitz.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from blitz.config import Config
from blitz.data import ImageData, cache_dir, load_data
from blitz.devices import device_name, resolve_device
from blitz.distributed import World, barrier, check_batch_size, init_world, local_device
from blitz.engine import Log, Loop, NonFiniteLoss, planned_steps, train
from blitz.errors import BlitzError
from blitz.evaluate import (
    Evaluation,
    evaluate,
    format_accuracy,
    format_confusion,
    format_per_class,
    format_samples,
    per_class_accuracy,
)
from blitz.models import check_input_size, create_model
from blitz.plots import save_image_grid
from blitz.progress import Progress
from blitz.report import write_report
from blitz.resume import BEST, LAST, Checkpointer, make_reproducible
from blitz.signals import stop_on_signals

CHECKPOINT = "model.pt"
SAMPLES = 8  # images in the grids (the seed shows 4)


def default_run_dir(preset: str) -> Path:
    """``runs/<timestamp>-<preset>``."""
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{preset}"


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create the run directory; refuse to clobber a finished or resumable run unless asked."""
    if not overwrite:
        if (out / "metrics.json").exists():
            raise BlitzError(
                f"{out} already holds a finished run: choose another --out or pass --overwrite"
            )
        if (out / LAST).exists():
            raise BlitzError(
                f"{out} holds an unfinished run: continue it with blitz train --resume {out}, "
                "or pass --overwrite to start again"
            )
    for name in ("metrics.json", CHECKPOINT, LAST, BEST):  # the old run's results go first
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest complete checkpoint of an unfinished run (what --resume continues from)."""
    if (run_dir / "metrics.json").exists():
        raise BlitzError(f"{run_dir} holds a finished run: there is nothing to resume")
    if not (run_dir / LAST).exists():
        raise BlitzError(
            f"no checkpoint to resume in {run_dir}: the run stopped before its first checkpoint "
            f"(or this is not a run directory); start it again with --out {run_dir} --overwrite"
        )
    ckpt = load_checkpoint(run_dir / LAST)
    if "training" not in ckpt:
        raise BlitzError(f"{run_dir / LAST} holds weights only, not a training state to resume")
    return ckpt


def elastic_resume(out: Path) -> dict[str, Any] | None:
    """The checkpoint to carry on from when torchrun restarted the worker group after a
    failure (``--max-restarts``); None for a fresh start."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or not (out / LAST).exists():
        return None
    return resume_checkpoint(out)


def write_json(path: Path, payload: Any) -> None:
    """Pretty JSON, written via a temporary file so a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def train_run(
    cfg: Config,
    out: Path,
    log: Log,
    quiet: bool,
    started: float,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load data, train, test, and write config, checkpoint, pictures and metrics into ``out``.

    With ``resume`` (a checkpoint from ``resume_checkpoint``), continue that run where it stopped.
    Under torchrun every process trains; only the first prints and writes."""
    make_reproducible(cfg)
    world = init_world(resolve_device(cfg.train.device))
    check_batch_size(cfg.train.batch_size, world)
    device = local_device(resolve_device(cfg.train.device), world)
    if not world.is_main:
        log, quiet = (lambda message: None), True
    data = _load_data_once(cfg, log, world)
    if resume is not None:
        check_classes(data, resume, out)
        saved = resume["training"]["train_state"]
        log(f"resuming {out} after step {saved['step']} (epoch {saved['epoch'] + 1})")
    if world.is_main:
        write_json(out / "config.json", cfg.to_dict())
        _show_training_images(data, out, log)
    log(
        f"data: {data.name} ({len(data.train)} train, {len(data.test)} test images, "
        f"{len(data.classes)} classes, {data.storage()}); model: {cfg.model.name}; "
        f"device: {device}" + (f" x {world.size} processes" if world.size > 1 else "")
    )
    torch.manual_seed(cfg.train.seed)  # the weights' initialisation depends on the seed alone
    model = create_model(cfg.model.name, len(data.classes), data.channels, **cfg.model.options)
    model = model.to(device, memory_format=_memory_format(cfg))
    check_input_size(model, cfg.model.name, data.channels, cfg.data.image_size)
    if cfg.train.compile:  # compiled kernels persist beside the data, for the next process
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "compile"))
    loop = _train_with_checkpoints(cfg, data, model, device, out, log, quiet, world, resume)
    state = loop.state
    started_eval = time.perf_counter()
    result = evaluate(loop.eval_net, data.test, cfg, len(data.classes), world)  # CPU: synced
    eval_seconds = time.perf_counter() - started_eval
    if not world.is_main:
        return {"test_accuracy": result.accuracy}
    _show_results(result, data, out, log)
    save_checkpoint(out / CHECKPOINT, model, cfg, data.classes)
    metrics = {
        "test_accuracy": round(result.accuracy, 6),
        "per_class_accuracy": {
            c: round(a, 6) for c, a in zip(data.classes, per_class_accuracy(result.matrix))
        },
        "classes": data.classes,
        "confusion_matrix": result.matrix.tolist(),
        "train_seconds": round(state.train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "compile_seconds": round(state.compile_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "epochs": state.epoch,
        "steps": state.step,
        "seed": cfg.train.seed,
        "device": str(device),
        "device_name": device_name(device),
        "processes": world.size,
        "preset": cfg.preset,
        "data": data.name,
        "data_storage": data.storage(),
        "model": cfg.model.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {
            "blitz": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "history": state.history,
    }
    write_json(out / "metrics.json", metrics)  # its presence marks the run finished
    log(f"report: {write_report(out, metrics, data.test, result)}")
    return metrics


def _train_with_checkpoints(
    cfg: Config,
    data: ImageData,
    model: torch.nn.Module,
    device: torch.device,
    out: Path,
    log: Log,
    quiet: bool,
    world: World,
    resume: dict[str, Any] | None,
) -> Loop:
    total = planned_steps(cfg, len(data.train))
    resumed_step = resume["training"]["train_state"]["step"] if resume else 0
    progress = Progress(cfg, log, quiet, out if world.is_main else None, resumed_step)
    with stop_on_signals() as stop:
        hooks = Checkpointer(out, cfg, model, data.classes, total, stop, resume, world.is_main)
        try:
            return train(cfg, data, model, device, log, quiet, world, progress, hooks)
        except NonFiniteLoss as exc:
            raise BlitzError(f"{exc}; {hooks.describe_kept()}") from None


def check_classes(data: ImageData, ckpt: dict[str, Any], run_dir: Path) -> None:
    """A checkpoint only fits data with the classes it was trained on, in the same order."""
    if data.classes != ckpt["classes"]:
        raise BlitzError(
            f"{data.name} has classes {data.classes}, but the run in {run_dir} was trained on "
            f"{ckpt['classes']}: use data with the same classes"
        )


def _load_data_once(cfg: Config, log: Log, world: World) -> ImageData:
    """The first process decodes (and caches); the others wait, then read the cache, or meet
    the same error as the first one (rather than a broken barrier)."""
    if not world.is_main:
        barrier(world)
        return load_data(cfg.data, log)
    try:
        return load_data(cfg.data, log)
    finally:
        barrier(world)


def _memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def sample_rows(count: int, total: int) -> torch.Tensor:
    """A fixed random choice of rows (folders are sorted by class: the first rows are one class)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count]


def _show_training_images(data: ImageData, out: Path, log: Log) -> None:
    """The seed's first look at the data: a grid of training images and their labels."""
    rows = sample_rows(SAMPLES, len(data.train))
    names = [data.classes[i] for i in data.train.labels[rows].tolist()]
    save_image_grid(data.train.images_at(rows), names, out / "train_images.png")
    log(" ".join(f"{n:>5s}" for n in names))


def _show_results(result: Evaluation, data: ImageData, out: Path, log: Log) -> None:
    """Print the seed's views of a test (samples, accuracy, per class) and save the grid."""
    rows = sample_rows(SAMPLES, len(data.test))
    truth = data.test.labels[rows].tolist()
    guess = result.predicted[rows].tolist()
    captions = [f"{data.classes[t]}\n→ {data.classes[p]}" for t, p in zip(truth, guess)]
    save_image_grid(data.test.images_at(rows), captions, out / "test_predictions.png")
    log(format_samples(truth, guess, data.classes))
    log(format_accuracy(result.matrix))
    log(format_per_class(result.matrix, data.classes))
    log(format_confusion(result.matrix, data.classes))


def eval_run(run_dir: Path, source: str | None, log: Log) -> Evaluation:
    """Test a finished run's checkpoint, on its own data or on ``source``."""
    cfg, model, data = _load_run(run_dir, source, log)
    result = evaluate(model, data.test, cfg, len(data.classes))
    _show_results(result, data, run_dir, log)
    return result


def _load_run(run_dir: Path, source: str | None, log: Log) -> tuple[Config, nn.Module, ImageData]:
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    cfg = config_from_checkpoint(ckpt)
    data = load_data(replace(cfg.data, source=source or cfg.data.source), log)
    check_classes(data, ckpt, run_dir)
    device = resolve_device(cfg.train.device)
    return cfg, model_from_checkpoint(ckpt).to(device, memory_format=_memory_format(cfg)), data


def rebuild_report(run_dir: Path, log: Log) -> Path:
    """Write ``report.html`` again from model.pt, metrics.json and the run's data."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise BlitzError(f"no metrics.json in {run_dir}: pass a finished run directory")
    cfg, model, data = _load_run(run_dir, None, log)
    result = evaluate(model, data.test, cfg, len(data.classes))
    return write_report(run_dir, json.loads(metrics_file.read_text()), data.test, result)
