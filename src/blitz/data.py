"""A dataset: class names and a train and a test split. A split's images are held in memory as
uint8 tensors (``Split``) or streamed from disk (``blitz.stream.StreamSplit``); callers see
either one as an ``AnySplit``. The sources that make datasets are in ``blitz.sources``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from blitz.memory import format_size

Log = Callable[[str], None]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, uint8 images, labels


class AnySplit(Protocol):
    """What every split offers, whether its images are in memory or on disk."""

    labels: torch.Tensor  # (N,) int64
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


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64, held in memory (on any device)."""

    images: torch.Tensor
    labels: torch.Tensor

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


@dataclass
class ImageData:
    """A dataset: class names and the train and test splits, in memory or streamed from disk."""

    name: str
    classes: list[str]
    train: AnySplit
    test: AnySplit

    @property
    def channels(self) -> int:
        return self.train.channels

    def storage(self) -> str:
        """Where the images live while training: "in memory, 184 MB" or "streamed from disk"."""
        held = self.train.nbytes + self.test.nbytes
        return f"{self.train.storage}, {format_size(held)}" if held else self.train.storage


def resize_splits(data: ImageData, size: int, log: Log | None = None) -> ImageData:
    """A dataset held in memory (two ``Split``), its images resized to ``size`` x ``size``."""
    from torchvision.transforms.v2.functional import resize

    if data.train.images.shape[-1] == size and data.train.images.shape[-2] == size:
        return data
    if log:
        log(f"resizing {data.name} images to {size}x{size}")
    for split in (data.train, data.test):
        split.images = resize(split.images, [size, size], antialias=True)
    return data
