"""The learning-rate range test: raise the rate exponentially for a few hundred steps of the
engine's own training step, watch the smoothed loss, stop when it diverges, and suggest a rate
below the loss's minimum."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tqdm import tqdm

from blitz.config.settings import OptimConfig
from blitz.data.dataset import ImageData
from blitz.training.context import RunContext, silent
from blitz.training.engine import build_loop, train_at_factors
from blitz.training.loop import TrainHooks
from blitz.training.progress import Progress
from blitz.workflows.runs import build_model

SMOOTHING = 0.98  # exponential moving average of the loss (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class Sweep:
    """What the range test saw: rates, smoothed losses, and the suggested rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float


def lr_find(
    ctx: RunContext,
    data: ImageData,
    steps: int = 300,
    start: float = 1e-6,
    end: float = 10.0,
) -> Sweep:
    """Sweep ``optim.lr`` from ``start`` to ``end`` over ``steps`` steps of a fresh model,
    trained as ``blitz train`` trains it (data-dependent init, augmentation, precision, every
    optimizer); the other groups' rates (the head's, Muon's) move with it in proportion."""
    cfg = ctx.cfg
    progress = Progress(cfg, silent, quiet=True)  # unused: the sweep draws its own bar
    loop = build_loop(ctx, data, build_model(ctx, data), progress, TrainHooks())
    lrs = [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]
    losses = train_at_factors(loop, [lr / cfg.optim.lr for lr in lrs], ctx.device)
    raw = []
    # disable=None: a bar on a terminal only, not in logs
    for loss in tqdm(losses, "lr-find", steps, leave=False, unit="step", disable=ctx.quiet or None):
        raw.append(loss.item())  # needed every step: the stop rule reads it
        if has_diverged(smooth(raw)):
            break
    lrs, smoothed = lrs[: len(raw)], smooth(raw)
    return Sweep(lrs, smoothed, suggest(lrs, smoothed))


def suggested_settings(cfg: OptimConfig, lr: float) -> dict[str, float]:
    """The settings that train at ``lr`` with the other groups' rates in the sweep's proportion
    (``--lr`` alone would leave the head's and Muon's rates where they were)."""
    factor = lr / cfg.lr
    settings = {"optim.lr": lr}
    if cfg.head_lr:
        settings["optim.head_lr"] = cfg.head_lr * factor
    if cfg.name == "muon":
        settings["optim.muon_lr"] = cfg.muon_lr * factor
    return settings


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (so the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def has_diverged(smoothed: list[float]) -> bool:
    """The last smoothed loss is not finite or far above the best so far."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > DIVERGED * min(smoothed)


def suggest(lrs: list[float], smoothed: list[float]) -> float:
    """A tenth of the rate at the smoothed loss's minimum: still on the steep, stable slope.

    The first tenth of the sweep is left out: its average holds too few batches to be trusted
    (fastai's range test skips its start the same way)."""
    skip = len(lrs) // 10
    finite = [(loss, lr) for loss, lr in zip(smoothed[skip:], lrs[skip:]) if math.isfinite(loss)]
    return min(finite)[1] / 10
