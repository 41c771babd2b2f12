"""The training loop: optimizer, loss, learning-rate schedule, and per-epoch progress."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from blitz.config.settings import Config, DataConfig, OptimConfig
from blitz.config.types import concrete
from blitz.data import augment
from blitz.data.counts import balanced_weights
from blitz.data.dataset import AnySplit, Batch, ImageData, Split
from blitz.data.preprocess import normalize
from blitz.errors import BlitzError
from blitz.training.checkpoint import load_state
from blitz.training.compiling import compile_recovering
from blitz.training.context import RunContext
from blitz.training.devices import autocast, grad_scaler, synchronize
from blitz.training.distributed import World, epoch_batches, sum_over_ranks, wrap
from blitz.training.evaluate import eval_batch_rows, evaluate
from blitz.training.optim import (
    body_frozen,
    build_optimizers,
    lr_factor,
    stepper,
    unflatten_filters,
)
from blitz.training.progress import Progress


def compute_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: OptimConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy (the seed's classifier; ``weights``: per class) or MSE against one-hot
    targets; ``labels`` are class indices (N,) or soft targets (N, classes), as MixUp's."""
    soft = labels.is_floating_point()
    if cfg.loss == "mse":
        target = labels if soft else F.one_hot(labels, logits.shape[1])
        return F.mse_loss(logits, target.to(logits.dtype), reduction=cfg.reduction)
    # the weights a weighted mean of soft targets divides by (None: torch's reduction does)
    mean_weights = weights if soft and cfg.reduction == "mean" else None
    reduction = "sum" if mean_weights is not None else cfg.reduction
    loss = F.cross_entropy(
        logits, labels, weights, label_smoothing=cfg.label_smoothing, reduction=reduction
    )
    # torch divides by the labels' weights, but by the batch size for soft targets: the former
    return loss / (labels @ mean_weights).sum() if mean_weights is not None else loss


@dataclass
class TrainState:
    """All that must survive a restart besides weights and optimizers (checkpointed whole)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch: a resumed epoch skips them
    train_seconds: float = 0.0
    epoch_seconds: float = 0.0  # time in the current epoch so far, before a restart too
    compile_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0  # the best per-epoch validation accuracy so far (for best.pt)
    best_epoch: int = 0  # when it was reached
    best_weights: dict | None = None  # the tested weights then (with train.keep "best")
    augment: torch.Generator = field(default_factory=torch.Generator)  # on the training device
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # sums, on device
    epoch_correct: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))  # first non-finite

    def to_dict(self) -> dict:
        """Plain data and CPU tensors (checkpoint-safe; loads with ``weights_only=True``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["augment"] = self.augment.get_state()
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def load_dict(self, saved: dict, device: torch.device) -> None:
        """Take over a state written by ``to_dict``; tensors move to ``device``."""
        for f in fields(self):
            if f.name not in saved:  # a field added since the checkpoint: keep its default
                continue
            value = saved[f.name]
            if f.name == "augment":
                self.augment.set_state(value)
            elif f.name == "best_weights" and value is not None:
                self.best_weights = {k: v.to(device) for k, v in value.items()}
            elif isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
            else:
                setattr(self, f.name, value)


def new_state(cfg: Config, device: torch.device, world: World) -> TrainState:
    """The state of a run before its first step: counters at zero, sums on ``device``."""
    return TrainState(
        augment=torch.Generator(device=device).manual_seed(cfg.train.seed + 1 + world.rank),
        epoch_loss=torch.zeros((), device=device),
        epoch_correct=torch.zeros((), device=device),
        bad_step=torch.tensor(-1, device=device),
    )


class TrainHooks:
    """Called by the loop at its restart points; the default does nothing (see
    blitz.training.resume)."""

    def start(self, loop: Loop) -> None:
        """Before the first step: a resumed run restores the loop's state and ``stateful``."""

    def after_step(self, state: TrainState) -> None:
        """After each optimizer step: may save a checkpoint, or stop the run."""

    def after_epoch(self, state: TrainState) -> None:
        """After an epoch's history record is appended."""


class NonFiniteLoss(BlitzError):
    """The loss became NaN or infinite: the weights after that step are garbage."""


@dataclass
class Loop:
    """What a training run holds while it runs."""

    cfg: Config
    model: nn.Module
    net: nn.Module  # what trains: the model, wrapped in DDP and/or torch.compile as configured
    eval_net: nn.Module  # what tests: the model (or its EMA)
    world: World
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler  # fp16's loss scale; disabled (a pass-through) otherwise
    update: Callable[[], None]  # one step of every optimizer (optim.stepper)
    split: AnySplit  # the training images (on the training device, or streamed)
    val: AnySplit | None  # the validation images, scored after each epoch
    classes: int
    loss_weights: torch.Tensor | None  # per class (optim.class_weights), on the device
    row_weights: torch.Tensor | None  # per training image, how often it is drawn (train.sampler)
    total: int  # planned optimizer steps: the schedule's horizon
    ema: AveragedModel | None
    state: TrainState
    progress: Progress
    hooks: TrainHooks

    @property
    def stateful(self) -> dict[str, Any]:
        """What a checkpoint saves besides the weights and the TrainState."""
        named: dict[str, Any] = {f"optimizer{i}": o for i, o in enumerate(self.optimizers)}
        if self.scaler.is_enabled():  # only then: checkpoints of other precisions stay as they were
            named["scaler"] = self.scaler
        return {**named, "ema": self.ema} if self.ema else named


def steps_per_epoch(cfg: Config, train_size: int) -> int:
    """Optimizer steps in one pass over ``train_size`` images (the last batch may be short)."""
    return math.ceil(train_size / cfg.train.batch_size)


def planned_steps(cfg: Config, train_size: int) -> int:
    """Optimizer steps the run will take (the schedule's horizon)."""
    steps = cfg.train.epochs * steps_per_epoch(cfg, train_size)
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def build_loop(
    ctx: RunContext, data: ImageData, model: nn.Module, progress: Progress, hooks: TrainHooks
) -> Loop:
    """Set up optimizers, state and EMA for training ``model`` on ``data.train``."""
    cfg, device, world = ctx.cfg, ctx.device, ctx.world
    compiled = bool(cfg.train.compile)  # "auto": fit_to_device made it concrete for the device
    classes = len(data.classes)
    weights = balanced_weights(data.train.labels, classes)
    ema = None
    if cfg.optim.ema:
        avg = get_ema_multi_avg_fn(cfg.optim.ema)
        ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    net = wrap(model, world, device, cfg.train.sync_bn)
    tested = ema.module if ema else model
    optimizers = build_optimizers(model, cfg.optim)
    scaler = grad_scaler(cfg.train.precision, device)
    return Loop(
        cfg=cfg,
        model=model,
        # torch's stub types compile()'s result a function; given a Module it is an OptimizedModule
        net=torch.compile(net) if compiled else net,  # type: ignore[arg-type]
        # testing stays eager: the filters' 2-D parametrisation is removed before the final test,
        # which would make a compiled copy compile again inside the timed evaluation
        eval_net=tested,
        world=world,
        optimizers=optimizers,
        scaler=scaler,
        update=stepper(optimizers, scaler, compiled),
        split=data.train.to(device),
        val=data.val if cfg.train.eval_every_epoch else None,
        classes=classes,
        loss_weights=weights.to(device) if cfg.optim.class_weights == "balanced" else None,
        row_weights=weights[data.train.labels.cpu()] if cfg.train.sampler == "balanced" else None,
        total=planned_steps(cfg, len(data.train)),
        ema=ema,
        state=new_state(cfg, device, world),
        progress=progress,
        hooks=hooks,
    )


def train(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    progress: Progress | None = None,
    hooks: TrainHooks | None = None,
) -> Loop:
    """Train ``model`` on ``data.train`` (ending with the EMA weights, if any, and with
    ``train.keep`` "best" the best validation epoch's); score ``data.val`` after each epoch.

    Returns the loop: its ``state`` says what happened, its ``eval_net`` tests the result."""
    cfg, device = ctx.cfg, ctx.device
    progress = progress or Progress(cfg, ctx.log, ctx.quiet)
    loop = build_loop(ctx, data, model, progress, hooks or TrainHooks())
    state = loop.state
    if cfg.train.compile:
        state.compile_seconds = warm_up(loop, data, device)
    started = time.perf_counter()
    _prepare_model(loop, device)
    state.train_seconds += time.perf_counter() - started  # data-dependent init counts as training
    loop.hooks.start(loop)  # a resumed run takes over its saved state here
    try:
        while (
            state.epoch < cfg.train.epochs and state.step < loop.total and not _patience_out(loop)
        ):
            steps = _train_epoch(loop, device)
            state.train_seconds += state.epoch_seconds
            _finish_epoch(loop, steps)
            loop.hooks.after_epoch(state)
    except BaseException:  # a stop (Ctrl-C, SIGTERM, a failed step): TensorBoard flushes on close
        progress.close(failed=True)
        raise
    progress.close()
    if state.history and "val_accuracy" in state.history[-1]:
        _keep_weights(loop, ctx)
    if loop.ema:
        model.load_state_dict(loop.ema.module.state_dict())
    unflatten_filters(model)
    if cfg.train.log_every:
        ctx.log("Finished Training")
    return loop


def check_finite(state: TrainState, cfg: Config, total: int) -> None:
    """Raise NonFiniteLoss if any loss so far was NaN or infinite (one device sync)."""
    bad = int(state.bad_step.item())
    if bad < 0:
        return
    lr = cfg.optim.lr * lr_factor(bad - 1, total, cfg.optim)  # the rate that step used
    raise NonFiniteLoss(
        f"the loss became NaN or infinite at step {bad} (learning rate {lr:.3g}): training "
        "stopped, and no weights from that step on were saved. Lower the learning rate "
        f"(e.g. --lr {cfg.optim.lr / 10:.3g})"
    )


def _note_non_finite(state: TrainState, loss: torch.Tensor) -> None:
    # Checking each loss with .item() would sync the device every step; instead remember the
    # first bad step on the device, and look at it only where we sync anyway (checkpoints, epochs).
    first = (state.bad_step < 0) & ~torch.isfinite(loss)
    state.bad_step = torch.where(first, state.step, state.bad_step)


def _patience_out(loop: Loop) -> bool:
    """Whether ``train.patience`` epochs have passed without a better validation accuracy."""
    patience, state = loop.cfg.train.patience, loop.state
    return bool(patience) and state.epoch - state.best_epoch >= patience


def _keep_weights(loop: Loop, ctx: RunContext) -> None:
    """Say why training ended and which epoch's weights the run keeps (``train.keep``); with
    "best", put the best validation epoch's back."""
    state = loop.state
    cut = state.epoch < loop.cfg.train.epochs and state.step < loop.total
    why = (
        f"stopped early after epoch {state.epoch}: no better validation accuracy for "
        f"{loop.cfg.train.patience} epochs"
        if cut
        else "training done"
    )
    if state.best_weights is None:  # train.keep "last"
        ctx.log(f"{why}; keeping the weights of the last epoch ({state.epoch}; train.keep=last)")
        return
    ctx.log(
        f"{why}; keeping the weights of epoch {state.best_epoch} (best validation accuracy "
        f"{100 * state.best_accuracy:.2f} %; --set train.keep=last keeps the last epoch's)"
    )
    loop.eval_net.load_state_dict(state.best_weights)


def _note_best(loop: Loop, accuracy: float) -> None:
    """Remember the best validation accuracy (and with ``train.keep`` "best", its weights)."""
    state = loop.state
    if accuracy <= state.best_accuracy:
        return
    state.best_accuracy, state.best_epoch = accuracy, state.epoch
    if loop.cfg.train.keep == "best":
        weights = loop.eval_net.state_dict()
        state.best_weights = {k: v.detach().clone() for k, v in weights.items()}


def _finish_epoch(loop: Loop, steps: int) -> None:
    """Close an epoch: check the loss, count it, score the validation set, record it."""
    cfg, state, world = loop.cfg, loop.state, loop.world
    check_finite(state, cfg, loop.total)
    state.epoch += 1
    images = min(steps * cfg.train.batch_size, len(loop.split))
    loss = sum_over_ranks(state.epoch_loss, world).item() / world.size / max(steps, 1)
    correct = sum_over_ranks(state.epoch_correct, world).item()
    state.epoch_loss.zero_()
    state.epoch_correct.zero_()
    record = {
        "epoch": state.epoch,
        "train_loss": round(loss, 6),
        "train_accuracy": round(correct / max(images, 1), 6),
        "seconds": round(state.epoch_seconds, 3),
        "lr": loop.optimizers[-1].param_groups[0]["lr"],  # at the epoch's last step
    }
    state.batch, state.epoch_seconds = 0, 0.0
    if loop.val is not None:
        record["val_accuracy"] = _accuracy(loop, loop.val)
        _note_best(loop, record["val_accuracy"])
    state.history.append(record)
    loop.progress.end_epoch(record)


def _prepare_model(loop: Loop, device: torch.device) -> None:
    """Data-dependent initialisation (airbench's whitening layer), from up to 5000 images."""
    prepare = getattr(loop.model, "prepare", None)
    if prepare:
        cfg = loop.cfg.data
        images = loop.split.images_at(torch.arange(min(5000, len(loop.split))))
        prepare(normalize(images.to(device), concrete(cfg.mean), concrete(cfg.std)))
        synchronize(device)


def warm_up(loop: Loop, data: ImageData, device: torch.device) -> float:
    """Compile (train and eval graphs) on a few steps and one test batch, then restore every
    state: returns the seconds it took, which are reported apart from the training time. A
    damaged compile cache is rebuilt once; a compile that still fails is a BlitzError."""
    started = time.perf_counter()
    saved = _snapshot(loop)

    def compile_once() -> None:
        try:
            _prepare_model(loop, device)
            first = _epoch_batches(loop)[: min(2, loop.total)]  # the shapes training uses
            for batch in loop.split.load(first, device):
                _step(loop, *batch)
            _accuracy(loop, _one_test_batch(loop, data, device))
        finally:  # a failed try leaves no trace for the next one, nor for training
            _restore(loop, saved, device)

    compile_recovering(compile_once, loop.progress.log)
    synchronize(device)
    return time.perf_counter() - started


def _one_test_batch(loop: Loop, data: ImageData, device: torch.device) -> Split:
    """One evaluation batch per process of the test set: compiling needs the shapes the test
    meets, not the whole test set."""
    test = data.test_set()
    size = min(len(test), eval_batch_rows(loop.cfg) * loop.world.size)
    _, images, labels = next(test.load([torch.arange(size)], device))
    return Split(images, labels)


def _snapshot(loop: Loop) -> dict:
    """Everything a training step changes: weights, optimizers, EMA, loss scale, loop state."""
    objects = {"model": loop.model, **loop.stateful}
    states = {name: obj.state_dict() for name, obj in objects.items()}
    return copy.deepcopy({"objects": states, "state": loop.state.to_dict()})


def _restore(loop: Loop, saved: dict, device: torch.device) -> None:
    objects = {"model": loop.model, **loop.stateful}
    for name, obj in objects.items():
        load_state(obj, saved["objects"][name], f"the {name}")  # optimizers: in place
    loop.state.load_dict(saved["state"], device)


def _accuracy(loop: Loop, split: AnySplit) -> float:
    result = evaluate(loop.eval_net, split, loop.cfg, loop.classes, loop.world)
    return round(result.accuracy, 6)


def prepare_batch(
    loop: Loop, images: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and augment a uint8 training batch, in batched tensor ops on its device (a
    per-image loop for ``auto_augment`` only); returns the inputs and their targets: the
    labels, or soft targets (N, classes) when MixUp or CutMix mixed the images."""
    cfg, gen = loop.cfg.data, loop.state.augment
    if cfg.auto_augment != "none":
        images = augment.auto_augment(images, cfg.auto_augment, gen)
    x = normalize(images, concrete(cfg.mean), concrete(cfg.std))
    if cfg.crop_scale:
        x = augment.resized_crop(x, cfg.crop_scale, gen)
    if cfg.flip == "random":
        x = augment.flip(x, gen)
    elif cfg.flip == "alternate":
        x = augment.alternating_flip(x, rows, loop.state.epoch)
    if cfg.translate:
        x = augment.translate(x, cfg.translate, gen)
    if cfg.cutout:
        x = augment.cutout(x, cfg.cutout, gen)
    if cfg.mixup or cfg.cutmix:
        x, labels = augment.mix(x, labels, loop.classes, cfg.mixup, cfg.cutmix, gen)
    if at_low_res(loop):
        x = augment.downscale(x, cfg.low_res)
    if loop.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def low_res_steps(cfg: DataConfig, total: int) -> int:
    """How many of ``total`` steps, the first ones, train on downscaled batches."""
    return math.ceil(cfg.low_res_until * total) if cfg.low_res else 0


def at_low_res(loop: Loop) -> bool:
    """Whether this step trains on downscaled batches (``data.low_res``)."""
    return loop.state.step < low_res_steps(loop.cfg.data, loop.total)


def _epoch_batches(loop: Loop) -> list[torch.Tensor]:
    """This rank's batches of the current epoch (a function of the seed and the epoch alone, so a
    resumed epoch replays the same order)."""
    train = loop.cfg.train
    return epoch_batches(
        len(loop.split),
        train.batch_size,
        train.seed,
        loop.state.epoch,
        loop.world,
        loop.row_weights,
    )


def _train_epoch(loop: Loop, device: torch.device) -> int:
    """One pass over the shuffled training split (or the rest of one); returns its step count."""
    state = loop.state
    loop.model.train()
    batches = _epoch_batches(loop)
    # a resumed epoch counts the batches it did before the restart
    steps = min(len(batches), loop.total - state.step + state.batch)
    loop.progress.start_epoch(state.epoch, steps, state.batch)
    clock = time.perf_counter()
    for rows, images, labels in loop.split.load(batches[state.batch : steps], device):
        loss, logits = _step(loop, rows, images, labels)
        state.batch += 1
        _note_non_finite(state, loss)
        state.epoch_loss += loss
        correct = (logits.argmax(1) == labels).sum()
        state.epoch_correct += correct
        loop.progress.step(state.step, loss, correct, len(labels), loop.optimizers[-1])
        clock = _tick(state, clock)  # a checkpoint saves the time spent so far
        loop.hooks.after_step(state)
    synchronize(device)  # so that the epoch's time is honest
    _tick(state, clock)
    return steps


def _tick(state: TrainState, since: float) -> float:
    now = time.perf_counter()
    state.epoch_seconds += now - since
    return now


def _step(
    loop: Loop, rows: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step at the schedule's learning rate (see ``train_step``); the body's is 0
    while it is frozen (``optim.freeze``)."""
    step, total, cfg = loop.state.step, loop.total, loop.cfg.optim
    factor = lr_factor(step, total, cfg)
    frozen = body_frozen(step, total, cfg)
    if cfg.freeze:
        hold_norm_statistics(loop.model, frozen)
    return train_step(loop, rows, images, labels, factor, 0.0 if frozen else factor)


def hold_norm_statistics(model: nn.Module, frozen: bool) -> None:
    """While the body is frozen its batch norms run as in evaluation, on the statistics they
    have (the pretrained ones), as timm's freeze does: the frozen body computes exactly what
    it was trained to; afterwards they learn the data's statistics again."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(not frozen)


def train_step(
    loop: Loop,
    rows: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    factor: float,
    body: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (uint8 ``images`` of the split's ``rows``), each parameter
    group at ``factor`` times its base learning rate (the schedule's factor when training,
    the sweep's in lr-find), the body's at ``body`` times it if given; returns the loss per
    sample and the logits (both detached)."""
    cfg = loop.cfg
    body = factor if body is None else body
    for optimizer in loop.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * (factor if group.get("head") else body)
    with autocast(cfg.train.precision, labels.device):  # the forward pass only
        inputs, targets = prepare_batch(loop, images, rows, labels)
        logits = loop.net(inputs).float()
        loss = compute_loss(logits, targets, cfg.optim, loop.loss_weights)
    # DDP averages gradients over ranks: right for a mean loss, a world too small for a sum
    scale = loop.world.size if cfg.optim.reduction == "sum" else 1
    loop.scaler.scale(loss * scale).backward()
    loop.update()
    for optimizer in loop.optimizers:
        optimizer.zero_grad(set_to_none=True)
    loop.scaler.update()
    if loop.ema:
        loop.ema.update_parameters(loop.model)
    loop.state.step += 1
    per_sample = loss.detach() / (len(rows) if cfg.optim.reduction == "sum" else 1)
    return per_sample, logits.detach()


def train_at_factors(
    loop: Loop, factors: Iterable[float], device: torch.device
) -> Iterator[torch.Tensor]:
    """Training without a schedule: the model's data-dependent init, then one ``train_step``
    per factor on the epochs' batches in order; yields each step's loss per sample (detached,
    on the device). The learning-rate range test trains this way."""
    loop.model.train()
    _prepare_model(loop, device)
    batches = _endless_batches(loop, device)
    for factor in factors:
        loss, _ = train_step(loop, *next(batches), factor)
        yield loss


def _endless_batches(loop: Loop, device: torch.device) -> Iterator[Batch]:
    while True:
        yield from loop.split.load(_epoch_batches(loop), device)
        loop.state.epoch += 1  # the next epoch's order (and alternating flips)
