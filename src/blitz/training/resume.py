"""Checkpoints during training (periodic, per epoch, best), resuming from them exactly, and
stopping cleanly on a signal. The loop calls these through ``loop.TrainHooks``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from blitz.config.settings import Config
from blitz.errors import BlitzError
from blitz.training.checkpoint import Checkpoint, Training, capture_rng, load_state, restore_rng
from blitz.training.context import RunContext
from blitz.training.engine import check_finite
from blitz.training.loop import Loop, TrainHooks, TrainState
from blitz.training.progress import Progress
from blitz.utils.signals import StopFlag, StopRequested


def choose_kernels(cfg: Config) -> None:
    """Deterministic kernels (``train.deterministic``), so that a resumed run matches one left
    alone; otherwise the fastest: cuDNN times its convolution algorithms for the run's shapes
    on their first use and keeps the fastest (which may differ between runs in rounding).
    Both ways, so that a run in a notebook does not inherit the choice of the one before."""
    deterministic = cfg.train.deterministic
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace, set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic kernel (some on MPS) warns instead of failing
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


class Checkpointer(TrainHooks):
    """Saves ``last.pt`` every N steps, every M minutes, at epoch ends and on a stop signal."""

    def __init__(
        self,
        ctx: RunContext,
        model: nn.Module,
        classes: list[str],
        stop: StopFlag,
        resume: Checkpoint | None = None,
        progress: Progress | None = None,
        on_epoch: Callable[[TrainState, int], None] | None = None,
    ):
        if ctx.dir is None:
            raise ValueError("checkpoints need a run directory: RunContext.dir is None")
        self.run_dir, self.cfg, self.model, self.classes = ctx.dir, ctx.cfg, model, classes
        self.progress = progress  # its rows in progress are checkpointed too
        self.writes = ctx.writes is not None  # under torchrun only the first process writes
        self.stop, self.resume = stop, resume
        # after each epoch's checkpoint, with the planned steps (blitz tune's pruning)
        self.on_epoch = on_epoch
        self.total = 0  # the loop's planned steps, known at start()
        self.device = next(model.parameters()).device
        self.stateful: dict[str, Any] = {}
        self.saved_step: int | None = None  # step of the newest checkpoint on disk
        self.saved_at = time.monotonic()

    def start(self, loop: Loop) -> None:
        self.stateful, self.total, state = loop.stateful, loop.total, loop.state
        if self.resume is None:
            return
        training = self.resume.saved_training()
        load_state(self.model, self.resume.state_dict, f"the {self.cfg.model.name} model")
        for name, obj in self.stateful.items():
            if name not in training.state_dicts:
                raise BlitzError(
                    f"the checkpoint in {self.run_dir} has no saved {name} state (an older blitz "
                    "wrote it, or other settings), so it cannot be resumed exactly: start the "
                    "run again"
                )
            load_state(obj, training.state_dicts[name], f"the {name}")
        state.load_dict(training.train_state, self.device)
        if self.progress and training.progress:  # older checkpoints have none
            self.progress.load_state_dict(training.progress)
        restore_rng(training.rng, self.device)  # last: building the model drew numbers
        self.saved_step = state.step

    def after_step(self, state: TrainState) -> None:
        self._stop_if_asked(state)
        every, minutes = self.cfg.train.checkpoint_every, self.cfg.train.checkpoint_minutes
        due_steps = every and state.step % every == 0
        due_time = minutes and time.monotonic() - self.saved_at >= 60 * minutes
        if due_steps or due_time:
            self.save(state)

    def after_epoch(self, state: TrainState) -> None:
        best = "val_accuracy" in state.history[-1] and state.best_epoch == state.epoch
        self.save(state, best)
        self._stop_if_asked(state)
        if self.on_epoch:
            self.on_epoch(state, self.total)

    def _stop_if_asked(self, state: TrainState) -> None:
        if not self.stop.signum:
            return
        self.save(state)
        name = signal.Signals(self.stop.signum).name
        raise StopRequested(
            f"stopped by {name} after step {state.step}; checkpoint saved in "
            f"{self.run_dir.last}. Continue with: blitz train --resume {self.run_dir}",
            self.stop.signum,
        )

    def save(self, state: TrainState, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``), unless the weights went non-finite."""
        check_finite(state, self.cfg, self.total)  # never replace a good checkpoint by garbage
        if not self.writes:
            return
        training = Training(
            train_state=state.to_dict(),
            state_dicts={name: obj.state_dict() for name, obj in self.stateful.items()},
            rng=capture_rng(self.device),
            progress=self.progress.state_dict() if self.progress else None,
        )
        ckpt = Checkpoint.of(self.model, self.cfg, self.classes, training)
        for name in ("last", "best") if best else ("last",):
            self.run_dir.save_model(ckpt, name)
        self.saved_step, self.saved_at = state.step, time.monotonic()

    def describe_kept(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {self.saved_step}) is kept in {self.run_dir.last}"
