"""A network in the style of airbench (Jordan, arXiv 2404.00498), written from the paper's ideas.

A frozen patch-whitening first layer initialised from the training images, three conv groups with
identity (Dirac) initialisation, batch norm with a frozen scale, and a max-pooled linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from blitz.models import check_widths, register_model
from blitz.models.whitening import whiten_filters


class BatchNorm(nn.BatchNorm2d):
    """Batch norm with a frozen scale (only the shift learns) and fast-moving statistics."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 conv, no bias, initialised as the identity on its first input channels (Dirac)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        torch.nn.init.dirac_(self.weight.data[: self.in_channels])


class ConvGroup(nn.Sequential):
    """conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            Conv(c_in, c_out),
            nn.MaxPool2d(2),
            BatchNorm(c_out),
            nn.GELU(),
            Conv(c_out, c_out),
            BatchNorm(c_out),
            nn.GELU(),
        )


class AirbenchNet(nn.Module):
    """whiten (2x2 patches) -> GELU -> 3 conv groups -> max-pool -> linear / temperature."""

    prepare_images = 5000  # the training images prepare() whitens from

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        patch = 2
        whiten_width = 2 * in_channels * patch * patch  # each eigenvector and its negative
        self.whiten = nn.Conv2d(in_channels, whiten_width, patch, padding=0, bias=True)
        self.whiten.weight.requires_grad = False  # set from the data by prepare()
        groups, prev = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(prev, width))
            prev = width
        self.layers = nn.Sequential(nn.GELU(), *groups, nn.AdaptiveMaxPool2d(1))
        self.head = nn.Linear(prev, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()  # unit-scale logits at the start

    def prepare(self, images: torch.Tensor) -> None:
        """Whitening: the first layer's filters from 2x2 patches of (normalised) training
        images (``whiten_filters``)."""
        whiten_filters(self.whiten, images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.whiten(x)  # (B, 24, 31, 31)
        x = self.layers(x).flatten(1)  # (B, widths[-1])
        # airbench divides the logits by the width: a temperature that suits label smoothing
        return self.head(x) / x.shape[1]


@register_model
def airbench(
    num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (64, 256, 256)
) -> nn.Module:
    """airbench-style whitened net: the best accuracy in seconds on a GPU (slow on a CPU).

    Needs ``prepare(images)`` before training (the engine calls it); ``widths``: channels of each
    conv group."""
    check_widths(widths)
    return AirbenchNet(num_classes, in_channels, tuple(widths))
