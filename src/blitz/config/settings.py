"""Settings: one tree of frozen dataclasses, each setting declared once (with its option, where
it has one), checked once as it is built.

Imports nothing of blitz but its errors, ``config.types`` and ``config.checks`` (how a value
is checked and named): what only the model registry knows
(a model exists, takes these options, expects these inputs) is checked by
``blitz.models.configs``, which builds every Config a run uses; where settings come from
(presets, files, overrides) is ``config.loading``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from blitz.config.checks import (
    FLAGS,
    PLAIN_NAME,
    check_fraction,
    check_range,
    check_types,
    check_value,
    is_plain_name,
    option,
    option_name,
    parse_size,
)
from blitz.config.types import concrete, field_hints
from blitz.errors import BlitzError, did_you_mean

# The choices of each setting live in its annotation; the tuples are for the command line.
Optimizer = Literal["sgd", "nesterov", "adam", "adamw", "rmsprop", "muon"]
Loss = Literal["cross-entropy", "mse"]
Reduction = Literal["mean", "sum"]
Schedule = Literal["constant", "onecycle", "linear", "cosine"]
Flip = Literal["none", "random", "alternate"]
Tta = Literal["none", "flip", "translate", "flip-translate"]
UNMIRRORED: dict[str, str] = {"flip": "none", "flip-translate": "translate"}  # TTA less mirrors
AutoAugment = Literal["none", "trivial", "randaugment"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
Device = Literal["auto", "cpu", "cuda", "mps"]
ClassWeights = Literal["none", "balanced"]
Keep = Literal["best", "last"]
Sampler = Literal["shuffle", "balanced"]
Task = Literal["auto", "single-label", "multi-label"]
OPTIMIZERS = get_args(Optimizer)
LOSSES = get_args(Loss)
REDUCTIONS = get_args(Reduction)
SCHEDULES = get_args(Schedule)
FLIPS = get_args(Flip)
TTAS = get_args(Tta)
PRECISIONS = get_args(Precision)
DEVICES = get_args(Device)
CLASS_WEIGHTS = get_args(ClassWeights)
SAMPLERS = get_args(Sampler)
TASKS = get_args(Task)
# how a table's label cell lists several labels: a space, as fastai's label_delim and Kaggle's
# multi-label tables (Planet, Human Protein Atlas) write them
LABEL_DELIMITER = " "

# Far beyond any real run, and low enough that a typo fails here rather than deep in torch.
MAX_SEED = 2**63 - 1  # the engine seeds generators with seed + 1 + rank: it must stay < 2**64
MAX_IMAGE_SIZE = 4096
MAX_BATCH_SIZE = 2**20
MAX_EPOCHS = 10**6
MODEL_PREPROCESSING = ("image_size", "mean", "std")  # data settings that belong to a model
OWN_PREPROCESSING = {"image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}  # blitz's models
SIZED_FOR_IMAGES = ("low_res",)  # data settings made for a preset's image size


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are turned into tensors."""

    # auto | cifar10 | mnist | shapes[:N] | multishapes[:N] | PATH (folder, archive or table)
    source: str = option(
        "auto",
        "--data",
        "auto | cifar10 | mnist | shapes[:N] | multishapes[:N] | PATH (an image folder, an "
        "archive of one, a table of files and labels)",
        metavar="SPEC",
    )
    # side of the square images the model sees, and the normalisation; "auto": a timm model's
    # pretrained input size, mean and std, else 32 and the seed's 0.5 (see Config)
    image_size: int | Literal["auto"] = option(
        "auto",
        "--image-size",
        "resize images to N x N pixels (auto: a timm model's pretrained input size, else 32)",
        metavar="N",
    )
    mean: tuple[float, ...] | Literal["auto"] = "auto"
    std: tuple[float, ...] | Literal["auto"] = "auto"
    flip: Flip = "none"  # training augmentation ("alternate": airbench's, by epoch parity)
    translate: int = 0  # shift by up to this many pixels (reflect padding)
    cutout: int = 0  # blank a square of this side
    # random-resized crops: each training image a random part of at least this fraction of its
    # area (aspect 3/4 to 4/3), resized back to image_size; 0: off
    crop_scale: float = 0.0
    auto_augment: AutoAugment = "none"  # torchvision's TrivialAugment or RandAugment, per image
    mixup: float = 0.0  # Beta(alpha, alpha) of MixUp; 0: off (with cutmix: one or the other)
    cutmix: float = 0.0  # the same for CutMix
    # progressive resizing: the first low_res_until of the training steps see the batches
    # downscaled to low_res x low_res (cheaper steps: a conv's cost goes with the pixels), the
    # rest at image_size, as the test does; 0: always image_size
    low_res: int = 0
    low_res_until: float = 0.5
    # False: a corrupt image stops decoding, naming every bad file
    skip_bad_images: bool = option(
        False,
        "--skip-bad-images",
        "leave out images that cannot be decoded (default: stop and name them)",
    )
    # image folders whose decoded size passes this stream from disk: auto (a quarter of this
    # machine's memory) | a size such as 8GB or 500MB | 0 (always stream); kept as a string
    max_memory: int | str = option(
        "auto",
        "--max-memory",
        "image folders bigger than this, decoded, stream from disk: auto (a quarter of this "
        "machine's memory), a size such as 8GB, or 0 to always stream",
        metavar="SIZE",
    )
    # processes decoding images: the first decode of a folder or archive, and the DataLoader's
    # when streaming: auto (one per core, up to 8) | N (0: in this process)
    workers: int | Literal["auto"] = option(
        "auto",
        "--workers",
        "processes decoding images (the first decode into the cache, and streaming): auto "
        "(one per core, up to 8) or N (0: in this process)",
        metavar="N",
    )
    # fractions of the training images split off as the validation and test sets the data
    # lacks (stratified per class); auto: none for a set it has, else see blitz.data.roles
    val_fraction: float | Literal["auto"] = option(
        "auto",
        "--val-fraction",
        "split this fraction of the training images off as the validation set, per class, "
        "when the data has no val/ folder (auto: 0.1 for a flat folder, else 0)",
        metavar="F",
    )
    test_fraction: float | Literal["auto"] = option(
        "auto",
        "--test-fraction",
        "split this fraction of the training images off as the test set, per class, when the "
        "data has no test/ folder (auto: 0.2 for a flat folder, else 0)",
        metavar="F",
    )
    # one class per image, or several (or none): "auto" is what the data is (a table says
    # which when it lists several labels in a cell, or has one 0/1 column per class)
    task: Task = option(
        "auto",
        "--task",
        "single-label (one class per image) or multi-label (a table's images with several "
        "labels, or none); auto: detected from the data, and said",
    )
    label_delimiter: str = option(
        LABEL_DELIMITER,
        "--label-delimiter",
        "what separates the labels in a table's label cell (multi-label; default a space, as "
        "fastai and Kaggle write them)",
        metavar="TEXT",
    )
    split_seed: int = 0  # which images those are (apart from train.seed: the split stays put)
    # a file naming images to leave out of every set (blitz doctor's doctor.csv, or a list of
    # image ids as sets.csv names them, one a line); "": none
    exclude: str = option(
        "",
        "--exclude",
        "leave out the images a file names: blitz doctor's doctor.csv (its image column) or a "
        "list, one image a line as sets.csv names it; nothing is deleted",
        metavar="FILE",
    )
    # not settings (not fields): the settings left "auto", and what ``resolved`` took from a
    # timm model, and why
    auto: ClassVar[list[str]]
    chosen = ""

    def __post_init__(self) -> None:
        if isinstance(self.workers, str) and self.workers.isdigit():  # a string of digits
            object.__setattr__(self, "workers", int(self.workers))
        check_types(self, "data")
        # the settings left "auto" (an attribute, not a setting): blitz's own models' values
        # until ``resolved`` gives a timm model's
        object.__setattr__(
            self, "auto", [k for k in MODEL_PREPROCESSING if getattr(self, k) == "auto"]
        )
        for key in self.auto:
            object.__setattr__(self, key, OWN_PREPROCESSING[key])
        self._check_preprocessing()
        check_range("data.crop_scale", self.crop_scale, 0, 1)
        check_range("data.mixup", self.mixup, 0)
        check_range("data.cutmix", self.cutmix, 0)
        object.__setattr__(self, "max_memory", str(self.max_memory))
        parse_size(str(self.max_memory))
        if self.workers != "auto":
            check_range("data.workers", self.workers, 0)
        check_range("data.split_seed", self.split_seed, 0, MAX_SEED)
        delimiter = self.label_delimiter
        usable = bool(delimiter) and not set(delimiter) & set('\r\n"')
        check_value(usable, "data.label_delimiter", delimiter, "text without quotes or line ends")
        given = {}
        for key in ("val_fraction", "test_fraction"):
            if (value := getattr(self, key)) != "auto":
                check_fraction(f"data.{key}", value, "auto or a fraction")
                given[key] = value
        if sum(given.values()) >= 1:
            both = " and ".join(f"{option_name(f'data.{k}')} {v:g}" for k, v in given.items())
            raise BlitzError(
                f"{both} add up to {sum(given.values()):g}, which leaves no images to train on: "
                "choose fractions whose sum is below 1 (e.g. 0.1 and 0.2)"
            )

    def resolved(self, model: str, found: dict[str, Any] | None) -> DataConfig:
        """A copy whose settings left "auto" (image size, mean, std) are ``found``, the
        pretrained ones of the timm model ``model``; itself for blitz's own models (None).
        ``chosen`` says what was taken from the timm model."""
        if not found or not self.auto:
            return self
        defaults = {"std": found["mean"], **found}
        copy = dataclasses.replace(self, **{key: defaults[key] for key in self.auto})
        chosen = ", ".join(f"{key} {_shown(getattr(copy, key))}" for key in self.auto)
        object.__setattr__(copy, "chosen", f"{chosen}: {model}'s pretrained weights expect them")
        return copy

    def _check_preprocessing(self) -> None:
        size, mean, std = concrete(self.image_size), concrete(self.mean), concrete(self.std)
        check_range("data.image_size", size, 8, MAX_IMAGE_SIZE)
        # reflect padding needs a pad below the image's side; a cutout cannot be larger than it
        check_range("data.translate", self.translate, 0, size // 2)
        check_range("data.cutout", self.cutout, 0, size)
        if self.low_res:
            check_range("data.low_res", self.low_res, 8, size)
        check_range("data.low_res_until", self.low_res_until, 0, 1)
        positive = bool(std) and all(s > 0 for s in std)
        check_value(positive, "data.std", list(std), "a non-empty list of numbers > 0")
        same = len(mean) == len(std)
        check_value(same, "data.mean", list(self.mean), "as many values as data.std")


def _shown(value: Any) -> str:
    return "/".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)


HUB = "hub"  # model.pretrained: timm's own weights, from its hub (--pretrained with no file)


@dataclass(frozen=True)
class ModelConfig:
    """Which network from the registry, and its keyword options."""

    name: str = option("lenet", "--model", "a model from `blitz models`", metavar="NAME")
    options: dict[str, Any] = field(default_factory=dict)
    # the weights a timm model starts from: HUB (timm's, downloaded and cached) or a weights
    # file. Recorded, never re-read: a checkpoint holds the trained weights, so the file need
    # not exist when the run is loaded again.
    pretrained: str = option(
        "",
        "--pretrained",
        "start a timm:NAME model from its pretrained weights: downloaded from timm's hub (no "
        "FILE; cached), or a weights file (.safetensors, .pt, .pth); a classifier head for "
        "other classes starts afresh",
        metavar="FILE",
        const=HUB,
    )

    def __post_init__(self) -> None:
        check_types(self, "model")  # the name and options: blitz.models.configs


@dataclass(frozen=True)
class OptimConfig:
    """The update rule, the loss and the learning-rate schedule."""

    name: Optimizer = option(
        "sgd",
        "--optimizer",
        "the update rule (muon: torch.optim.Muon for conv filters, SGD-Nesterov for the rest)",
    )
    lr: float = option(0.001, "--lr", "learning rate", metavar="F")
    momentum: float = option(
        0.9, "--momentum", "momentum of SGD, Nesterov and RMSProp", metavar="F"
    )
    weight_decay: float = option(
        0.0, "--weight-decay", "L2 weight decay (decoupled with adamw)", metavar="F"
    )
    loss: Loss = option(
        "cross-entropy",
        "--loss",
        "the training loss: cross-entropy (the seed's), or mse against one-hot targets",
    )
    # "balanced": each class's loss weighted by n / (classes * its training images), as
    # scikit-learn's class_weight="balanced"
    class_weights: ClassWeights = option(
        "none", "--class-weights", "balanced: weigh each class's loss by how rare it is in training"
    )
    label_smoothing: float = option(
        0.0, "--label-smoothing", "cross-entropy's label smoothing, e.g. 0.1", metavar="F"
    )
    reduction: Reduction = "mean"  # "sum": per-sample learning rates, scaling with the batch
    schedule: Schedule = "constant"
    # fraction of all steps spent warming up (onecycle, cosine)
    warmup: float = option(0.0, "--warmup", "fraction of the steps to warm up", metavar="F")
    # fraction of all steps with the body frozen (learning rate 0): only the classifier head
    # learns, as fine-tuning a pretrained model starts
    freeze: float = 0.0
    # decay of an exponential moving average of the weights; 0: off
    ema: float = option(0.0, "--ema", "EMA of the weights, e.g. 0.999 (0: off)", metavar="DECAY")
    head_lr: float = 0.0  # learning rate of the classifier layer; 0: the same as lr
    # layer-wise decay: the body's last layer learns at lr, each one before it at this times
    # the next one's rate (smaller rates for the early, general layers); 0: lr for every layer
    layer_decay: float = 0.0
    muon_lr: float = 0.02  # with name = "muon": torch.optim.Muon for conv filters, SGD-Nesterov
    muon_momentum: float = 0.95  # (lr, momentum, weight_decay) for everything else
    # Muon's update of all same-shaped filter banks as one stack (one Newton-Schulz per shape,
    # as the Hiverge cifar10-speedrun did; the same maths): off until a GPU measures it faster
    muon_batched: bool = False

    def __post_init__(self) -> None:
        check_types(self, "optim")
        check_value(self.lr > 0, "optim.lr", self.lr, "a number > 0")
        check_fraction("optim.momentum", self.momentum)
        check_range("optim.weight_decay", self.weight_decay, 0)
        check_fraction("optim.label_smoothing", self.label_smoothing)
        check_fraction("optim.warmup", self.warmup, "a fraction")
        check_fraction("optim.freeze", self.freeze, "a fraction")
        check_fraction("optim.ema", self.ema, "a decay")
        check_range("optim.head_lr", self.head_lr, 0)
        check_range("optim.layer_decay", self.layer_decay, 0, 1)
        check_value(self.muon_lr > 0, "optim.muon_lr", self.muon_lr, "a number > 0")
        check_fraction("optim.muon_momentum", self.muon_momentum)
        if self.class_weights != "none":  # they weigh cross-entropy's classes
            expected = f"cross-entropy with optim.class_weights {self.class_weights}"
            check_value(self.loss == "cross-entropy", "optim.loss", self.loss, expected)
        if self.name in ("nesterov", "muon"):
            expected = f"a number > 0 with optim.name {self.name}"
            check_value(self.momentum > 0, "optim.momentum", self.momentum, expected)


@dataclass(frozen=True)
class TrainConfig:
    """How long, in what batches, on which device, and how loudly."""

    epochs: int = option(2, "--epochs", "passes over the training images", metavar="N")
    batch_size: int = option(
        4, "--batch-size", "images per optimizer step (across all processes)", metavar="N"
    )
    seed: int = option(
        0, "--seed", "seed of the weights, the batches and the augmentation", metavar="N"
    )
    device: Device = option("auto", "--device", "where to train (auto: a GPU if there is one)")
    # 0: no limit; else stop after this many optimizer steps
    max_steps: int = option(
        0, "--max-steps", "stop after N optimizer steps (0: no limit)", metavar="N"
    )
    # at least this many steps: a small dataset trains for more epochs, so that a preset's
    # budget means the same on 200 images as on 50,000 (0: the epochs as set)
    min_steps: int = 0
    log_every: int = 0  # 0: a progress bar; N: the seed's running-loss line every N steps
    eval_every_epoch: bool = True  # score the validation set after each epoch (if there is one)
    # stop after this many epochs without a better validation accuracy (0: train all epochs)
    patience: int = option(
        0,
        "--patience",
        "stop after N epochs without a better validation accuracy (needs a validation set; "
        "0: off); the run keeps the best epoch's weights, as every run with one does "
        "(--set train.keep=last: the last epoch's)",
        metavar="N",
    )
    # the weights a run ends with (model.pt, the test score, predict) where it has a validation
    # set: "best", the epoch with the best validation accuracy (Keras' restore_best_weights,
    # Ultralytics' best.pt), or "last", the last epoch's; without one, the last epoch's
    keep: Keep = "best"
    # "balanced": each epoch draws every class equally often (with replacement)
    sampler: Sampler = option(
        "shuffle", "--sampler", "balanced: each epoch draws every class equally often"
    )
    # start from this finished run's (or blitz .pt file's) weights; "": the seed's
    init: str = option(
        "",
        "--init",
        "start from a finished run's weights (its classes: all of them; other classes: the "
        "body, with a new head)",
        metavar="RUN_DIR",
    )
    eval_batch_size: int = 1000
    # test-time augmentation: logits averaged over the image and its mirror, 1-pixel shifts of
    # it, or the mirrors of those
    tta: Tta = "none"
    # the share of each test batch, its least confident images (the plain view's top
    # probability), that TTA sees; the rest keep the plain view's logits. 1: every image. The
    # run's test only (predict and export give every image every view): issue 33's candidate,
    # kept at 1 until a GPU measures the shorter test at equal accuracy
    tta_share: float = 1.0
    channels_last: bool = False  # memory format of images and weights (faster convs on some CPUs)
    # autocast for forward passes ("auto": bf16 if fast)
    precision: Precision = option(
        "fp32", "--precision", "autocast of the forward pass (auto: bf16 where it is fast)"
    )
    # torch.compile the model (warmed up and timed apart from training); "auto": on CUDA only
    compile: bool | Literal["auto"] = False
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch
    # also write TensorBoard event files into the run directory
    tensorboard: bool = option(
        False, "--tensorboard", "also write TensorBoard event files (needs the tensorboard package)"
    )
    # also checkpoint every N steps (0: at epoch ends only)
    checkpoint_every: int = option(
        0,
        "--checkpoint-every",
        "also save a checkpoint every N steps (0: at epoch ends and every "
        "train.checkpoint_minutes)",
        metavar="N",
    )
    # multi-label: the probability over which a label is predicted; "auto": one per class,
    # chosen on the validation set to maximise that class's F1
    threshold: float | Literal["auto"] = option(
        "auto",
        "--threshold",
        "multi-label: predict each label whose probability is over this (auto: one threshold "
        "per class, chosen on the validation set for its best F1)",
        metavar="P",
    )
    checkpoint_minutes: float = 10.0  # also checkpoint when this long has passed (0: never)
    deterministic: bool = True  # deterministic kernels: a resumed run matches one left alone

    def __post_init__(self) -> None:
        check_types(self, "train")
        check_range("train.epochs", self.epochs, 1, MAX_EPOCHS)
        check_range("train.batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_range("train.eval_batch_size", self.eval_batch_size, 1, MAX_BATCH_SIZE)
        check_value(0 < self.tta_share <= 1, "train.tta_share", self.tta_share, "a share in (0, 1]")
        check_range("train.seed", self.seed, 0, MAX_SEED)
        check_range("train.max_steps", self.max_steps, 0)
        check_range("train.min_steps", self.min_steps, 0)
        check_range("train.patience", self.patience, 0, MAX_EPOCHS)
        if self.patience:  # it counts epochs of validation scores
            expected = "true with train.patience"
            check_value(self.eval_every_epoch, "train.eval_every_epoch", False, expected)
        check_range("train.log_every", self.log_every, 0)
        check_range("train.checkpoint_every", self.checkpoint_every, 0)
        check_range("train.checkpoint_minutes", self.checkpoint_minutes, 0)
        if self.threshold != "auto":
            check_value(
                0 < self.threshold < 1, "train.threshold", self.threshold, "auto or 0 < P < 1"
            )


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


@dataclass(frozen=True)
class Flag:
    """A setting that ``blitz train`` takes as an option, as declared by ``option``."""

    key: str  # data.image_size
    flag: str  # --image-size
    hint: Any  # the setting's annotation: what the option takes
    help: str
    metavar: str
    const: Any  # the value of the flag given alone (--pretrained), or None

    @property
    def keyword(self) -> str:
        """Its name as a keyword of ``blitz.train`` (and argparse's): ``image_size``."""
        return self.flag[2:].replace("-", "_")


def _flags() -> dict[str, Flag]:
    return {
        f"{name}.{f.name}": Flag(
            f"{name}.{f.name}",
            f.metadata["flag"],
            field_hints(cls)[f.name],
            f.metadata["help"],
            f.metadata["metavar"],
            f.metadata["const"],
        )  # fmt: skip
        for name, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if "flag" in f.metadata
    }


TRAIN_FLAGS = _flags()  # setting key -> its option, in the order the sections declare them
FLAGS.update({key: flag.flag for key, flag in TRAIN_FLAGS.items()})  # errors name both


@dataclass(frozen=True)
class Config:
    """A whole run's settings; saved with every run and checkpoint."""

    preset: str = "seed"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_types(self)
        # a settings file's preset names the run's default folder: it must not steer it
        check_value(is_plain_name(self.preset), "preset", self.preset, PLAIN_NAME)
        if self.model.pretrained and self.train.init:  # the second would overwrite the first
            raise BlitzError(
                "--pretrained and --init both give the starting weights: pass one of them"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and checkpoint-safe)."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            out["data"][key] = list(out["data"][key])
        return out


def parse_config(raw: dict[str, Any], preset: str = "custom") -> Config:
    """A Config from nested plain data, naming any unknown setting; checked as far as settings
    can be on their own (``blitz.models.configs.config_from_dict`` checks the model too)."""
    raw = dict(raw)
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.pop(name, {})
        check_value(isinstance(values, dict), name, values, f"a table of {name} settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BlitzError(
                f"unknown setting {name}.{unknown[0]} in preset {preset!r}"
                f"{did_you_mean(f'{name}.{unknown[0]}', [f'{name}.{k}' for k in known])}: "
                f"known {name} settings are " + ", ".join(sorted(known))
            )
        sections[name] = cls(**values)
    unknown = sorted(set(raw) - {"preset", "description"})
    if unknown:
        raise BlitzError(f"unknown section {unknown[0]!r} in preset {preset!r}")
    return Config(
        preset=raw.get("preset", preset), description=raw.get("description", ""), **sections
    )
