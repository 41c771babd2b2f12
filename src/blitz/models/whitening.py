"""Patch whitening: a first conv layer's filters computed from the training images (airbench's
data-dependent initialisation, Jordan, arXiv 2404.00498)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def whiten_filters(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set ``conv``'s filters to the leading eigenvectors of the covariance of its patches of
    ``images`` (N, C, H, W), each scaled by 1/sqrt(its eigenvalue) and paired with its negative:
    the filters map patches to decorrelated, unit-variance features (and ReLU keeps both signs).

    ``conv`` has ``2 * k`` filters for the ``k`` largest of the C*h*w eigenvalues; filters past
    ``2 * C*h*w`` keep their initialisation. Images smaller than a patch change nothing."""
    c, (h, w) = images.shape[1], conv.weight.shape[2:]
    if images.shape[2] < h or images.shape[3] < w:
        return
    patches = images.float().unfold(2, h, 1).unfold(3, w, 1)  # (N, C, H', W', h, w)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * h * w)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    count = min(conv.out_channels // 2, c * h * w)
    eigenvalues, eigenvectors = eigenvalues[-count:], eigenvectors[:, -count:]
    scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
    conv.weight[: 2 * count].copy_(torch.cat((scaled, -scaled)).to(conv.weight))
