"""``shapes`` and ``shapes:N``: a dataset blitz draws itself, 10 classes of 32x32 RGB patterns,
offline and deterministic; N training images (default 10,000) and N/5 test images.
``multishapes[:N]``: its multi-label sibling, each image a 2 x 2 grid of tiles, each tile one of
MULTI_CLASSES' shapes or blank; an image's labels are the shapes it shows (none, for some)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blitz.config.data_settings import DataConfig
from blitz.config.types import concrete
from blitz.data.dataset import ImageData, Log, Split, resize_splits
from blitz.data.sources import register_source
from blitz.errors import BlitzError

CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "hbars",
    "vbars",
    "diagonal",
    "checker",
    "dots",
)
SIZE = 32
DEFAULT_COUNT = 10_000
MIN_COUNT = 10
MAX_COUNT = 200_000  # drawing peaks near 42 KB per image (measured): over 8 GB at this count


def _masks(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Masks of one class; u, v are (N, H, W) coordinates scaled so the shape spans [-1, 1]."""
    box = torch.maximum(u.abs(), v.abs())
    radius = (u * u + v * v).sqrt()
    inside = box < 1
    if kind == 0:
        return radius < 1
    if kind == 1:
        return box < 0.8
    if kind == 2:
        return (v.abs() < 0.85) & (u.abs() < (v + 0.85) * 0.55)
    if kind == 3:
        return ((u.abs() < 0.28) | (v.abs() < 0.28)) & (box < 0.95)
    if kind == 4:
        return (radius > 0.55) & (radius < 1)
    if kind == 5:
        return inside & (torch.floor((v + 1) * 2.5) % 2 == 0)
    if kind == 6:
        return inside & (torch.floor((u + 1) * 2.5) % 2 == 0)
    if kind == 7:
        return inside & ((u - v).abs() < 0.4)
    if kind == 8:
        return inside & ((torch.floor((u + 1) * 2) + torch.floor((v + 1) * 2)) % 2 == 0)
    centres = (u.abs() - 0.5) ** 2 + (v.abs() - 0.5) ** 2
    return centres < 0.3**2 * 1.4


def _draw(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Render one image per label: (N, 3, 32, 32) uint8."""
    n = len(labels)
    scale = torch.empty(n, 1, 1).uniform_(6, 14, generator=gen)
    cx = scale + torch.rand(n, 1, 1, generator=gen) * (SIZE - 2 * scale)
    cy = scale + torch.rand(n, 1, 1, generator=gen) * (SIZE - 2 * scale)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    u = (grid.view(1, 1, SIZE) - cx) / scale
    v = (grid.view(1, SIZE, 1) - cy) / scale
    mask = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for kind in range(len(CLASSES)):
        rows = labels == kind
        if rows.any():
            mask[rows] = _masks(
                kind, u[rows].expand(-1, SIZE, SIZE), v[rows].expand(-1, SIZE, SIZE)
            )
    fg = torch.rand(n, 3, 1, 1, generator=gen) * 255
    bg = (fg + 64 + torch.rand(n, 3, 1, 1, generator=gen) * 128) % 256  # always differs from fg
    images = torch.where(mask.unsqueeze(1), fg, bg)
    images = images + torch.randn(n, 3, SIZE, SIZE, generator=gen) * 20
    return images.round().clamp(0, 255).to(torch.uint8)


def make_shapes(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, 32, 32) uint8 and balanced labels; the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(CLASSES)
    labels = labels[torch.randperm(count, generator=gen)]
    return _draw(labels, gen), labels


@register_source("shapes", takes_arg=True)
def load_shapes(count: str, cfg: DataConfig, log: Log) -> ImageData:
    """``count`` (default 10,000) training images and a fifth as many test images."""
    n = _check_count(count or str(DEFAULT_COUNT))
    train = Split(*make_shapes(n, seed=0))
    test = Split(*make_shapes(max(n // 5, MIN_COUNT), seed=1))
    return resize_splits(ImageData("shapes", list(CLASSES), train, test), concrete(cfg.image_size))


MULTI_CLASSES = 6  # multishapes draws the first six shapes: each readable on a 16 px tile
BLANK = 0.4  # the chance that a tile is blank


def make_multishapes(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, 32, 32) uint8 of four tiles each, and their multi-hot labels
    (N, MULTI_CLASSES) float32; the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    kinds = torch.randint(MULTI_CLASSES, (count, 4), generator=gen)
    kinds[torch.rand(count, 4, generator=gen) < BLANK] = -1  # -1: no shape's mask, background
    tiles = F.avg_pool2d(_draw(kinds.flatten(), gen).float(), 2).round().to(torch.uint8)
    half = SIZE // 2
    grid = tiles.view(count, 2, 2, 3, half, half).permute(0, 3, 1, 4, 2, 5)
    labels = torch.zeros(count, MULTI_CLASSES + 1).scatter_(1, kinds + 1, 1.0)[:, 1:]
    return grid.reshape(count, 3, SIZE, SIZE).contiguous(), labels


@register_source("multishapes", takes_arg=True)
def load_multishapes(count: str, cfg: DataConfig, log: Log) -> ImageData:
    """``count`` (default 10,000) multi-label training images, and a fifth as many test images."""
    n = _check_count(count or str(DEFAULT_COUNT), "multishapes")
    train = Split(*make_multishapes(n, seed=0))
    test = Split(*make_multishapes(max(n // 5, MIN_COUNT), seed=1))
    data = ImageData("multishapes", list(CLASSES[:MULTI_CLASSES]), train, test)
    return resize_splits(data, concrete(cfg.image_size))


def _check_count(count: str, name: str = "shapes") -> int:
    if not count.isdigit() or not MIN_COUNT <= int(count) <= MAX_COUNT:
        raise BlitzError(
            f"invalid data spec '{name}:{count}': use {name} or {name}:N with N from "
            f"{MIN_COUNT} to {MAX_COUNT:,} (drawing takes about 40 KB of memory per image)"
        )
    return int(count)
