"""Settings: one dataclass tree, TOML presets, command-line overrides, validated once."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from blitz.errors import BlitzError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "nesterov", "adam", "rmsprop", "muon")
LOSSES = ("cross-entropy", "mse")
SCHEDULES = ("constant", "onecycle", "linear")
FLIPS = ("none", "random", "alternate")
TTAS = ("none", "flip", "flip-translate")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _check(condition: bool, option: str, value: Any, expected: str) -> None:
    if not condition:
        raise BlitzError(f"invalid value {value!r} for {option}: expected {expected}")


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int | None:
    """Bytes in a size such as 8GB, 1.5G, 500MB or 0 (binary units); None for "auto"."""
    if text == "auto":
        return None
    number = text.upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    try:
        value = float(number.removesuffix(unit)) if number else -1
    except ValueError:
        value = -1
    _check(
        0 <= value < float("inf"), "--max-memory", text, "auto, or a size such as 8GB, 500MB or 0"
    )
    return int(value * SIZE_UNITS[unit])


@dataclass
class DataConfig:
    """Where images come from and how they are turned into tensors."""

    source: str = "auto"  # auto | cifar10 | mnist | shapes[:N] | PATH (folder or archive)
    image_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # the seed's Normalize: [0, 1] -> [-1, 1]
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    flip: str = "none"  # training augmentation: none | random | alternate (airbench's)
    translate: int = 0  # shift by up to this many pixels (reflect padding)
    cutout: int = 0  # blank a square of this side
    skip_bad_images: bool = False  # False: a corrupt image stops decoding, naming every bad file
    # image folders whose decoded size passes this stream from disk: auto (a quarter of this
    # machine's memory) | a size such as 8GB or 500MB | 0 (always stream)
    max_memory: str = "auto"
    workers: int | str = "auto"  # DataLoader processes when streaming: auto | N (0: in-process)

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        _check(self.flip in FLIPS, "data.flip", self.flip, " | ".join(FLIPS))
        _check(self.translate >= 0, "data.translate", self.translate, "an integer >= 0")
        _check(self.cutout >= 0, "data.cutout", self.cutout, "an integer >= 0")
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        _check(all(s > 0 for s in self.std), "data.std", self.std, "positive numbers")
        _check(len(self.mean) == len(self.std), "data.mean", self.mean, "as many values as std")
        self.max_memory = str(self.max_memory)
        parse_size(self.max_memory)
        if isinstance(self.workers, str) and self.workers.isdigit():  # from the command line
            self.workers = int(self.workers)
        workers_ok = self.workers == "auto" or (type(self.workers) is int and self.workers >= 0)
        _check(workers_ok, "--workers", self.workers, "auto or an integer >= 0")


@dataclass
class ModelConfig:
    """Which network from the registry, and its keyword options."""

    name: str = "lenet"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from blitz.models import list_models

        names = list_models()
        _check(self.name in names, "--model", self.name, "one of " + ", ".join(names))


@dataclass
class OptimConfig:
    """The update rule, the loss and the learning-rate schedule."""

    name: str = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    loss: str = "cross-entropy"
    label_smoothing: float = 0.0
    reduction: str = "mean"  # "sum": per-sample learning rates, which scale with the batch size
    schedule: str = "constant"
    warmup: float = 0.0  # fraction of all steps spent warming up (onecycle)
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    head_lr: float = 0.0  # learning rate of the classifier layer; 0: the same as lr
    muon_lr: float = 0.02  # with name = "muon": torch.optim.Muon for conv filters, SGD-Nesterov
    muon_momentum: float = 0.95  # (lr, momentum, weight_decay) for everything else

    def __post_init__(self) -> None:
        _check(self.name in OPTIMIZERS, "--optimizer", self.name, " | ".join(OPTIMIZERS))
        _check(self.lr > 0, "--lr", self.lr, "a number > 0")
        _check(0 <= self.momentum < 1, "--momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.loss in LOSSES, "--loss", self.loss, " | ".join(LOSSES))
        _check(self.reduction in ("mean", "sum"), "optim.reduction", self.reduction, "mean | sum")
        _check(
            0 <= self.label_smoothing < 1,
            "optim.label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        _check(self.schedule in SCHEDULES, "optim.schedule", self.schedule, " | ".join(SCHEDULES))
        _check(0 <= self.warmup < 1, "optim.warmup", self.warmup, "a fraction in [0, 1)")
        _check(0 <= self.ema < 1, "optim.ema", self.ema, "a decay in [0, 1)")
        _check(self.head_lr >= 0, "optim.head_lr", self.head_lr, "a number >= 0")
        _check(self.muon_lr > 0, "optim.muon_lr", self.muon_lr, "a number > 0")
        _check(0 <= self.muon_momentum < 1, "optim.muon_momentum", self.muon_momentum, "in [0, 1)")
        if self.name in ("nesterov", "muon"):
            _check(self.momentum > 0, "--momentum", self.momentum, "> 0 for nesterov")


@dataclass
class TrainConfig:
    """How long, in what batches, on which device, and how loudly."""

    epochs: int = 2
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0  # 0: no limit; else stop after this many optimizer steps
    log_every: int = 0  # 0: a progress bar; N: the seed's running-loss line every N steps
    eval_every_epoch: bool = True
    eval_batch_size: int = 1000
    tta: str = "none"  # test-time augmentation: none | flip | flip-translate
    channels_last: bool = False  # memory format of images and weights (faster convs on some CPUs)
    precision: str = "fp32"  # autocast for forward passes: fp32 | bf16 | fp16 | auto (bf16 if fast)
    compile: bool = False  # torch.compile the model (warmed up and timed apart from training)
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch
    tensorboard: bool = False  # also write TensorBoard event files into the run directory
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    checkpoint_minutes: float = 10.0  # also checkpoint when this long has passed (0: never)
    deterministic: bool = True  # deterministic kernels: a resumed run matches one left alone

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "--epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "--batch-size", self.batch_size, "an integer >= 1")
        _check(self.device in DEVICES, "--device", self.device, " | ".join(DEVICES))
        _check(self.max_steps >= 0, "--max-steps", self.max_steps, "an integer >= 0")
        _check(self.log_every >= 0, "train.log_every", self.log_every, "an integer >= 0")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, ">= 1")
        _check(self.tta in TTAS, "train.tta", self.tta, " | ".join(TTAS))
        precisions = " | ".join(PRECISIONS)
        _check(self.precision in PRECISIONS, "train.precision", self.precision, precisions)
        _check(
            self.checkpoint_every >= 0,
            "--checkpoint-every",
            self.checkpoint_every,
            "an integer >= 0",
        )
        _check(
            self.checkpoint_minutes >= 0,
            "train.checkpoint_minutes",
            self.checkpoint_minutes,
            "a number >= 0",
        )


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


@dataclass
class Config:
    """A whole run's settings; saved with every run and checkpoint."""

    preset: str = "seed"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and checkpoint-safe)."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            out["data"][key] = list(out["data"][key])
        return out


def config_from_dict(raw: dict[str, Any], preset: str = "custom") -> Config:
    """Build a validated Config from nested plain data, naming any unknown setting."""
    raw = dict(raw)
    sections = {}
    for name, cls in SECTIONS.items():
        values = dict(raw.pop(name, {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BlitzError(
                f"unknown setting {name}.{unknown[0]} in preset {preset!r}: "
                f"known {name} settings are " + ", ".join(sorted(known))
            )
        sections[name] = cls(**values)
    unknown = sorted(set(raw) - {"preset", "description"})
    if unknown:
        raise BlitzError(f"unknown section {unknown[0]!r} in preset {preset!r}")
    return Config(
        preset=raw.get("preset", preset), description=raw.get("description", ""), **sections
    )


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, for every bundled TOML preset."""
    files = sorted(
        p for p in resources.files("blitz.presets").iterdir() if p.name.endswith(".toml")
    )
    return {p.name[:-5]: tomllib.loads(p.read_text())["description"] for p in files}


def load_preset(name: str) -> dict[str, Any]:
    """The raw nested settings of a bundled preset (not yet validated)."""
    presets = list_presets()
    if name not in presets:
        raise BlitzError(f"unknown preset {name!r}: choose one of " + ", ".join(presets))
    raw = tomllib.loads(resources.files("blitz.presets").joinpath(f"{name}.toml").read_text())
    raw["preset"] = name
    return raw


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``optim.lr``) in nested raw settings; returns a new dict."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise BlitzError(
                f"invalid setting {dotted!r}: use SECTION.KEY with SECTION one of "
                + ", ".join(SECTIONS)
            )
        node = out.setdefault(section, {})
        *parents, leaf = key.split(".")
        for parent in parents:  # model.options.width
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def build_config(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """A preset with overrides applied, validated. A preset's model options are for its own
    model: another ``model.name`` starts from that model's defaults."""
    overrides, raw = overrides or {}, load_preset(preset)
    model = raw.get("model", {})
    if overrides.get("model.name", model.get("name")) != model.get("name"):
        raw["model"] = {k: v for k, v in model.items() if k != "options"}
    raw = apply_overrides(raw, overrides)
    try:
        return config_from_dict(raw, preset)
    except TypeError as exc:  # a value of the wrong type, e.g. a string for a number
        raise BlitzError(f"invalid setting in preset {preset!r}: {exc}") from None
