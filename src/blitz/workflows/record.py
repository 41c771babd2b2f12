"""metrics.json's record of a finished run (single- or multi-label): what it measured, on
which sets, and how long it took; and which images its grids show."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from blitz.data.counts import class_counts, find_copies
from blitz.data.dataset import ImageData
from blitz.models import count_parameters
from blitz.training.context import RunContext
from blitz.training.devices import device_name
from blitz.training.loop import Loop, steps_per_epoch
from blitz.training.metrics import Metrics
from blitz.training.rundir import RunDir
from blitz.version import __version__

SAMPLES = 8  # images in the grids (the seed shows 4)


def sample_rows(count: int, total: int) -> torch.Tensor:
    """A fixed random choice of rows (folders are sorted by class: the first rows are one class)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count]


def run_metrics(
    ctx: RunContext,
    data: ImageData,
    model: nn.Module,
    loop: Loop,
    figures: dict[str, Any],
    eval_seconds: float,
) -> Metrics:
    """metrics.json's record of a finished run: ``figures``, the test's fields (single-label:
    the confusion matrix and its views; multi-label: its figures), and how the run went."""
    cfg, state = ctx.cfg, loop.state
    versions = {"blitz": __version__, "torch": torch.__version__}
    return Metrics(
        classes=data.classes,
        **figures,
        sets={role: len(split) for role, split in data.sets().items()},
        test_set="val" if data.test_is_val else "test",
        class_counts=class_counts(data),
        **find_copies(data)._asdict(),
        excluded=data.excluded,
        split=data.split,
        kept_epoch=state.best_epoch if state.best_weights is not None else state.epoch,
        kept="best" if state.best_weights is not None else "last",
        train_seconds=round(state.train_seconds, 3),
        eval_seconds=round(eval_seconds, 3),
        compile_seconds=round(state.compile_seconds, 3),
        total_seconds=round(time.perf_counter() - ctx.started, 3),
        epochs=state.epoch,
        steps=state.step,
        steps_per_epoch=steps_per_epoch(cfg, len(data.train)),
        train_images=len(data.train),
        test_images=len(data.test_set()),
        seed=cfg.train.seed,
        device=str(ctx.device),
        device_name=device_name(ctx.device),
        processes=ctx.world.size,
        preset=cfg.preset,
        data=data.name,
        data_storage=data.storage(),
        model=cfg.model.name,
        parameters=count_parameters(model),
        versions={**versions, "python": platform.python_version()},
        history=state.history,
    )


def publish(run_dir: RunDir, metrics: Metrics, on_result: Callable[[Metrics], None] | None) -> None:
    """Write metrics.json (its presence marks the run finished), drop the resume point, and hand
    the metrics to ``on_result``: before the pictures and the report are drawn."""
    run_dir.write_metrics(metrics)
    run_dir.drop_resume_point()
    if on_result:
        on_result(metrics)
