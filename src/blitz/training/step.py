"""One optimizer step: the batch normalised and augmented on its device, the loss, the update
at the schedule's learning rate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from blitz.config.data_settings import DataConfig
from blitz.config.settings import OptimConfig
from blitz.config.types import concrete
from blitz.data import augment
from blitz.data.preprocess import normalize
from blitz.training.devices import autocast
from blitz.training.loop import Loop
from blitz.training.multilabel import bce_loss
from blitz.training.optim import body_frozen, lr_factor


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


def prepare_batch(
    loop: Loop, images: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise and augment a uint8 training batch, in batched tensor ops on its device (a
    per-image loop for ``auto_augment`` only); returns the inputs and their targets: the
    labels, or soft targets (N, classes) when MixUp or CutMix mixed the images."""
    cfg, gen = loop.cfg.data, loop.state.augment
    mixing = (cfg.mixup or cfg.cutmix) and not loop.multi_label  # off for multi-label: said
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
    if mixing:
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


def scheduled_step(
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
        if loop.multi_label:
            loss = bce_loss(logits, targets, cfg.optim, loop.loss_weights)
        else:
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
