"""The learning-rate range test: raise the rate exponentially for a few hundred steps, watch
the smoothed loss, stop when it diverges, and suggest a rate below the loss's minimum."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from blitz.config import Config
from blitz.data import AnySplit, normalize
from blitz.distributed import SINGLE, epoch_batches
from blitz.engine import compute_loss
from blitz.models import create_model
from blitz.optim import build_optimizers

SMOOTHING = 0.98  # exponential moving average of the loss (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum


@dataclass
class Sweep:
    """What the range test saw: rates, smoothed losses, and the suggested rate."""

    lrs: list[float]
    losses: list[float]
    suggestion: float


def lr_find(
    cfg: Config,
    train: AnySplit,
    classes: int,
    device: torch.device,
    steps: int = 300,
    start: float = 1e-6,
    end: float = 10.0,
    quiet: bool = False,
) -> Sweep:
    """Sweep the learning rate from ``start`` to ``end`` over ``steps`` steps of a fresh model."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, classes, train.channels, **cfg.model.options)
    model = model.to(device).train()
    optimizers = build_optimizers(model, cfg.optim)
    lrs, raw = [], []
    # disable=None: a bar on a terminal only, not in logs
    data = _endless(train.to(device), cfg, device)
    for i in tqdm(
        range(steps), desc="lr-find", unit="step", disable=True if quiet else None, leave=False
    ):
        lr = start * (end / start) ** (i / max(steps - 1, 1))
        _, images, labels = next(data)
        loss = compute_loss(
            model(normalize(images, cfg.data.mean, cfg.data.std)), labels, cfg.optim
        )
        loss.backward()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        lrs.append(lr)
        raw.append(loss.item())  # needed every step: the stop rule reads it
        if has_diverged(smooth(raw)):
            break
    smoothed = smooth(raw)
    return Sweep(lrs, smoothed, suggest(lrs, smoothed))


def _endless(
    split: AnySplit, cfg: Config, device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    size, seed = cfg.train.batch_size, cfg.train.seed
    for epoch in itertools.count():
        yield from split.load(epoch_batches(len(split), size, seed, epoch, SINGLE), device)


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
