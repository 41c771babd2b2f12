"""Normalisation: uint8 batches into the float inputs a model takes. Its own small module, so
that training, evaluation, export and the lr range test need not import the data sources."""

from __future__ import annotations

import torch

from blitz.errors import BlitzError


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std`` per channel (the seed's Normalize)."""
    channels = images.shape[1]
    mean_t = _per_channel(mean, channels, images.device)
    std_t = _per_channel(std, channels, images.device)
    # one scale and one shift, in place on the new float copy: two passes over the batch, not
    # four with a new tensor each (a training step on a CPU spent ~5 % of its time here)
    x = images.to(torch.float32, copy=True)
    return x.mul_(1 / (255 * std_t)).add_(-mean_t / std_t)


def _per_channel(values: tuple[float, ...], channels: int, device: torch.device) -> torch.Tensor:
    if channels == 1 and len(values) == 3:  # grey is the average of red, green and blue
        values = (sum(values) / 3,)
    if len(values) != channels:
        if len(set(values)) != 1:
            raise BlitzError(
                f"normalisation {values} has {len(values)} values for {channels}-channel images"
            )
        values = values[:1] * channels
    return torch.tensor(values, device=device).view(1, channels, 1, 1)
