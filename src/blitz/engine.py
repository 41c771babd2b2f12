"""The training loop: optimizer, loss, learning-rate schedule, and per-epoch progress."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from blitz import augment
from blitz.config import Config, OptimConfig
from blitz.data import ImageData, Split, normalize
from blitz.devices import autocast, synchronize
from blitz.distributed import SINGLE, World, mean_over_ranks, shard, wrap
from blitz.evaluate import evaluate
from blitz.optim import build_optimizers, lr_factor, unflatten_filters
from blitz.progress import Progress

Log = Callable[[str], None]


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: OptimConfig) -> torch.Tensor:
    """Cross-entropy (the seed's classifier) or MSE against one-hot targets."""
    if cfg.loss == "mse":
        target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.mse_loss(logits, target, reduction=cfg.reduction)
    return F.cross_entropy(
        logits, labels, label_smoothing=cfg.label_smoothing, reduction=cfg.reduction
    )


@dataclass
class TrainState:
    """Everything the loop advances: counters and the per-epoch history."""

    step: int = 0
    epoch: int = 0
    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Loop:
    """What a training run holds while it runs."""

    cfg: Config
    model: nn.Module
    net: nn.Module  # what trains: the model, wrapped in DDP and/or torch.compile as configured
    eval_net: nn.Module  # what tests: the model (or its EMA), compiled if configured
    world: World
    optimizers: list[torch.optim.Optimizer]
    split: Split  # the training images, on the training device
    order_gen: torch.Generator  # the data order (CPU, so it is the same on every device)
    augment_gen: torch.Generator  # augmentation draws, on the training device
    total: int  # planned optimizer steps: the schedule's horizon
    ema: AveragedModel | None
    log: Log
    quiet: bool
    state: TrainState = field(default_factory=TrainState)


def planned_steps(cfg: Config, train_size: int) -> int:
    """Optimizer steps the run will take (the schedule's horizon)."""
    steps = cfg.train.epochs * math.ceil(train_size / cfg.train.batch_size)
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def build_loop(
    cfg: Config,
    data: ImageData,
    model: nn.Module,
    device: torch.device,
    log: Log,
    quiet: bool,
    world: World = SINGLE,
) -> Loop:
    """Set up optimizers, generators and EMA for training ``model`` on ``data.train``."""
    seed, compiled = cfg.train.seed, cfg.train.compile
    ema = None
    if cfg.optim.ema:
        avg = get_ema_multi_avg_fn(cfg.optim.ema)
        ema = AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    net = wrap(model, world, device, cfg.train.sync_bn)
    tested = ema.module if ema else model
    return Loop(
        cfg=cfg,
        model=model,
        net=torch.compile(net) if compiled else net,
        eval_net=torch.compile(tested) if compiled else tested,
        world=world,
        optimizers=build_optimizers(model, cfg.optim),
        split=Split(data.train.images.to(device), data.train.labels.to(device)),
        order_gen=torch.Generator().manual_seed(seed),  # the same order on every rank
        augment_gen=torch.Generator(device=device).manual_seed(seed + 1 + world.rank),
        total=planned_steps(cfg, len(data.train)),
        ema=ema,
        log=log,
        quiet=quiet,
    )


def train(
    cfg: Config,
    data: ImageData,
    model: nn.Module,
    device: torch.device,
    log: Log,
    quiet: bool,
    world: World = SINGLE,
    progress: Progress | None = None,
) -> Loop:
    """Train ``model`` on ``data.train`` (ending with the EMA weights, if any); test per epoch.

    Returns the loop: its ``state`` says what happened, its ``eval_net`` tests the result."""
    loop = build_loop(cfg, data, model, device, log, quiet, world)
    state = loop.state
    if cfg.train.compile:
        state.compile_seconds = warm_up(loop, data, device)
    started = time.perf_counter()
    _prepare_model(loop, device)
    state.train_seconds += time.perf_counter() - started  # data-dependent init counts as training
    progress = progress or Progress(cfg, log, quiet)
    while state.epoch < cfg.train.epochs and state.step < loop.total:
        started = time.perf_counter()
        loss = _train_epoch(loop, device, progress)
        synchronize(device)
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        state.epoch += 1
        record = {"epoch": state.epoch, "train_loss": loss, "seconds": round(seconds, 3)}
        record["lr"] = loop.optimizers[-1].param_groups[0]["lr"]  # at the epoch's last step
        if cfg.train.eval_every_epoch:
            record["test_accuracy"] = _test_accuracy(loop, data)
        state.history.append(record)
        progress.end_epoch(record)
    progress.close()
    if loop.ema:
        model.load_state_dict(loop.ema.module.state_dict())
    unflatten_filters(model)
    if cfg.train.log_every:
        log("Finished Training")
    return loop


def _prepare_model(loop: Loop, device: torch.device) -> None:
    """Data-dependent initialisation (airbench's whitening layer), from up to 5000 images."""
    prepare = getattr(loop.model, "prepare", None)
    if prepare:
        cfg = loop.cfg.data
        prepare(normalize(loop.split.images[:5000], cfg.mean, cfg.std))
        synchronize(device)


def warm_up(loop: Loop, data: ImageData, device: torch.device) -> float:
    """Compile (train and eval graphs) on a few steps, then restore every state: returns the
    seconds it took, which are reported apart from the training time."""
    started = time.perf_counter()
    saved = _snapshot(loop)
    _prepare_model(loop, device)
    for rows in torch.arange(len(loop.split), device=device).split(loop.cfg.train.batch_size)[:2]:
        with autocast(loop.cfg.train.precision, device):
            _step(loop, rows)
    _test_accuracy(loop, data)
    _restore(loop, saved)
    synchronize(device)
    return time.perf_counter() - started


def _snapshot(loop: Loop) -> dict:
    return {
        "model": copy.deepcopy(loop.model.state_dict()),
        "optimizers": [copy.deepcopy(o.state_dict()) for o in loop.optimizers],
        "order": loop.order_gen.get_state(),
        "augment": loop.augment_gen.get_state(),
        "step": loop.state.step,
    }


def _restore(loop: Loop, saved: dict) -> None:
    loop.model.load_state_dict(saved["model"])
    for optimizer, state in zip(loop.optimizers, saved["optimizers"]):
        optimizer.load_state_dict(state)
    loop.order_gen.set_state(saved["order"])
    loop.augment_gen.set_state(saved["augment"])
    loop.state.step = saved["step"]


def _test_accuracy(loop: Loop, data: ImageData) -> float:
    result = evaluate(loop.eval_net, data.test, loop.cfg, len(data.classes), loop.world)
    return round(result.accuracy, 6)


def prepare_batch(loop: Loop, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Normalise and augment a uint8 training batch, all in tensor ops on its device."""
    cfg, gen = loop.cfg.data, loop.augment_gen
    x = normalize(images, cfg.mean, cfg.std)
    if cfg.flip == "random":
        x = augment.flip(x, gen)
    elif cfg.flip == "alternate":
        x = augment.alternating_flip(x, rows, loop.state.epoch)
    if cfg.translate:
        x = augment.translate(x, cfg.translate, gen)
    if cfg.cutout:
        x = augment.cutout(x, cfg.cutout, gen)
    if loop.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _train_epoch(loop: Loop, device: torch.device, progress: Progress) -> float:
    """One pass over the shuffled training split; returns the epoch's mean loss."""
    cfg, state, split = loop.cfg, loop.state, loop.split
    loop.model.train()
    order = torch.randperm(len(split), generator=loop.order_gen).to(device)
    steps = min(math.ceil(len(split) / cfg.train.batch_size), loop.total - state.step)
    progress.start_epoch(state.epoch, steps)
    epoch_loss = torch.zeros((), device=device)
    for rows in order.split(cfg.train.batch_size)[:steps]:
        local = shard(rows, loop.world)
        with autocast(cfg.train.precision, device):
            loss, logits = _step(loop, local)
        epoch_loss += loss
        progress.step(state.step, loss, logits, loop.split.labels[local], loop.optimizers[-1])
    return round(mean_over_ranks(epoch_loss, loop.world).item() / max(steps, 1), 6)


def _step(loop: Loop, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``rows``; returns the loss per sample and the logits
    (both detached)."""
    cfg = loop.cfg
    factor = lr_factor(loop.state.step, loop.total, cfg.optim)
    for optimizer in loop.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
    images = prepare_batch(loop, loop.split.images[rows], rows)
    logits = loop.net(images).float()
    loss = compute_loss(logits, loop.split.labels[rows], cfg.optim)
    # DDP averages gradients over ranks: right for a mean loss, a world too small for a sum
    scale = loop.world.size if cfg.optim.reduction == "sum" else 1
    (loss * scale).backward()
    for optimizer in loop.optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if loop.ema:
        loop.ema.update_parameters(loop.model)
    loop.state.step += 1
    per_sample = loss.detach() / (len(rows) if cfg.optim.reduction == "sum" else 1)
    return per_sample, logits.detach()
