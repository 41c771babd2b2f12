"""A small batch-normalised conv net with width and depth knobs, built for speed on a CPU."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from blitz.config.checks import check_range
from blitz.models import MAX_CHANNELS, check_widths, register_model
from blitz.models.whitening import whiten_filters

MAX_DEPTH = 64  # convs per stage: far past where a plain (residual-free) stack trains well
WHITEN_IMAGES = 1000  # ~900,000 patches of 32 px images: plenty for a 27 x 27 covariance


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def block(c_in: int, c_out: int, depth: int, pool: str) -> nn.Sequential:
    """Halve the resolution, then ``depth - 1`` more conv-BN-ReLU at the new size.

    ``pool="max"``: conv -> max-pool -> BN -> ReLU (pooling before BN: they see a quarter of the
    pixels). ``pool="stride"``: a stride-2 conv, four times cheaper and without max-pool's costly
    backward on a CPU, for a little accuracy.
    """
    if pool == "max":
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2)]
    else:
        layers = [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)]
    layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
    for _ in range(depth - 1):
        layers += conv_bn(c_out, c_out)
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """stem conv, one pooling block per width, global max-pool, linear classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...],
        depth: int,
        stem: int,
        pool: str,
        whiten: bool,
    ):
        super().__init__()
        stem_layers = conv_bn(in_channels, stem) if stem else []
        prev, blocks = stem or in_channels, []
        for width in widths:
            blocks.append(block(prev, width, depth, pool))
            prev = width
        self.features = nn.Sequential(*stem_layers, *blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(prev, num_classes)
        self.prepare_images = WHITEN_IMAGES if whiten else 0  # the engine's: for prepare()
        if whiten:
            self.first_conv().weight.requires_grad = False  # set from the data by prepare()

    def first_conv(self) -> nn.Conv2d:
        return next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))

    def prepare(self, images: torch.Tensor) -> None:
        """With ``whiten``: the first conv's (frozen) filters from its patches of the
        (normalised) training images (``whiten_filters``)."""
        whiten_filters(self.first_conv(), images)

    def forward(self, x):
        x = self.features(x)  # (B, widths[-1], H / 2^len(widths), W / 2^len(widths))
        return self.head(self.pool(x).flatten(1))  # (B, num_classes)


@register_model
def convnet(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: tuple[int, ...] = (32, 64, 128),
    depth: int = 1,
    stem: int = 0,
    pool: Literal["max", "stride"] = "max",
    whiten: bool = False,
) -> nn.Module:
    """Small batch-normalised conv net: good accuracy in seconds to minutes on a CPU.

    ``widths`` (channels, one stage per halving), ``depth`` (convs per stage), ``stem`` (channels
    of a first full-resolution conv; 0: none), ``pool`` (max | stride), ``whiten`` (the first
    conv's filters whitening its 3x3 patches, computed from the training images and frozen:
    a head start for short runs, and no gradient to compute for that layer).
    """
    check_widths(widths)
    check_range("model.options.depth", depth, 1, MAX_DEPTH)
    check_range("model.options.stem", stem, 0, MAX_CHANNELS)
    return ConvNet(num_classes, in_channels, tuple(widths), depth, stem, pool, whiten)
