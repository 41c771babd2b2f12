"""The data section of the settings (``DataConfig``): where the images come from, their size
and normalisation, the split, augmentation and how a table lists labels. ``config.settings``
puts it in the tree with the others."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from blitz.config.checks import (
    MAX_IMAGE_SIZE,
    MAX_SEED,
    check_fraction,
    check_range,
    check_types,
    check_value,
    option,
    option_name,
    parse_size,
)
from blitz.config.types import concrete
from blitz.errors import BlitzError

Flip = Literal["none", "random", "alternate"]
AutoAugment = Literal["none", "trivial", "randaugment"]
Task = Literal["auto", "single-label", "multi-label"]
FLIPS = get_args(Flip)
TASKS = get_args(Task)
# how a table's label cell lists several labels: a space, as fastai's label_delim and Kaggle's
# multi-label tables (Planet, Human Protein Atlas) write them
LABEL_DELIMITER = " "
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

    def resolved(self, model: str, found: dict[str, Any] | None, pretrained: str) -> DataConfig:
        """A copy whose settings left "auto" (image size, mean, std) are ``found``, the
        pretrained ones of the timm model ``model``; itself for blitz's own models (None).
        ``chosen`` says what was taken from the timm model, and whether its weights are."""
        if not found or not self.auto:
            return self
        defaults = {"std": found["mean"], **found}
        copy = dataclasses.replace(self, **{key: defaults[key] for key in self.auto})
        chosen = ", ".join(f"{key} {_shown(getattr(copy, key))}" for key in self.auto)
        why = (
            "pretrained weights expect them"
            if pretrained
            else "pretrained weights would expect them (its weights are random here: "
            "--pretrained loads them; --image-size for another size)"
        )
        object.__setattr__(copy, "chosen", f"{chosen}: {model}'s {why}")
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
