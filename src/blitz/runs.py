"""A run from start to finish: set-up (the run context), fit, and finish (test, record, report)."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import replace

import torch
from torch import nn

from blitz import __version__
from blitz.cache import cache_dir
from blitz.checkpoint import Checkpoint
from blitz.config import Config
from blitz.context import Log, RunContext, silent
from blitz.data import ImageData
from blitz.devices import device_name, fit_to_device, resolve_device
from blitz.distributed import barrier, check_batch_size, init_world, local_device
from blitz.engine import Loop, NonFiniteLoss, planned_steps, train
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
from blitz.resume import Checkpointer, make_reproducible
from blitz.rundir import Metrics, RunDir
from blitz.signals import stop_on_signals
from blitz.sources import load_data

SAMPLES = 8  # images in the grids (the seed shows 4)


def elastic_resume(run_dir: RunDir) -> Checkpoint | None:
    """The checkpoint to carry on from when torchrun restarted the worker group after a
    failure (``--max-restarts``); None for a fresh start."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    return run_dir.load_resumable() if restarted and run_dir.last.exists() else None


def train_run(
    cfg: Config,
    run_dir: RunDir,
    log: Log,
    quiet: bool,
    started: float,
    resume: Checkpoint | None = None,
) -> Metrics | None:
    """Load data, train, test, and write config, checkpoint, pictures and metrics into the run
    directory; with ``resume``, continue that run where it stopped. Under torchrun every
    process trains; only the first prints and writes (and returns the metrics)."""
    ctx = set_up(cfg, run_dir, log, quiet, started)
    data = _load_data_once(ctx)
    if resume is not None:
        check_classes(data, resume, run_dir)
        saved = resume.training["train_state"]
        ctx.log(f"resuming {run_dir} after step {saved['step']} (epoch {saved['epoch'] + 1})")
    model = build_model(ctx, data)
    loop = fit(ctx, data, model, resume)
    return finish(ctx, data, model, loop)


def set_up(
    cfg: Config, run_dir: RunDir | None, log: Log, quiet: bool, started: float
) -> RunContext:
    """The run context: reproducibility, the process group, this process's device."""
    make_reproducible(cfg)
    world = init_world(resolve_device(cfg.train.device))
    check_batch_size(cfg.train.batch_size, world)
    device = local_device(resolve_device(cfg.train.device), world)
    if not world.is_main:
        log, quiet = silent, True
    cfg = fit_to_device(cfg, device, log)  # a preset's "auto" settings meet this machine
    if cfg.train.compile:  # compiled kernels persist beside the data, for the next process
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "compile"))
    return RunContext(cfg, device, world, run_dir, log, quiet, started)


def build_model(ctx: RunContext, data: ImageData) -> nn.Module:
    """A fresh model for ``data``, initialised from the seed, on the device in the run's memory
    format (what training and lr-find start from)."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed)  # the weights' initialisation depends on the seed alone
    model = create_model(cfg.model.name, len(data.classes), data.channels, **cfg.model.options)
    model = model.to(ctx.device, memory_format=_memory_format(cfg))
    check_input_size(model, cfg.model.name, data.channels, cfg.data.image_size)
    return model


def fit(ctx: RunContext, data: ImageData, model: nn.Module, resume: Checkpoint | None) -> Loop:
    """Train with checkpoints (last, best, on a signal); a NaN loss keeps the last good one."""
    total = planned_steps(ctx.cfg, len(data.train))
    resumed_step = resume.training["train_state"]["step"] if resume else 0
    progress = Progress(ctx.cfg, ctx.log, ctx.quiet, ctx.writes, resumed_step)
    with stop_on_signals() as stop:
        hooks = Checkpointer(ctx, model, data.classes, total, stop, resume, progress)
        try:
            return train(ctx, data, model, progress, hooks)
        except NonFiniteLoss as exc:
            raise BlitzError(f"{exc}; {hooks.describe_kept()}") from None


def finish(ctx: RunContext, data: ImageData, model: nn.Module, loop: Loop) -> Metrics | None:
    """Test, then (first process) show the results, save the model, write metrics and report."""
    started_eval = time.perf_counter()
    result = evaluate(loop.eval_net, data.test, ctx.cfg, len(data.classes), ctx.world)  # synced
    eval_seconds = time.perf_counter() - started_eval
    run_dir = ctx.writes
    if run_dir is None:
        return None
    _show_results(result, data, run_dir, ctx.log)
    run_dir.save_model(Checkpoint.of(model, ctx.cfg, data.classes))
    metrics = _metrics(ctx, data, model, loop, result, eval_seconds)
    run_dir.write_metrics(metrics)  # its presence marks the run finished
    ctx.log(f"report: {write_report(run_dir, metrics, data.test, result)}")
    return metrics


def _metrics(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    loop: Loop,
    result: Evaluation,
    eval_seconds: float,
) -> Metrics:
    cfg, state = ctx.cfg, loop.state
    versions = {"blitz": __version__, "torch": torch.__version__}
    return Metrics(
        test_accuracy=round(result.accuracy, 6),
        classes=data.classes,
        confusion_matrix=result.matrix.tolist(),
        per_class_accuracy={
            c: round(a, 6) for c, a in zip(data.classes, per_class_accuracy(result.matrix))
        },
        train_seconds=round(state.train_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        compile_seconds=round(state.compile_seconds, 3),
        total_seconds=round(time.perf_counter() - ctx.started, 3),
        epochs=state.epoch,
        steps=state.step,
        steps_per_epoch=math.ceil(len(data.train) / cfg.train.batch_size),
        train_images=len(data.train),
        test_images=len(data.test),
        seed=cfg.train.seed,
        device=str(ctx.device),
        device_name=device_name(ctx.device),
        processes=ctx.world.size,
        preset=cfg.preset,
        data=data.name,
        data_storage=data.storage(),
        model=cfg.model.name,
        parameters=sum(p.numel() for p in model.parameters()),
        versions={**versions, "python": platform.python_version()},
        history=state.history,
    )


def check_classes(data: ImageData, ckpt: Checkpoint, run_dir: RunDir) -> None:
    """A checkpoint only fits data with the classes it was trained on, in the same order."""
    if data.classes != ckpt.model.classes:
        raise BlitzError(
            f"{data.name} has classes {data.classes}, but the run in {run_dir} was trained on "
            f"{ckpt.model.classes}: use data with the same classes"
        )


def _load_data_once(ctx: RunContext) -> ImageData:
    """The first process decodes (and caches); the others wait, then read the cache, or meet
    the same error as the first one (rather than a broken barrier). The first also writes the
    settings and the seed's look at the training images."""
    if not ctx.is_main:
        barrier(ctx.world)
        return _checked(load_data(ctx.cfg.data, ctx.log))
    try:
        data = _checked(load_data(ctx.cfg.data, ctx.log))
    finally:
        barrier(ctx.world)
    ctx.dir.write_config(ctx.cfg)
    _show_training_images(data, ctx.dir, ctx.log)
    _describe(ctx, data)
    return data


def _checked(data: ImageData) -> ImageData:
    if len(data.classes) < 2:
        raise BlitzError(
            f"{data.name} has a single class ({', '.join(data.classes)}): a classifier needs at "
            "least two classes (one folder of images per class)"
        )
    return data


def _describe(ctx: RunContext, data: ImageData) -> None:
    processes = f" x {ctx.world.size} processes" if ctx.world.size > 1 else ""
    ctx.log(
        f"data: {data.name} ({len(data.train)} train, {len(data.test)} test images, "
        f"{len(data.classes)} classes, {data.storage()}); model: {ctx.cfg.model.name}; "
        f"device: {ctx.device}{processes}"
    )


def _memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def sample_rows(count: int, total: int) -> torch.Tensor:
    """A fixed random choice of rows (folders are sorted by class: the first rows are one class)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count]


def _show_training_images(data: ImageData, run_dir: RunDir, log: Log) -> None:
    """The seed's first look at the data: a grid of training images and their labels."""
    rows = sample_rows(SAMPLES, len(data.train))
    names = [data.classes[i] for i in data.train.labels[rows].tolist()]
    save_image_grid(data.train.images_at(rows), names, run_dir.train_images)
    log(f"training images ({run_dir.train_images.name}): " + " ".join(f"{n:>5s}" for n in names))


def _show_results(result: Evaluation, data: ImageData, run_dir: RunDir, log: Log) -> None:
    """Print the seed's views of a test (samples, accuracy, per class) and save the grid."""
    rows = sample_rows(SAMPLES, len(data.test))
    truth = data.test.labels[rows].tolist()
    guess = result.predicted[rows].tolist()
    captions = [f"{data.classes[t]}\n→ {data.classes[p]}" for t, p in zip(truth, guess)]
    save_image_grid(data.test.images_at(rows), captions, run_dir.test_predictions)
    log(format_samples(truth, guess, data.classes))
    log(format_accuracy(result.matrix))
    log(format_per_class(result.matrix, data.classes))
    log(format_confusion(result.matrix, data.classes))
    if note := chance_note(result.matrix):
        log(note)


def chance_note(matrix: torch.Tensor) -> str | None:
    """A warning when the accuracy is no better than always guessing the largest class."""
    counts = matrix.sum(1)
    baseline = int(counts.max()) / max(int(counts.sum()), 1)
    accuracy = int(matrix.diag().sum()) / max(int(counts.sum()), 1)
    if accuracy > baseline + 0.01:
        return None
    return (
        f"warning: the model learned nothing useful: its accuracy ({100 * accuracy:.1f} %) is no "
        f"better than always answering the largest class ({100 * baseline:.1f} %). Train "
        "longer (--epochs), try another --lr, or check that the images differ between classes"
    )


def eval_run(run_dir: RunDir, source: str | None, log: Log) -> Evaluation:
    """Test a finished run's checkpoint, on its own data or on ``source``."""
    cfg, model, data = _load_run(run_dir, source, log)
    result = evaluate(model, data.test, cfg, len(data.classes))
    _show_results(result, data, run_dir, log)
    return result


def _load_run(run_dir: RunDir, source: str | None, log: Log) -> tuple[Config, nn.Module, ImageData]:
    ckpt = run_dir.load_model()
    cfg = ckpt.cfg
    data = load_data(replace(cfg.data, source=source or cfg.data.source), log)
    check_classes(data, ckpt, run_dir)
    device = resolve_device(cfg.train.device)
    return cfg, ckpt.build_model().to(device, memory_format=_memory_format(cfg)), data


def rebuild_report(run_dir: RunDir, log: Log) -> RunDir:
    """Write ``report.html`` again from model.pt, metrics.json and the run's data."""
    metrics = run_dir.read_metrics()
    cfg, model, data = _load_run(run_dir, None, log)
    result = evaluate(model, data.test, cfg, len(data.classes))
    return write_report(run_dir, metrics, data.test, result)
