"""What a training run holds while it runs (``Loop``), the state that survives a restart
(``TrainState``), the hooks at its restart points, and how many steps it plans."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from blitz.config.settings import Config
from blitz.data.dataset import AnySplit
from blitz.errors import BlitzError
from blitz.training.distributed import World
from blitz.training.progress import Progress


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
    best_loss: float = math.inf  # its validation loss: of two epochs as accurate, the lower wins
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
    multi_label: bool  # several labels per image: sigmoid outputs, binary cross-entropy
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
