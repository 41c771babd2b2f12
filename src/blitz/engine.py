"""The training loop: optimizer, loss, learning-rate schedule, and per-epoch progress."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from blitz.config import Config, OptimConfig
from blitz.data import ImageData, batches, normalize
from blitz.errors import BlitzError
from blitz.evaluate import evaluate
from blitz.progress import Progress

Log = Callable[[str], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available[name]:
        raise BlitzError(f"--device {name} is not available on this machine: use auto or cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that timings are honest (a no-op on CPU)."""
    getattr(torch, device.type).synchronize()


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The update rule named in the config (the seed names SGD, Nesterov-SGD, Adam, RMSProp)."""
    params = model.parameters()
    if cfg.name in ("sgd", "nesterov"):
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.name == "nesterov",
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: a pure function."""
    progress = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, 1 - progress)
    if progress < cfg.warmup:  # onecycle: linear warm-up, then linear decay to zero
        return progress / cfg.warmup
    return max(0.0, (1 - progress) / (1 - cfg.warmup))


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: OptimConfig) -> torch.Tensor:
    """Cross-entropy (the seed's classifier) or MSE against one-hot targets."""
    if cfg.loss == "mse":
        return F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)


@dataclass
class TrainState:
    """Everything the loop advances: counters and the per-epoch history."""

    step: int = 0
    epoch: int = 0
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def planned_steps(cfg: Config, train_size: int) -> int:
    """Optimizer steps the run will take (the schedule's horizon)."""
    steps = cfg.train.epochs * math.ceil(train_size / cfg.train.batch_size)
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def train(
    cfg: Config,
    data: ImageData,
    model: nn.Module,
    device: torch.device,
    log: Log,
    quiet: bool,
    progress: Progress | None = None,
) -> TrainState:
    """Train ``model`` on ``data.train``; evaluate on ``data.test`` after epochs if asked."""
    generator = torch.Generator().manual_seed(cfg.train.seed)  # the data order
    optimizer = build_optimizer(model, cfg.optim)
    train_split = type(data.train)(data.train.images.to(device), data.train.labels.to(device))
    total = planned_steps(cfg, len(train_split))
    progress = progress or Progress(cfg, log, quiet)
    state = TrainState()
    while state.epoch < cfg.train.epochs and state.step < total:
        started = time.perf_counter()
        loss = _train_epoch(cfg, model, optimizer, train_split, generator, state, total, progress)
        synchronize(device)
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        state.epoch += 1
        record = {"epoch": state.epoch, "train_loss": loss, "seconds": round(seconds, 3)}
        record["lr"] = optimizer.param_groups[0]["lr"]  # at the epoch's last step
        if cfg.train.eval_every_epoch:
            record["test_accuracy"] = _test_accuracy(cfg, model, data)
        state.history.append(record)
        progress.end_epoch(record)
    progress.close()
    if cfg.train.log_every:
        log("Finished Training")
    return state


def _test_accuracy(cfg: Config, model: nn.Module, data: ImageData) -> float:
    result = evaluate(
        model, data.test, cfg.data.mean, cfg.data.std, len(data.classes), cfg.train.eval_batch_size
    )
    return round(result.accuracy, 6)


def _train_epoch(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split,
    generator: torch.Generator,
    state: TrainState,
    total: int,
    progress: Progress,
) -> float:
    """One pass over the shuffled training split; returns the epoch's mean loss."""
    model.train()
    steps_in_epoch = min(math.ceil(len(split) / cfg.train.batch_size), total - state.step)
    progress.start_epoch(state.epoch, steps_in_epoch)
    epoch_loss = torch.zeros((), device=split.labels.device)
    for i, (images, labels) in enumerate(batches(split, cfg.train.batch_size, generator)):
        if i == steps_in_epoch:
            break
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(state.step, total, cfg.optim)
        optimizer.zero_grad(set_to_none=True)
        logits = model(normalize(images, cfg.data.mean, cfg.data.std))
        loss = compute_loss(logits, labels, cfg.optim)
        loss.backward()
        optimizer.step()
        state.step += 1
        epoch_loss += loss.detach()
        progress.step(state.step, loss.detach(), logits.detach(), labels, optimizer)
    return round(epoch_loss.item() / max(steps_in_epoch, 1), 6)
