"""Batched augmentation on the training device: no per-sample Python in the hot loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _uniform(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # drawn on the generator's device, so a CPU generator gives the same images on any device
    return torch.rand(count, generator=generator, device=generator.device).to(device)


def flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = _uniform(len(images), generator, images.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def alternating_flip(images: torch.Tensor, rows: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's flip: each image is mirrored in every other epoch, by a fixed per-image parity.

    Compared with random flips, no image is shown the same way twice in a row.
    """
    parity = (rows + epoch) % 2 == 1
    return torch.where(parity.view(-1, 1, 1, 1), images.flip(-1), images)


def translate(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels each way (random crops of reflect-padded images)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx = (_uniform(n, generator, images.device) * (2 * pad + 1)).long()
    dy = (_uniform(n, generator, images.device) * (2 * pad + 1)).long()
    rows = (torch.arange(h, device=images.device) + dy.view(-1, 1)).view(n, 1, h, 1)
    cols = (torch.arange(w, device=images.device) + dx.view(-1, 1)).view(n, 1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero (the mean colour, after normalising) one random ``size`` x ``size`` square per image."""
    n, _, h, w = images.shape
    top = (_uniform(n, generator, images.device) * (h - size + 1)).long().view(n, 1, 1, 1)
    left = (_uniform(n, generator, images.device) * (w - size + 1)).long().view(n, 1, 1, 1)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill(inside, 0)
