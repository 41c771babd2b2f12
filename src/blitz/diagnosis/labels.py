"""Likely label errors by confident learning: every image's predicted probabilities from a
model that never saw it, then cleanlab's ``find_label_issues`` (an image whose given label the
out-of-sample model finds much less likely than its class's usual confidence) and its label
quality scores (the probability of the given label) to rank them.

The probabilities come from k-fold cross-validation on the training set with a cheap preset,
trained by blitz's own loop: fold i's model predicts fold i, and the mean of the k models
predicts the validation and test images (none of them trained on those). With a finished run,
its model predicts its own validation and test images instead."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from blitz.config.settings import Config
from blitz.config.types import concrete
from blitz.data.dataset import AnySplit, ImageData, Log, silent
from blitz.diagnosis.findings import Finding
from blitz.training.devices import autocast
from blitz.training.engine import train
from blitz.training.evaluate import eval_batch_rows, predict_logits
from blitz.training.loop import steps_per_epoch
from blitz.workflows.runs import build_model, set_up

Probabilities = dict[str, torch.Tensor]  # role -> (N, K) float, in the set's row order


@dataclass
class Scored:
    """Out-of-sample probabilities, and how they were had."""

    probabilities: Probabilities
    folds: int
    seconds: float  # training and predicting


def fold_of_rows(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """(N,) each row's fold, stratified: each class's rows dealt in turn, in a seeded order."""
    fold = torch.empty(len(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label)[:, 0]
        rows = rows[torch.randperm(len(rows), generator=gen)]
        fold[rows] = torch.arange(len(rows)) % folds
    return fold


def cross_validate(data: ImageData, cfg: Config, folds: int, log: Log) -> Scored:
    """Out-of-sample probabilities for every image, by ``folds``-fold cross-validation on the
    training set (see the module's docstring); ``cfg``: the cheap run each fold trains."""
    started = time.perf_counter()
    train_set = data.train
    labels = train_set.labels.cpu()
    fold = fold_of_rows(labels, folds, cfg.train.seed)
    held = {role: s for role, s in data.sets().items() if role != "train"}
    probabilities = torch.zeros(len(train_set), len(data.classes))
    averaged = {role: torch.zeros(len(s), len(data.classes)) for role, s in held.items()}
    cfg = _budget(cfg, len(train_set) * (folds - 1) // folds)
    for k in tqdm(range(folds), "cross-validating", unit=" fold", disable=_quiet(log)):
        inside = torch.nonzero(fold == k)[:, 0]
        fitted = _fit(cfg, replace(data, train=train_set.subset(torch.nonzero(fold != k)[:, 0],
                                                                 "train")))  # fmt: skip
        probabilities[inside] = predict(fitted, train_set.subset(inside, "train"), cfg)
        for role, split in held.items():
            averaged[role] += predict(fitted, split, cfg) / folds
    return Scored({"train": probabilities, **averaged}, folds, time.perf_counter() - started)


def run_model_probabilities(data: ImageData, cfg: Config, model: nn.Module) -> Probabilities:
    """A finished run's model on its validation and test images (it never trained on them)."""
    return {role: predict(model, s, cfg) for role, s in data.sets().items() if role != "train"}


def _quiet(log: Log) -> bool | None:
    return True if log is silent else None  # None: a bar on a terminal only


def _budget(cfg: Config, images: int) -> Config:
    """The preset's step budget (``train.max_steps``) reached on a fold of ``images``: as many
    epochs as it takes (as ``blitz train`` does on a small dataset with ``train.min_steps``)."""
    steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch(cfg, images)
    epochs = max(cfg.train.epochs, math.ceil(steps / steps_per_epoch(cfg, max(images, 1))))
    return replace(cfg, train=replace(cfg.train, epochs=epochs, max_steps=steps, log_every=0))


def _fit(cfg: Config, data: ImageData) -> nn.Module:
    """A model trained as ``blitz train`` trains it, writing nothing; in evaluation mode."""
    ctx = set_up(cfg, None, silent, True, time.perf_counter())
    model = build_model(ctx, data)
    return train(ctx, data, model).eval_net.eval()


def predict(model: nn.Module, split: AnySplit, cfg: Config) -> torch.Tensor:
    """(N, K) softmax probabilities of a set's images, on the CPU."""
    device = next(model.parameters()).device
    batches = torch.arange(len(split)).split(eval_batch_rows(cfg))
    images = (images for _, images, _ in split.load(batches, device))
    with autocast(cfg.train.precision, device):
        mean, std = concrete(cfg.data.mean), concrete(cfg.data.std)
        logits = predict_logits(model, images, mean, std, cfg.train.tta, cfg.train.channels_last)
    return logits.float().softmax(1).cpu()


def label_findings(
    data: ImageData, probabilities: Probabilities, finder: Callable | None = None
) -> list[Finding]:
    """Likely label errors among the images with out-of-sample probabilities, by cleanlab's
    ``find_label_issues`` (``finder``: another implementation with its signature)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    sets = {r: s for r, s in data.sets().items() if r in probabilities}
    labels = torch.cat([s.labels.cpu() for s in sets.values()]).numpy()
    probs = torch.cat([probabilities[r] for r in sets]).double().numpy()
    probs /= probs.sum(1, keepdims=True)  # cleanlab checks that each row sums to 1
    if len(np.unique(labels)) < 2:
        return []
    issues = (finder or find_label_issues)(labels, probs, n_jobs=1)
    quality = get_label_quality_scores(labels, probs)
    ids = [(role, image) for role, s in sets.items() for image in s.row_ids(role)]
    out = []
    for row in np.nonzero(issues)[0]:
        role, image = ids[row]
        given, best = int(labels[row]), int(probs[row].argmax())
        out.append(Finding(
            "label", image, role, data.classes[given], suggested=data.classes[best],
            score=round(1 - float(quality[row]), 4),
            detail=_detail(data.classes, probs[row], given, best),
        ))  # fmt: skip
    return out


def _detail(classes: list[str], probs: np.ndarray, given: int, best: int) -> str:
    return (
        f"a model that never saw it gives {classes[given]!r} {100 * probs[given]:.0f} %, "
        f"{classes[best]!r} {100 * probs[best]:.0f} %"
    )
