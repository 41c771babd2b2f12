"""A dataset: class names and its sets (train, validation, test). A set's images are held in
memory as uint8 tensors (``Split``) or streamed from disk (``blitz.data.stream.StreamSplit``);
callers see either one as an ``AnySplit``. The sources that make datasets are in
``blitz.data.sources``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from tqdm import tqdm

from blitz.config.checks import format_size
from blitz.errors import BlitzError

Log = Callable[[str], None]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, uint8 images, labels
T = TypeVar("T")
# The test's confusion matrix is K x K counts (800 MB at this many): more classes are refused
# before any image is decoded, rather than killed for memory after training
MAX_CLASSES = 10_000


class AnySplit(Protocol):
    """What every split offers, whether its images are in memory or on disk."""

    labels: torch.Tensor  # (N,) int64, or (N, K) float32 multi-hot (multi-label)
    storage: str  # where its images live while training: "in memory", "streamed from disk"

    @property
    def channels(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Bytes its decoded images hold in memory (0: they are read from disk per batch)."""

    def __len__(self) -> int: ...

    def to(self, device: torch.device) -> AnySplit: ...

    def load(self, batches: Sequence[torch.Tensor], device: torch.device) -> Iterator[Batch]:
        """(rows, uint8 images, labels) on ``device`` for each batch of row indices."""

    def images_at(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) of the given rows."""

    def row_ids(self, prefix: str) -> list[str]:
        """A name for each row, unique within the dataset: its file (``train/cat/1.jpg``), or
        ``prefix/ROW`` where the rows have no files."""

    def subset(self, rows: torch.Tensor, role: str) -> AnySplit:
        """The split of the given rows only, in that order; each row keeps its id in this
        split (``row_ids(role)``), so a set drawn from it is recorded by its images' ids."""


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64, held in memory (on any device), and
    the file each row came from where there is one."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str] | None = None

    storage = "in memory"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def load(self, batches: Sequence[torch.Tensor], device: torch.device) -> Iterator[Batch]:
        """(rows, uint8 images, labels) on ``device`` for each batch of row indices."""
        if not batches:
            return
        # the rows move in one copy: one per batch would make a GPU wait for each
        moved = torch.cat(list(batches)).to(self.labels.device).split([len(b) for b in batches])
        for rows in moved:
            yield rows.to(device), self.images[rows].to(device), self.labels[rows].to(device)

    def images_at(self, rows: torch.Tensor) -> torch.Tensor:
        return self.images[rows.to(self.images.device)]

    def row_ids(self, prefix: str) -> list[str]:
        return self.files or [f"{prefix}/{row}" for row in range(len(self))]

    def subset(self, rows: torch.Tensor, role: str) -> Split:
        ids = self.row_ids(role)
        return Split(self.images[rows], self.labels[rows], [ids[row] for row in rows.tolist()])


@dataclass
class ImageData:
    """A dataset: class names and its sets, in memory or streamed from disk. *train* fits,
    *val* (validation) chooses (the best epoch, when to stop), *test* is held out and scored
    once at the end. A source gives the sets it has; ``blitz.data.roles`` splits off the missing
    ones, and where there is no test set the final figure is on validation (``test_is_val``)."""

    name: str
    classes: list[str]
    train: AnySplit
    test: AnySplit | None = None  # None only before blitz.data.roles (a folder without test/)
    val: AnySplit | None = None
    test_is_val: bool = False
    split: dict[str, float] | None = None  # what blitz.data.roles split off the training images
    excluded: list[str] = field(default_factory=list)  # ids left out by --exclude

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def multi_label(self) -> bool:
        """Whether an image has a set of labels (multi-hot rows) rather than one class."""
        return is_multi_hot(self.train.labels)

    def test_set(self) -> AnySplit:
        """``test``, which every dataset has once ``blitz.data.roles`` has made its sets."""
        if self.test is None:
            raise AssertionError(f"{self.name} has no test set: blitz.data.roles never saw it")
        return self.test

    def sets(self) -> dict[str, AnySplit]:
        """The distinct sets by role ("train", "val", "test"), in that order."""
        found = {"train": self.train, "val": self.val, "test": self.test}
        if self.test_is_val:
            del found["test"]
        return {role: split for role, split in found.items() if split is not None}

    def storage(self) -> str:
        """Where the images live while training: "in memory, 184 MB" or "streamed from disk"."""
        held = sum(split.nbytes for split in self.sets().values())
        return f"{self.train.storage}, {format_size(held)}" if held else self.train.storage


def from_sets(name: str, classes: list[str], sets: Mapping[str, AnySplit]) -> ImageData:
    """A dataset of its sets by role: "train", and "val" and "test" where it has them."""
    return ImageData(name, classes, sets["train"], sets.get("test"), sets.get("val"))


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Whether ``labels`` are multi-hot rows (N, K), a multi-label set's, not classes (N,)."""
    return labels.ndim == 2


def label_tensor(labels: Sequence[int | tuple[int, ...]], classes: int) -> torch.Tensor:
    """A set's labels as a tensor: class numbers (N,) int64, or, where each is a tuple of
    class numbers (multi-label; empty: none), multi-hot rows (N, classes) float32."""
    if not labels or not isinstance(labels[0], tuple):
        return torch.tensor(labels, dtype=torch.long)
    hot = torch.zeros(len(labels), classes)
    for row, present in enumerate(labels):
        hot[row, list(present)] = 1.0  # type: ignore[arg-type]
    return hot


def label_sets(labels: torch.Tensor, classes: list[str]) -> list[list[str]]:
    """Each row's classes: its one class, or a multi-hot row's (in the classes' order)."""
    if not is_multi_hot(labels):
        return [[classes[i]] for i in labels.tolist()]
    return [[c for c, on in zip(classes, row) if on] for row in labels.cpu().bool().tolist()]


def label_names(labels: torch.Tensor, classes: list[str]) -> list[str]:
    """Each row's label as a run records it: its class, or a multi-hot row's classes as a JSON
    list (a class name may hold any delimiter)."""
    if not is_multi_hot(labels):
        return [classes[i] for i in labels.tolist()]
    return [json.dumps(names) for names in label_sets(labels, classes)]


def label_text(labels: torch.Tensor, classes: list[str]) -> list[str]:
    """Each row's label as people read it: ``cat``, ``cat, dog``, or ``(none)``."""
    return [", ".join(names) or "(none)" for names in label_sets(labels, classes)]


def in_memory(split: AnySplit) -> Split:
    """``split`` as the ``Split`` it is where only sets held in memory can be (a source's
    decoded sets): a set streamed from disk here is a bug of blitz."""
    if not isinstance(split, Split):
        raise TypeError(f"expected a set held in memory, not a {type(split).__name__}")
    return split


def silent(message: str) -> None:
    """A log that prints nothing (processes other than the first, ``--quiet``)."""


def progress_bar(items: Iterable[T], what: str, log: Log, total: int | None = None) -> Iterable[T]:
    """``items`` with a tqdm bar (count, rate, and ETA where ``total`` is known) on a terminal,
    for the long passes over a dataset's files; none for a ``silent`` log (``--quiet``)."""
    # disable=None: a bar on a terminal only, not in a log file
    return tqdm(items, what, total, disable=True if log is silent else None, unit=" files")


def check_class_count(name: str, classes: list[str]) -> None:
    """A classifier needs at least two classes, and at most ``MAX_CLASSES`` (checked before
    any image is decoded)."""
    if len(classes) < 2:
        raise BlitzError(
            f"{name} has a single class ({', '.join(classes)}): a classifier needs at least "
            "two classes (one folder of images per class)"
        )
    if len(classes) > MAX_CLASSES:
        raise BlitzError(
            f"{name} has {len(classes):,} classes, more than blitz takes ({MAX_CLASSES:,}: its "
            f"confusion matrix alone would need {format_size(8 * len(classes) ** 2)}): merge "
            "classes, or train on a subset of them"
        )


def similar_classes_note(classes: list[str]) -> str | None:
    """A note naming classes whose names differ only in case, spacing, ``_``/``-`` or other
    punctuation (folders ``cat/`` and ``Cat/``): blitz keeps them apart, as written."""
    alike: dict[str, list[str]] = {}
    for name in classes:
        if folded := re.sub(r"[\W_]+", "", name).casefold():
            alike.setdefault(folded, []).append(name)
    groups = [" and ".join(map(repr, names)) for names in alike.values() if len(names) > 1]
    if not groups:
        return None
    more = f" (and {len(groups) - 3} more such groups)" if len(groups) > 3 else ""
    return (
        f"note: the classes {'; '.join(groups[:3])}{more} differ only in case, spacing, _/- or "
        "punctuation: they are separate classes (folders or labels as written); merge them "
        "if each is one class"
    )


def resize_splits(data: ImageData, size: int, log: Log | None = None) -> ImageData:
    """A dataset held in memory (``Split`` sets), its images resized to ``size`` x ``size``."""
    train = in_memory(data.train)
    if train.images.shape[-1] == size and train.images.shape[-2] == size:
        return data
    from torchvision.transforms.v2.functional import resize  # seconds: only when it is needed

    if log:
        log(f"resizing {data.name} images to {size}x{size}")
    for split in map(in_memory, data.sets().values()):
        split.images = resize(split.images, [size, size], antialias=True)
    return data
