"""Checkpoints: weights and what is needed to use them (model, classes, normalisation, config),
plus, for resuming, the optimizer, the loop's state and every random number generator."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from blitz.config.checks import MAX_IMAGE_SIZE, check_range, check_types, check_value
from blitz.config.settings import Config, Tta
from blitz.config.types import concrete
from blitz.data.dataset import MAX_CLASSES
from blitz.errors import BlitzError, UnusableFile
from blitz.files import atomic_file, open_regular
from blitz.models import MAX_CHANNELS, create_model
from blitz.models.configs import config_from_dict
from blitz.training.optim import load_in_place

FORMAT = 2  # 1: model facts as top-level keys beside a copy in "config"; still read


@dataclass
class ModelFacts:
    """What it takes to rebuild the network and feed it images: stored once per checkpoint."""

    name: str
    options: dict[str, Any]
    in_channels: int
    classes: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # the test-time views the run was scored with: predict and export average the same ones
    # (checkpoints from before it was recorded: none)
    tta: Tta = "none"
    # temperature scaling (training.calibration): predict, the API and export divide the logits
    # by it; 1 where no validation set fitted one, and in checkpoints from before it was recorded
    temperature: float = 1.0
    # several labels per image: sigmoid probabilities, and each label predicted at a probability
    # of at least its class's threshold (chosen on the validation set; empty until the run ends)
    task: Literal["single-label", "multi-label"] = "single-label"
    thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_types(self, "model")
        check_range("model.temperature", self.temperature, 1e-3, 1e3)
        fits = not self.thresholds or len(self.thresholds) == len(self.classes)
        fits = fits and all(0 <= t <= 1 for t in self.thresholds)
        check_value(fits, "model.thresholds", list(self.thresholds), "a probability per class")
        check_range("model.in_channels", self.in_channels, 1, MAX_CHANNELS)
        check_range("model.image_size", self.image_size, 8, MAX_IMAGE_SIZE)
        check_value(bool(self.classes), "model.classes", self.classes, "at least one class")
        # a class named twice (a hand-edited file) would make two outputs one answer
        twice = sorted(c for c, n in Counter(self.classes).items() if n > 1)[:3]
        check_value(not twice, "model.classes", twice, "each class named once")
        # check_types refuses a NaN or infinite mean or std; a 0 would divide every pixel by it
        positive = all(s > 0 for s in self.std)
        check_value(positive, "model.std", list(self.std), "numbers > 0")

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    def labels_over(self, probabilities: list[tuple[str, float]]) -> list[str] | None:
        """A multi-label model's answer: the labels of ``(class, probability)`` pairs at or over
        their class's threshold (0.5 in a checkpoint saved before they were chosen), in the
        pairs' order; None for a single-label model."""
        if not self.multi_label:
            return None
        cut = dict(zip(self.classes, self.thresholds or (0.5,) * len(self.classes)))
        return [name for name, p in probabilities if p >= cut[name]]

    @property
    def image_mode(self) -> str:
        """The PIL mode images are decoded in for this model: grey or RGB."""
        return "L" if self.in_channels == 1 else "RGB"

    def build(self) -> nn.Module:
        """The network, with fresh weights."""
        return create_model(self.name, len(self.classes), self.in_channels, **self.options)


@dataclass
class Training:
    """What ``--resume`` needs besides the weights: the loop's state (``loop.TrainState``),
    the optimizers' (EMA's, scaler's) state dicts, every generator, and the rows in progress."""

    train_state: dict[str, Any]
    state_dicts: dict[str, Any]
    rng: dict[str, Any]
    progress: dict[str, Any] | None = None  # None in checkpoints written before it was saved

    def __post_init__(self) -> None:
        for key in ("step", "epoch"):
            value = self.train_state.get(key)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            check_value(ok, f"training.train_state.{key}", value, "an integer >= 0")

    @property
    def step(self) -> int:
        """Optimizer steps taken when it was saved."""
        return self.train_state["step"]

    @property
    def epoch(self) -> int:
        """Epochs finished when it was saved."""
        return self.train_state["epoch"]


@dataclass
class Checkpoint:
    """A checkpoint: the model's facts and weights, the run's settings, and (for ``--resume``)
    the training state: optimizers, the loop's state, every random number generator."""

    model: ModelFacts
    config: dict[str, Any]  # Config.to_dict()
    state_dict: dict[str, torch.Tensor]
    training: Training | None = None

    @classmethod
    def of(
        cls,
        model: nn.Module,
        cfg: Config,
        classes: list[str],
        training: Training | None = None,
        temperature: float = 1.0,
        thresholds: tuple[float, ...] = (),
    ) -> Checkpoint:
        """The checkpoint of ``model`` trained with ``cfg`` on ``classes`` (``temperature``:
        what its logits are divided by for calibrated probabilities)."""
        facts = ModelFacts(
            cfg.model.name, cfg.model.options, _in_channels(model), list(classes),
            concrete(cfg.data.image_size), concrete(cfg.data.mean), concrete(cfg.data.std),
            cfg.train.tta, temperature, _task(cfg), tuple(thresholds),
        )  # fmt: skip
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(facts, cfg.to_dict(), weights, training)

    def saved_training(self) -> Training:
        """``training``, which a checkpoint to resume has (``RunDir.load_resumable`` checks)."""
        if self.training is None:
            raise AssertionError("resuming from a checkpoint without a training state")
        return self.training

    @property
    def cfg(self) -> Config:
        """The run's settings, as saved."""
        return config_from_dict(self.config, self.config.get("preset", "custom"))

    def build_model(self) -> nn.Module:
        """The network with these weights, in evaluation mode."""
        self._check_shapes()
        model = self.model.build()
        load_state(model, self.state_dict, f"the weights of a {self.model.name!r} model")
        return model.eval()

    def _check_shapes(self) -> None:
        """The network the facts describe, built on the meta device (nothing allocated), must
        have the shapes of the weights the file holds: a hand-made file naming 3 million classes
        and wide layers would otherwise allocate tens of GB before its weights are compared."""
        with torch.device("meta"):
            wanted = {k: tuple(v.shape) for k, v in self.model.build().state_dict().items()}
        held = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None
                for k, v in self.state_dict.items()}  # fmt: skip
        if wanted != held:
            keys = sorted(wanted.keys() | held.keys())
            key = next(k for k in keys if wanted.get(k) != held.get(k))
            raise BlitzError(
                f"the checkpoint's weights do not fit the {self.model.name!r} model of "
                f"{len(self.model.classes):,} classes it describes ({key}: the model has "
                f"{wanted.get(key)}, the file {held.get(key)}): it was written by another model "
                "or edited; use the run directory that goes with this model and data"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data and tensors (loads with ``weights_only=True``), with a checksum."""
        out = {
            "format": FORMAT,
            "model": {**dataclasses.asdict(self.model), "mean": list(self.model.mean),
                      "std": list(self.model.std), "thresholds": list(self.model.thresholds)},
            "config": self.config,
            "state_dict": self.state_dict,
            "training": None if self.training is None else dataclasses.asdict(self.training),
        }  # fmt: skip
        return {**out, "digest": _digest(out)}

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> Checkpoint:
        """Check what a file holds before using it: a foreign or damaged file is a BlitzError."""
        try:
            raw = _upgrade(raw)
            _check_class_count(raw)  # before the checksum walks every name
            if "digest" in raw and raw["digest"] != _digest(raw):
                raise UnusableFile("its checksum does not match: the file is damaged")
            training = raw.get("training")
            if training is not None:
                missing = sorted({"train_state", "state_dicts", "rng"} - set(training))
                if missing:
                    raise UnusableFile(f"its training state lacks {missing}")
                training = Training(**training)
            facts = ModelFacts(**raw["model"])
            _check_finite(raw["state_dict"])
            return cls(facts, dict(raw["config"]), dict(raw["state_dict"]), training)
        except (BlitzError, KeyError, TypeError, AttributeError, ValueError) as exc:
            why = exc if isinstance(exc, BlitzError) else f"{type(exc).__name__} {exc}"
            raise BlitzError(
                f"{path} is not a usable blitz checkpoint ({why}): pass a run directory "
                "written by blitz train, or train again"
            ) from None


def _task(cfg: Config) -> Literal["single-label", "multi-label"]:
    """The run's task (``data.task`` as the data settled it: a run records it concrete)."""
    return "multi-label" if cfg.data.task == "multi-label" else "single-label"


def _check_class_count(raw: dict[str, Any]) -> None:
    # no run has more (data.dataset refuses them): millions of names in a hand-made file would
    # take minutes to check and, with wide layers, a network of tens of GB to compare
    classes = raw["model"].get("classes") if isinstance(raw.get("model"), dict) else None
    if isinstance(classes, list) and len(classes) > MAX_CLASSES:
        raise UnusableFile(f"it names {len(classes):,} classes, more than blitz takes "
                           f"({MAX_CLASSES:,})")  # fmt: skip


def _check_finite(state_dict: dict[str, Any]) -> None:
    # a run that diverged saves NaN weights with a valid checksum: they would predict "nan %"
    # and score an accuracy without a word, so they are refused where every checkpoint is read
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            raise UnusableFile(f"its weight {name!r} holds NaN or infinite values: the run "
                               "that wrote it diverged (try a lower --lr)")  # fmt: skip


def _upgrade(raw: Any) -> dict[str, Any]:
    """A format-1 checkpoint (blitz 0.1 before the typed format) in today's layout."""
    if not isinstance(raw, dict):
        raise UnusableFile(f"it holds a {type(raw).__name__}, not a checkpoint")
    if raw.get("format") == FORMAT:
        return raw
    if "format" in raw:
        raise UnusableFile(f"format {raw['format']!r}: written by a newer blitz?")
    model = {
        "name": raw["model"], "options": raw["model_options"],
        "in_channels": raw["in_channels"], "classes": raw["classes"],
        "image_size": raw["image_size"], "mean": raw["mean"], "std": raw["std"],
    }  # fmt: skip
    return {**raw, "model": model}


def _digest(payload: dict[str, Any]) -> str:
    """SHA-256 of every tensor's bytes and every other value, in a fixed order: a flipped bit
    anywhere in the weights or the training state changes it."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        else:
            digest.update(repr(value).encode())

    walk({k: v for k, v in payload.items() if k != "digest"})
    return digest.hexdigest()


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write atomically, never through a link (``files.atomic_file``): a crash never leaves half a
    checkpoint."""
    try:
        with atomic_file(path) as f:  # the previous checkpoint stays whole until it is renamed
            torch.save(ckpt.to_dict(), f)
    except (OSError, RuntimeError) as exc:  # disk full: torch.save may say it as RuntimeError
        failed = _failed_write(exc)
        if failed is None:
            raise
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was kept"
        why = failed.strerror if isinstance(failed, OSError) and failed.strerror else str(failed)
        why = why.strip()
        raise BlitzError(
            f"could not write checkpoint {path}: {why.splitlines()[0]}; {kept}. "
            "Free some space (or fix the permissions) and run again"
        ) from None


def _failed_write(exc: BaseException) -> BaseException | None:
    """The write that failed behind ``exc``, or None if ``exc`` is no failed write. torch.save
    into a Python file lets the file's OSError (ENOSPC, EFBIG) through, but its zip writer's
    close then raises a RuntimeError ("unexpected pos") with that OSError as its context."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc if isinstance(exc, RuntimeError) and _is_write_error(exc) else None


def _is_write_error(exc: RuntimeError) -> bool:
    # torch.save's zip writer reports a failed write as "PytorchStreamWriter failed writing
    # file ..." (a RuntimeError), hiding the OSError of a full disk beneath it
    return "PytorchStreamWriter" in str(exc) or "file write failed" in str(exc)


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return first.in_channels if isinstance(first, nn.Conv2d) else first.in_features


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` (no code from the file can run), checked."""
    if not path.exists():  # anything else there (a folder, a pipe) is refused when read
        raise BlitzError(f"no checkpoint at {path}: pass a run directory written by blitz train")
    try:
        opened = open_regular(path)  # a pipe in its place would hang torch.load
    except OSError as exc:  # not a regular file, or unreadable: the file system's words
        raise BlitzError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    try:
        with opened as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'torch.load' received a zip file")  # TorchScript
            raw = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a checkpoint we can trust"
        # torch's own words may advise weights_only=False, which would let the file run code
        raise BlitzError(
            f"cannot read checkpoint {path}: it is damaged, or not a checkpoint blitz wrote "
            f"(such as a TorchScript or ONNX export) ({type(exc).__name__})"
        ) from None
    return Checkpoint.from_dict(raw, path)


def load_state(target: Any, state: dict[str, Any], what: str) -> None:
    """``target.load_state_dict(state)``, with a mismatch reported as a BlitzError; an optimizer
    keeps its state's tensors (``optim.load_in_place``: a compiled step holds on to them)."""
    try:
        if isinstance(target, torch.optim.Optimizer):
            load_in_place(target, state)
        else:
            target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BlitzError(
            f"the checkpoint does not fit {what} ({first}): it was written by another model "
            "or for other classes; use the run directory that goes with this model and data"
        ) from None


# --- random number generators: all of them, so that a resumed run draws what it would have ---


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The state of Python's, NumPy's, torch's CPU and the device's generators (plain data)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        # ignored: numpy's stub says get_state() gives a dict or a tuple; here it is the tuple
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),  # type: ignore[attr-defined]
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
