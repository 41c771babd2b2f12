"""Warm starts (``--init RUN_DIR|FILE``): a new run begins from a finished run's weights. With the
same classes every weight carries over (train on, with new settings or more epochs); with other
classes the body carries over and the classifier head is made anew."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from blitz.config.settings import Config
from blitz.data.dataset import Log
from blitz.errors import BlitzError
from blitz.training.checkpoint import Checkpoint, load_checkpoint, load_state
from blitz.training.rundir import RunDir


def read_init(source: str) -> Checkpoint:
    """The checkpoint ``--init`` names: a run directory (its model.pt) or a blitz .pt file."""
    path = Path(source).expanduser()
    if path.is_dir():
        return RunDir(path).load_model()
    if not path.is_file():
        raise BlitzError(
            f"--init {source}: no such run directory or checkpoint file (pass a finished run's "
            "directory, or a .pt file blitz wrote)"
        )
    return load_checkpoint(path)


def warm_start(model: nn.Module, cfg: Config, classes: list[str], channels: int, log: Log) -> None:
    """Load ``--init``'s weights into the fresh ``model`` (built for ``classes``)."""
    source = cfg.train.init
    ckpt = read_init(source)
    facts = ckpt.model
    if (facts.name, facts.in_channels) != (cfg.model.name, channels):
        raise BlitzError(
            f"--init {source} holds a {facts.name} for {facts.in_channels}-channel images, but "
            f"this run trains a {cfg.model.name} for {channels}-channel images: use --model "
            f"{facts.name} (with its options), or another --init"
        )  # other options: the weights' shapes differ, and load_state says so
    if facts.classes == classes:
        load_state(model, ckpt.state_dict, f"the {cfg.model.name} model")
        log(f"weights from {source} (its classes are these: every weight carries over)")
        return
    head = _head(model)
    body = {k: v for k, v in ckpt.state_dict.items() if not k.startswith(f"{head}.")}
    own = model.state_dict()
    load_state(model, {**own, **body}, f"the {cfg.model.name} model's body")
    log(
        f"weights from {source}, but for its {len(facts.classes)} classes, not these "
        f"{len(classes)}: the body carries over, the classifier head ({head}) starts afresh"
    )


def _head(model: nn.Module) -> str:
    """The name of the classifier head: the model's last linear layer."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise BlitzError("this model has no linear classifier head to make anew for new classes")
    return linear[-1]
