"""Checkpoints: weights and what is needed to use them (model, classes, normalisation, config),
plus, for resuming, the optimizer, the loop's state and every random number generator."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
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
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the previous checkpoint stays whole until this instant
    except OSError as exc:  # disk full, quota, permissions: the old file is untouched
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was kept"
        raise BlitzError(
            f"could not write checkpoint {path}: {exc.strerror or exc}; {kept}. "
            "Free some space (or fix the permissions) and run again"
        ) from None


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
    load_state(model, ckpt["state_dict"], f"the weights of a {ckpt['model']!r} model")
    return model.eval()


def load_state(target: Any, state: dict[str, Any], what: str) -> None:
    """``target.load_state_dict(state)``, with a mismatch reported as a BlitzError."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BlitzError(
            f"the checkpoint does not fit {what} ({first}): it was written by another model "
            "or for other classes; use the run directory that goes with this model and data"
        ) from None


def config_from_checkpoint(ckpt: dict[str, Any]) -> Config:
    """The run's settings, as saved."""
    return config_from_dict(ckpt["config"], ckpt["config"].get("preset", "custom"))


# --- random number generators: all of them, so that a resumed run draws what it would have ---


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's CPU and the device's generators (plain data)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type != "cpu":  # torch.cuda and torch.mps share this interface
        states[device.type] = getattr(torch, device.type).get_rng_state()
    return states


def restore_rng(states: dict[str, Any], device: torch.device) -> None:
    """Put every generator back where ``capture_rng`` found it."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if device.type in states:  # a checkpoint from another device type keeps its CPU streams
        getattr(torch, device.type).set_rng_state(states[device.type])
