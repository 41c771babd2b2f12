"""Data bigger than memory: image files decoded batch by batch in DataLoader worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from blitz.data.dataset import Batch
from blitz.data.images import BadImage, decode_image
from blitz.errors import BlitzError

MAX_WORKERS = 8


def worker_count(workers: int | str) -> int:
    """``data.workers``: auto = one per CPU core this process may use (shared among the
    processes of a torchrun job on this machine), at most 8."""
    if workers != "auto":
        return int(workers)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, (cores or 1) // local))


class _Files(Dataset):
    """Image files by row: (uint8 (3, size, size), "" or what is wrong with the file)."""

    def __init__(self, root: Path, names: Sequence[str], size: int):
        self.root, self.names, self.size = root, names, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, str]:
        name = self.names[row]
        try:
            image = decode_image((self.root / name).read_bytes(), name, self.size)
            return torch.from_numpy(image).permute(2, 0, 1), ""
        except BadImage as exc:
            reason = exc.reason
        except OSError as exc:  # deleted or unreadable since the listing
            reason = str(exc)
        # the batch still needs an image here; the loop stops, or the file was checked out
        return torch.zeros(3, self.size, self.size, dtype=torch.uint8), reason


@dataclass
class StreamSplit:
    """A split of image files under ``root``, read and decoded per batch (an ``AnySplit``, as
    ``data.Split`` is)."""

    root: Path
    names: list[str]  # relative to root, one per row
    labels: torch.Tensor  # (N,) int64
    size: int  # images are resized to size x size
    workers: int

    channels = 3  # image folders decode to RGB
    storage = "streamed from disk"
    nbytes = 0  # only the batches being loaded are in memory

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> StreamSplit:
        """Streamed images go to the device batch by batch: the split itself stays on disk."""
        return self

    def load(self, batches: Sequence[torch.Tensor], device: torch.device) -> Iterator[Batch]:
        """(rows, uint8 images, labels) on ``device`` for each batch of row indices."""
        for rows, images, reasons in self._decoded(batches, device):
            bad = [(self.names[row], why) for row, why in zip(rows.tolist(), reasons) if why]
            if bad:
                raise BlitzError(
                    f"cannot decode image {bad[0][0]} ({bad[0][1]}). Replace or delete it, or "
                    "pass --skip-bad-images (streamed data is then checked once before training)"
                )
            yield (
                rows.to(device),
                images.to(device, non_blocking=True),
                self.labels[rows].to(device),
            )

    def images_at(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, size, size) of the given rows, on the CPU."""
        cpu = torch.device("cpu")
        return torch.cat([images for _, images, _ in self.load(rows.split(256), cpu)])

    def row_ids(self, prefix: str) -> list[str]:
        return self.names

    def subset(self, rows: torch.Tensor, role: str) -> StreamSplit:
        return replace(
            self, names=[self.names[row] for row in rows.tolist()], labels=self.labels[rows]
        )

    def without_bad(self) -> tuple[StreamSplit, list[tuple[str, str]]]:
        """This split less the files that cannot be decoded (each read once, in the workers),
        and (name, reason) for each of those."""
        batches = torch.arange(len(self)).split(256)
        decoded = self._decoded(batches, torch.device("cpu"))
        keep = torch.ones(len(self), dtype=torch.bool)
        bad = []
        # disable=None: a bar on a terminal only
        for rows, _, reasons in tqdm(decoded, "checking images", len(batches), disable=None):
            for row, why in zip(rows.tolist(), reasons):
                if why:
                    keep[row] = False
                    bad.append((self.names[row], why))
        names = [name for name, kept in zip(self.names, keep.tolist()) if kept]
        return replace(self, names=names, labels=self.labels[keep]), bad

    def _decoded(
        self, batches: Iterable[torch.Tensor], device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        batches = list(batches)
        loader = DataLoader(
            _Files(self.root, self.names, self.size),
            batch_sampler=[rows.tolist() for rows in batches],
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
        )
        for rows, (images, bad) in zip(batches, _guarded(loader)):
            yield rows, images, bad


def _guarded(loader: DataLoader) -> Iterator:
    """The loader's batches; a worker that died or raised becomes one clear error."""
    try:
        yield from loader
    except Exception as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise BlitzError(
            f"a data-loading worker process failed ({str(exc).strip()}). A worker killed by a "
            "signal usually means the machine ran out of memory: use fewer --workers or a "
            "smaller --batch-size"
        ) from None
