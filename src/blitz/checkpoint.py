"""Checkpoints: weights and what is needed to use them (model, classes, normalisation, config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blitz.config import Config, config_from_dict
from blitz.errors import BlitzError
from blitz.models import create_model


def save_checkpoint(path: Path, model: nn.Module, cfg: Config, classes: list[str], **extra: Any):
    """Write atomically (temporary file, fsync, rename): a crash never leaves half a checkpoint."""
    payload = {
        "model": cfg.model.name,
        "model_options": cfg.model.options,
        "in_channels": _in_channels(model),
        "classes": list(classes),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "image_size": cfg.data.image_size,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: no code from the file can run."""
    if not path.is_file():
        raise BlitzError(f"no checkpoint at {path}: pass a run directory written by blitz train")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a checkpoint we can trust"
        raise BlitzError(f"cannot read checkpoint {path}: {exc}") from None


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the network and load its weights."""
    model = create_model(
        ckpt["model"], len(ckpt["classes"]), ckpt["in_channels"], **ckpt["model_options"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def config_from_checkpoint(ckpt: dict[str, Any]) -> Config:
    """The run's settings, as saved."""
    return config_from_dict(ckpt["config"], ckpt["config"].get("preset", "custom"))
