"""A run from start to finish: set-up (the run context), fit, and finish (test, record, report)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from blitz.config.data_settings import Task
from blitz.config.settings import HUB, Config
from blitz.config.types import concrete
from blitz.data.dataset import ImageData
from blitz.data.roles import Assignment, hold_out_test, record
from blitz.data.sources import load_data, recorded_spec
from blitz.errors import BlitzError
from blitz.models import check_input_size, create_model
from blitz.models.timm_models import fetch_hub_weights, load_pretrained
from blitz.training.calibration import Calibration, calibrate
from blitz.training.checkpoint import Checkpoint
from blitz.training.compiling import use_compile_cache
from blitz.training.context import Log, RunContext, silent
from blitz.training.devices import fit_to_device, resolve_device
from blitz.training.distributed import barrier, check_batch_size, init_world, local_device
from blitz.training.engine import train
from blitz.training.evaluate import (
    Evaluation,
    evaluate,
    per_class_accuracy,
    scores,
)
from blitz.training.loop import (
    Loop,
    NonFiniteLoss,
    TrainState,
    steps_per_epoch,
)
from blitz.training.metrics import Metrics, matrix_record
from blitz.training.multilabel import check_settings
from blitz.training.progress import Progress
from blitz.training.resume import Checkpointer, choose_kernels
from blitz.training.rundir import RunDir
from blitz.training.warmstart import warm_start
from blitz.utils.signals import stop_on_signals
from blitz.workflows.multilabel import finish_multilabel
from blitz.workflows.printouts import describe, save_grids, show_results, show_training_labels
from blitz.workflows.record import publish, run_metrics

if TYPE_CHECKING:
    from blitz.outputs.tracking import MlflowTracker


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
    mlflow: str | None = None,
    test: bool = True,
    on_epoch: Callable[[TrainState, int], None] | None = None,
    on_result: Callable[[Metrics], None] | None = None,
) -> Metrics | None:
    """Load data, train, test, and write config, checkpoint, pictures and metrics into the run
    directory; with ``resume``, continue that run where it stopped; with ``mlflow`` (a tracking
    URI, "" for the default), also log it to MLflow. Under torchrun every process trains; only
    the first prints and writes (and returns the metrics). ``test=False`` holds the test set
    out: the run is scored on validation and never looks at a test image (blitz tune's trials,
    which write no report.html either: seconds each); ``on_epoch(state, planned_steps)`` is
    called after each epoch's checkpoint, ``on_result(metrics)`` once they are written, before
    the pictures and the report (seconds of plotting that need not delay the result)."""
    ctx = set_up(cfg, run_dir, log, quiet, started)
    if cfg.data.chosen:
        ctx.log(f"auto {cfg.data.chosen}")
    if resume is None and cfg.model.pretrained == HUB:  # weights that cannot be had: say so
        fetch_hub_weights(cfg.model.name)  # before minutes of decoding, not after them
    data = _load_data_once(ctx, run_dir.read_sets() if resume is not None else None)
    if not test:
        data = hold_out_test(data)
    _check_validation(ctx.cfg, data)
    check_settings(ctx.cfg, data.multi_label, ctx.log)
    if resume is not None:
        check_classes(data, resume, run_dir)
        saved = resume.saved_training()
        ctx.log(f"resuming {run_dir} after step {saved.step} (epoch {saved.epoch + 1})")
    ctx = _fit_to_data(ctx, data)
    # a model that cannot take the data fails before any write
    model = build_model(ctx, data, fresh=resume is None)
    if ctx.writes:
        _record_start(ctx, data, ctx.writes)
    tracker = _tracker(ctx, mlflow, resume is not None)
    with tracker or contextlib.nullcontext():
        loop = fit(ctx, data, model, resume, tracker, on_epoch)
        metrics = finish(ctx, data, model, loop, test, on_result)
        if tracker and metrics:
            tracker.finish(metrics.to_dict())
    return metrics


def _tracker(ctx: RunContext, mlflow: str | None, resumed: bool) -> MlflowTracker | None:
    """The run's MLflow run (the first process only), or None without ``--mlflow``."""
    if ctx.writes is None:
        return None
    if mlflow is None:
        if resumed and ctx.writes.mlflow.exists():  # never a recorded server unasked
            ctx.log(
                f"this run was logged to MLflow ({ctx.writes.mlflow.name}): pass --mlflow URI "
                "to go on logging it there"
            )
        return None
    from blitz.outputs.tracking import MlflowTracker

    tracker = MlflowTracker.start(mlflow or None, ctx.cfg.to_dict(), ctx.writes, resume=resumed)
    ctx.log(f"tracking: {tracker}")
    return tracker


def set_up(
    cfg: Config, run_dir: RunDir | None, log: Log, quiet: bool, started: float
) -> RunContext:
    """The run context: reproducibility, the process group, this process's device."""
    choose_kernels(cfg)
    device = resolve_device(cfg.train.device)
    world = init_world(device)
    check_batch_size(cfg.train.batch_size, world)
    device = local_device(device, world)
    if not world.is_main:
        log, quiet = silent, True
    cfg = fit_to_device(cfg, device, log)  # a preset's "auto" settings meet this machine
    if cfg.train.compile:  # compiled kernels persist beside the data, for the next process
        use_compile_cache()
    return RunContext(cfg, device, world, run_dir, log, quiet, started)


def build_model(ctx: RunContext, data: ImageData, fresh: bool = True) -> nn.Module:
    """A model for ``data``, initialised from the seed, or from ``model.pretrained``'s or
    ``train.init``'s weights when ``fresh`` (a resumed run takes its checkpoint's instead), on
    the device in the run's memory format (what training and lr-find start from)."""
    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed)  # the weights' initialisation depends on the seed alone
    model = create_model(cfg.model.name, len(data.classes), data.channels, **cfg.model.options)
    if fresh and cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, ctx.log)
    if fresh and cfg.train.init:
        warm_start(model, cfg, data.classes, data.channels, ctx.log)
    model = on_device(model, ctx.device, cfg)
    for size in {concrete(cfg.data.image_size), cfg.data.low_res} - {0}:
        check_input_size(model, cfg.model.name, data.channels, size)
    return model


def fit(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    resume: Checkpoint | None,
    tracker: MlflowTracker | None = None,
    on_epoch: Callable[[TrainState, int], None] | None = None,
) -> Loop:
    """Train with checkpoints (last, best, on a signal); a NaN loss keeps the last good one."""
    resumed_step = resume.saved_training().step if resume else 0
    progress = Progress(ctx.cfg, ctx.log, ctx.quiet, ctx.writes, resumed_step, tracker)
    with stop_on_signals() as stop:
        hooks = Checkpointer(ctx, model, data.classes, stop, resume, progress, on_epoch)
        try:
            return train(ctx, data, model, progress, hooks)
        except NonFiniteLoss as exc:
            raise BlitzError(f"{exc}; {hooks.describe_kept()}") from None


def finish(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    loop: Loop,
    report: bool = True,
    on_result: Callable[[Metrics], None] | None = None,
) -> Metrics | None:
    """Test, then (first process) show the results, save the model, write the metrics, hand
    them to ``on_result``, then draw the pictures and the report (``report=False``: none;
    ``blitz report RUN`` writes it later)."""
    if data.multi_label:
        return finish_multilabel(ctx, data, model, loop, report, on_result)
    started_eval = time.perf_counter()
    test = data.test_set()
    result = evaluate(loop.eval_net, test, ctx.cfg, len(data.classes), ctx.world)  # synced
    eval_seconds = time.perf_counter() - started_eval
    validation = None
    if data.val is not None and not data.test_is_val:
        validation = evaluate(loop.eval_net, data.val, ctx.cfg, len(data.classes), ctx.world)
    run_dir = ctx.writes
    if run_dir is None:
        return None
    show_results(result, data, ctx.log)
    calibration = _calibrate(result, validation, data)  # T from the validation set alone
    ctx.log(calibration.summary("validation" if data.test_is_val else "test"))
    ckpt = Checkpoint.of(model, ctx.cfg, data.classes, temperature=calibration.temperature)
    run_dir.save_model(ckpt)
    metrics = run_metrics(ctx, data, model, loop, _test_fields(result, data), eval_seconds)
    metrics.calibration = calibration.record()
    if validation is not None:
        metrics.validation = asdict(scores(validation, data.classes))
    publish(run_dir, metrics, on_result)
    save_grids(data, result, run_dir)
    if report:
        from blitz.outputs.report import write_report  # matplotlib, torchvision, grad-cam

        ctx.log(f"report: {write_report(run_dir, metrics, test, result, ckpt)}")
    return metrics


def _test_fields(result: Evaluation, data: ImageData) -> dict:
    """The Metrics fields of a single-label test: its confusion matrix and its views."""
    per_class = per_class_accuracy(result.matrix)
    return {
        **matrix_record(result.matrix),
        "per_class_accuracy": {c: round(a, 6) for c, a in zip(data.classes, per_class)},
        **Metrics.test_fields(scores(result, data.classes)),
    }


def _calibrate(result: Evaluation, validation: Evaluation | None, data: ImageData) -> Calibration:
    """The temperature fitted on the validation set's logits (the scored set's where it is the
    validation set: the data has no test set), and the figures before and after it."""
    if result.logits is None:
        return Calibration(note="left out: too many images x classes to keep their logits")
    labels = data.test_set().labels
    if data.test_is_val:
        return calibrate(result.logits, labels, result.logits, labels, test_is_val=True)
    val = validation.logits if validation is not None else None
    val_labels = data.val.labels if data.val is not None else None
    return calibrate(result.logits, labels, val, val_labels)


def _check_validation(cfg: Config, data: ImageData) -> None:
    """Early stopping is chosen by the validation set: there must be one."""
    if cfg.train.patience and data.val is None:
        raise BlitzError(
            f"--patience {cfg.train.patience} stops when the validation accuracy stops "
            f"improving, but {data.name} has no validation set: add a val/ folder, or split "
            "one off with --val-fraction 0.1"
        )


def check_classes(data: ImageData, ckpt: Checkpoint, run_dir: RunDir) -> None:
    """A checkpoint only fits data with the classes it was trained on, in the same order."""
    if data.classes != ckpt.model.classes:
        raise BlitzError(
            f"{data.name} has classes {data.classes}, but the run in {run_dir} was trained on "
            f"{ckpt.model.classes}: use data with the same classes"
        )


def _load_data_once(ctx: RunContext, recorded: Assignment | None) -> ImageData:
    """The first process decodes (and caches); the others wait, then read the cache, or meet
    the same error as the first one (rather than a broken barrier). ``recorded``: the sets
    the run wrote down (a resumed run trains on exactly those)."""
    if not ctx.is_main:
        barrier(ctx.world)
        return load_data(ctx.cfg.data, ctx.log, recorded)
    try:
        return load_data(ctx.cfg.data, ctx.log, recorded)
    finally:
        barrier(ctx.world)


def _fit_to_data(ctx: RunContext, data: ImageData) -> RunContext:
    """The run's settings as the data decides them, in one place, before anything uses or
    records them (settings are never changed after): ``auto`` data as what it turned out to
    be and a path as an absolute one (eval, report, --resume and a replay from elsewhere load
    the same data); with ``train.min_steps``, a dataset too small for the preset's budget
    trains more epochs (config.json records them, so a resume replays them)."""
    cfg = ctx.cfg
    source = recorded_spec(data.name if cfg.data.source == "auto" else cfg.data.source)
    task: Task = "multi-label" if data.multi_label else "single-label"  # as the data is
    data_cfg = replace(cfg.data, source=source, task=task)
    return replace(
        ctx, cfg=replace(cfg, data=data_cfg, train=replace(cfg.train, epochs=_epochs(ctx, data)))
    )


def _epochs(ctx: RunContext, data: ImageData) -> int:
    train = ctx.cfg.train
    per_epoch = steps_per_epoch(ctx.cfg, len(data.train))
    floor = min(train.min_steps, train.max_steps or train.min_steps)  # never past the cap
    if train.epochs * per_epoch >= floor:
        return train.epochs
    epochs = math.ceil(floor / per_epoch)
    why = "--max-steps" if floor < train.min_steps else "train.min_steps"
    ctx.log(
        f"{len(data.train)} training images are {per_epoch} step{'s' * (per_epoch > 1)} of "
        f"batch {train.batch_size}: training {epochs} epochs to reach {floor} steps "
        f"({why}; --epochs N trains N)"
    )
    return epochs


def _record_start(ctx: RunContext, data: ImageData, run_dir: RunDir) -> None:
    """The settings (as ``_fit_to_data`` settled them) and the seed's look at the training
    images."""
    run_dir.write_config(ctx.cfg)
    run_dir.write_sets(record(data))
    show_training_labels(data, run_dir, ctx.log)
    describe(ctx, data)


def on_device(model: nn.Module, device: torch.device, cfg: Config) -> nn.Module:
    """``model`` on ``device``, in the run's memory format (``train.channels_last``)."""
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    # torch's stub lacks the (device, memory_format=) overload that Module.to accepts
    return model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
