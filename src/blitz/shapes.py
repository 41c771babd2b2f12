"""A dataset blitz draws itself: 10 classes of 32x32 RGB patterns, offline and deterministic."""

from __future__ import annotations

import torch

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
