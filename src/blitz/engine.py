"""The training loop: optimizer, loss, learning-rate schedule, and per-epoch progress."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from blitz.config import Config, OptimConfig
from blitz.data import ImageData, batches, normalize
from blitz.errors import BlitzError
from blitz.evaluate import evaluate

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
    """Everything besides weights and optimizer that must survive a restart (checkpointed whole)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch: a resumed epoch skips them
    train_seconds: float = 0.0
    epoch_seconds: float = 0.0  # time in the current epoch so far, before a restart too
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0  # the best per-epoch test accuracy so far (for best.pt)
    order: torch.Generator = field(default_factory=torch.Generator)  # shuffles the data
    epoch_order: torch.Tensor | None = None  # `order`'s state before this epoch's shuffle
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # sums, on device
    running_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))  # first non-finite

    def to_dict(self) -> dict:
        """Plain data and CPU tensors (checkpoint-safe; loads with ``weights_only=True``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["order"] = self.order.get_state()
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def load_dict(self, saved: dict, device: torch.device) -> None:
        """Take over a state written by ``to_dict``; tensors move to ``device``."""
        for f in fields(self):
            if f.name not in saved:  # a field added since the checkpoint: keep its default
                continue
            value = saved[f.name]
            if f.name == "order":
                self.order.set_state(value)
            elif isinstance(value, torch.Tensor) and f.name != "epoch_order":
                setattr(self, f.name, value.to(device))
            else:
                setattr(self, f.name, value)


class TrainHooks:
    """Called by the loop at its restart points; the default does nothing (see blitz.resume)."""

    def start(self, state: TrainState, stateful: dict[str, Any]) -> None:
        """Before the first step: a resumed run restores ``state`` and ``stateful`` here."""

    def after_step(self, state: TrainState) -> None:
        """After each optimizer step: may save a checkpoint, or stop the run."""

    def after_epoch(self, state: TrainState) -> None:
        """After an epoch's history record is appended."""


class NonFiniteLoss(BlitzError):
    """The loss became NaN or infinite: the weights after that step are garbage."""


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
    hooks: TrainHooks | None = None,
) -> TrainState:
    """Train ``model`` on ``data.train``; evaluate on ``data.test`` after epochs if asked."""
    hooks = hooks or TrainHooks()
    optimizer = build_optimizer(model, cfg.optim)
    train_split = type(data.train)(data.train.images.to(device), data.train.labels.to(device))
    total = planned_steps(cfg, len(train_split))
    state = new_state(cfg, device)
    hooks.start(state, {"optimizer": optimizer})
    while state.epoch < cfg.train.epochs and state.step < total:
        steps = _train_epoch(cfg, model, optimizer, train_split, state, total, log, quiet, hooks)
        state.train_seconds += state.epoch_seconds
        _finish_epoch(cfg, model, data, state, steps)
        hooks.after_epoch(state)
    if cfg.train.log_every:
        log("Finished Training")
    return state


def new_state(cfg: Config, device: torch.device) -> TrainState:
    """The state of a run before its first step: counters at zero, sums on ``device``."""
    return TrainState(
        order=torch.Generator().manual_seed(cfg.train.seed),
        epoch_loss=torch.zeros((), device=device),
        running_loss=torch.zeros((), device=device),
        bad_step=torch.tensor(-1, device=device),
    )


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


def _finish_epoch(
    cfg: Config, model: nn.Module, data: ImageData, state: TrainState, steps: int
) -> None:
    check_finite(state, cfg, planned_steps(cfg, len(data.train)))
    state.epoch += 1
    state.batch = 0
    loss = round(state.epoch_loss.item() / max(steps, 1), 6)
    state.epoch_loss.zero_()
    state.running_loss.zero_()
    record = {"epoch": state.epoch, "train_loss": loss, "seconds": round(state.epoch_seconds, 3)}
    state.epoch_seconds = 0.0
    if cfg.train.eval_every_epoch:
        record["test_accuracy"] = _test_accuracy(cfg, model, data)
    state.history.append(record)


def _test_accuracy(cfg: Config, model: nn.Module, data: ImageData) -> float:
    result = evaluate(
        model, data.test, cfg.data.mean, cfg.data.std, len(data.classes), cfg.train.eval_batch_size
    )
    return round(result.accuracy, 6)


def _epoch_batches(cfg: Config, split, state: TrainState) -> Iterator:
    """This epoch's batches from where ``state`` stands: a resumed epoch replays its shuffle."""
    if state.batch == 0:
        state.epoch_order = state.order.get_state()
    else:
        state.order.set_state(state.epoch_order)
    return itertools.islice(batches(split, cfg.train.batch_size, state.order), state.batch, None)


def _train_epoch(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split,
    state: TrainState,
    total: int,
    log: Log,
    quiet: bool,
    hooks: TrainHooks,
) -> int:
    """One pass over the shuffled training split (or the rest of one); returns its step count."""
    model.train()
    steps_in_epoch = min(
        math.ceil(len(split) / cfg.train.batch_size), total - state.step + state.batch
    )
    bar = tqdm(
        total=steps_in_epoch,
        initial=state.batch,
        desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
        unit="step",
        disable=quiet or bool(cfg.train.log_every),
        leave=False,
    )
    clock = time.perf_counter()
    for images, labels in _epoch_batches(cfg, split, state):
        if state.batch == steps_in_epoch:
            break
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(state.step, total, cfg.optim)
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(
            model(normalize(images, cfg.data.mean, cfg.data.std)), labels, cfg.optim
        )
        loss.backward()
        optimizer.step()
        state.step += 1
        state.batch += 1
        loss = loss.detach()
        _note_non_finite(state, loss)
        state.epoch_loss += loss
        state.running_loss += loss
        if cfg.train.log_every and state.batch % cfg.train.log_every == 0:
            # the seed's line: '[%d, %5d] loss: %.3f'
            running = state.running_loss.item() / cfg.train.log_every
            log(f"[{state.epoch + 1}, {state.batch:5d}] loss: {running:.3f}")
            state.running_loss.zero_()
        bar.update()
        if state.batch % 50 == 0 and not bar.disable:  # .item() syncs the device: now and then
            bar.set_postfix(loss=f"{loss.item():.3f}")
        clock = _tick(state, clock)  # a checkpoint saves the time spent so far
        hooks.after_step(state)
    synchronize(split.labels.device)  # so that the epoch's time is honest
    _tick(state, clock)
    bar.close()
    return steps_in_epoch


def _tick(state: TrainState, since: float) -> float:
    now = time.perf_counter()
    state.epoch_seconds += now - since
    return now
