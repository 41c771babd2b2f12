"""Data sources, decoded once into uint8 tensors (cached on disk) when they fit the memory
budget, else streamed from disk (blitz.stream); splits hand out batches either way."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from blitz import shapes
from blitz.config import DataConfig
from blitz.errors import BlitzError
from blitz.folders import (
    CIFAR_FILES,
    Layout,
    check_path,
    extract,
    find_layout,
    iter_files,
    list_files,
    members,
    other_files_note,
    read_files,
)
from blitz.images import BadImage, decode_image
from blitz.locks import locked
from blitz.stream import Batch, StreamSplit, format_size, memory_budget, worker_count

CACHE_FORMAT = 2  # bump when decoding or its layout changes, so old caches are rebuilt
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
DOWNLOAD_TIMEOUT = 15  # seconds without an answer before a download gives up
Log = Callable[[str], None]


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64, held in memory (on any device)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

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


AnySplit = Split | StreamSplit  # the images of a split, in memory or streamed from disk


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
        if isinstance(self.train, StreamSplit):
            return "streamed from disk"
        size = sum(s.images.numel() * s.images.element_size() for s in (self.train, self.test))
        return f"in memory, {format_size(size)}"


def cache_dir() -> Path:
    """Where downloads and decoded tensors live: ``$BLITZ_DATA`` or ``~/.cache/blitz``."""
    return Path(os.environ.get("BLITZ_DATA") or Path.home() / ".cache" / "blitz")


def load_data(cfg: DataConfig | str, log: Log = print) -> ImageData:
    """Resolve ``data.source`` (auto, cifar10, mnist, shapes[:N], PATH) to a dataset; a string
    is a source with the other data settings at their defaults."""
    cfg = DataConfig(source=cfg) if isinstance(cfg, str) else cfg
    source, image_size = cfg.source, cfg.image_size
    if source == "auto":
        return _load_auto(cfg, log)
    if source == "cifar10":
        return load_path(_download_cifar10(), cfg, log, name="cifar10")
    if source == "mnist":
        return _load_mnist(image_size, log)
    if source == "shapes" or source.startswith("shapes:"):
        return _load_shapes(source, image_size)
    return load_path(Path(source).expanduser(), cfg, log)


def _load_auto(cfg: DataConfig, log: Log) -> ImageData:
    try:
        return load_data(replace(cfg, source="cifar10"), log)
    except BlitzError as exc:
        log(
            f"CIFAR-10 is not in the cache and could not be downloaded ({exc}). "
            "Training on the generated 'shapes' dataset instead, so that this command works "
            "offline. To use CIFAR-10, put cifar-10-python.tar.gz in "
            f"{cache_dir() / 'cifar10'} or pass --data PATH (an image folder or archive)."
        )
        return load_data(replace(cfg, source="shapes"), log)


def _load_shapes(source: str, image_size: int) -> ImageData:
    count = source.partition(":")[2] or "10000"
    if not count.isdigit() or int(count) < 10:
        raise BlitzError(f"invalid data spec {source!r}: use shapes or shapes:N with N >= 10")
    train = Split(*shapes.make_shapes(int(count), seed=0))
    test = Split(*shapes.make_shapes(max(int(count) // 5, 10), seed=1))
    data = ImageData("shapes", list(shapes.CLASSES), train, test)
    return _resize_data(data, image_size)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_cifar10() -> Path:
    """The official CIFAR-10 archive in the cache, downloaded (and checked) on first use."""
    from torchvision.datasets.utils import check_integrity, download_url

    root = cache_dir() / "cifar10"
    archive = root / "cifar-10-python.tar.gz"
    if archive.exists():  # checked when it was downloaded; re-hashing 170 MB costs a second
        return archive
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            download_url(CIFAR10_URL, str(root), archive.name, CIFAR10_MD5)
    except (OSError, RuntimeError) as exc:
        raise BlitzError(f"downloading {CIFAR10_URL} failed: {exc}") from None
    if not check_integrity(str(archive), CIFAR10_MD5):
        raise BlitzError(f"downloaded {archive} is corrupt (MD5 mismatch); delete it and retry")
    return archive


def _load_mnist(image_size: int, log: Log) -> ImageData:
    from torchvision.datasets import MNIST

    root = cache_dir() / "mnist"
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            sets = [MNIST(str(root), train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as exc:
        raise BlitzError(f"MNIST could not be loaded or downloaded into {root}: {exc}") from None
    train, test = (Split(s.data.unsqueeze(1), s.targets.long()) for s in sets)
    data = ImageData("mnist", [str(d) for d in range(10)], train, test)
    return _resize_data(data, image_size, log)  # the seed's LeNet wants 32x32


def _resize_data(data: ImageData, size: int, log: Log | None = None) -> ImageData:
    from torchvision.transforms.v2.functional import resize

    if data.train.images.shape[-1] == size and data.train.images.shape[-2] == size:
        return data
    if log:
        log(f"resizing {data.name} images to {size}x{size}")
    for split in (data.train, data.test):
        split.images = resize(split.images, [size, size], antialias=True)
    return data


# --- paths: image folders, archives of them, and the official CIFAR-10 python archive ---


def load_path(path: Path, cfg: DataConfig, log: Log, name: str | None = None) -> ImageData:
    """Decode a folder or archive once into tensors (later calls read the cached tensors), or
    stream it from disk when its decoded images would not fit ``data.max_memory``."""
    check_path(path)
    name = name or path.name.split(".")[0]
    key = _fingerprint(path, f"{cfg.image_size}|{cfg.skip_bad_images}")
    cached = cache_dir() / "decoded" / f"{name}-{key}.pt"
    budget = memory_budget(cfg.max_memory)
    if cached.exists() and cached.stat().st_size <= budget:
        return _read_cache(cached, name)
    names, others = list_files(path)
    if any(Path(n).name == "data_batch_1" for n in names):  # CIFAR-10's python archive
        data = _cifar_from_pickles(read_files(path, set(names)), name)
        data = _resize_data(data, cfg.image_size, log)
    else:
        layout = find_layout(names, others, path)
        if note := other_files_note(others):
            log(note)
        decoded = layout.count * 3 * cfg.image_size**2
        if decoded > budget:
            log(
                f"{path}: {layout.count} images take {format_size(decoded)} decoded, more than "
                f"--max-memory ({format_size(budget)}): streaming them from disk"
            )
            return _stream(path, layout, cfg, log, name)
        log(f"decoding {path} (once; later runs read the cache)")
        data = _image_folder(path, layout, cfg, log, name)
    _write_cache(data, cached)
    return data


def _stream(path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> ImageData:
    """The splits as files on disk (an archive is extracted into the cache first)."""
    root, workers = path, worker_count(cfg.workers)
    where = {0: "this process", 1: "1 DataLoader worker"}.get(
        workers, f"{workers} DataLoader workers"
    )
    log(f"decoding in {where} (--workers) as batches are needed")
    if path.is_file():
        root = cache_dir() / "extracted" / f"{name}-{_fingerprint(path, '')}"
        with locked(root.with_name(root.name + ".lock")):  # a second run waits, then reads it
            if not root.is_dir():
                log(f"extracting {path} to {root} (once) to stream its images from disk")
                extract(path, root, {file for file, _ in layout.train + layout.test})
    splits, bad = [], []
    for pairs in (layout.train, layout.test):
        labels = torch.tensor([label for _, label in pairs], dtype=torch.long)
        split = StreamSplit(root, [f for f, _ in pairs], labels, cfg.image_size, workers)
        if cfg.skip_bad_images:
            split, skipped = split.without_bad()
            bad += skipped
        splits.append(split)
    _report_bad_images(bad, skip_bad=True, log=log)
    _check_not_empty(splits, layout.classes, path)
    return ImageData(name, layout.classes, *splits)


def _fingerprint(path: Path, options: str) -> str:
    """A key that changes whenever the source's files (names, sizes, times) or options change."""
    path = path.resolve()  # ./data and /abs/data are the same source
    digest = hashlib.sha1(f"{CACHE_FORMAT}|{options}|".encode() + os.fsencode(path))
    if path.is_dir():
        for m in members(path):
            digest.update(b"|" + os.fsencode(m.name) + f"|{m.kind}|{m.size}|{m.mtime_ns}".encode())
    else:
        stat = path.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _read_cache(file: Path, name: str) -> ImageData:
    raw = torch.load(file, weights_only=True)
    return ImageData(name, raw["classes"], Split(*raw["train"]), Split(*raw["test"]))


def _write_cache(data: ImageData, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    payload = {
        "classes": data.classes,
        "train": (data.train.images, data.train.labels),
        "test": (data.test.images, data.test.labels),
    }
    torch.save(payload, tmp)
    os.replace(tmp, file)  # readers never see a half-written cache


# --- the official CIFAR-10 python format ---

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled dicts of arrays and refuses anything that could run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(data: bytes) -> dict:
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def _cifar_from_pickles(files: dict[str, bytes], name: str) -> ImageData:
    by_base = {Path(k).name: v for k, v in files.items()}
    missing = sorted(CIFAR_FILES - set(by_base))
    if missing:
        raise BlitzError(f"CIFAR-10 archive is incomplete: missing {', '.join(missing)}")

    def split(bases: list[str]) -> Split:
        batches = [_unpickle(by_base[b]) for b in bases]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b["labels"] for b in batches])
        return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels).long())

    classes = list(_unpickle(by_base["batches.meta"])["label_names"])
    train = split([f"data_batch_{i}" for i in range(1, 6)])
    return ImageData(name, classes, train, split(["test_batch"]))


# --- image folders: [top/]train|test|val/<class>/<image> ---


def _image_folder(path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> ImageData:
    notes = {"resized": 0, "bad": []}
    splits = _decode_splits([layout.train, layout.test], path, cfg.image_size, notes)
    _report_bad_images(notes["bad"], cfg.skip_bad_images, log)
    if notes["resized"]:
        log(f"resized {notes['resized']} images to {cfg.image_size}x{cfg.image_size}")
    if cfg.skip_bad_images:  # skipping may have emptied a class
        splits = [_drop_failed(split) for split in splits]
        _check_not_empty(splits, layout.classes, path)
    return ImageData(name, layout.classes, *splits)


def _report_bad_images(bad: list[tuple[str, str]], skip_bad: bool, log: Log) -> None:
    if not bad:
        return
    listed = "; ".join(f"{name} ({reason})" for name, reason in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    if skip_bad:
        log(f"skipped {len(bad)} images that cannot be decoded: {listed}{more}")
        return
    raise BlitzError(
        f"cannot decode image{'s' if len(bad) > 1 else ''} {listed}{more}. "
        "Replace or delete them, or pass --skip-bad-images to train without them"
    )


def _drop_failed(split: Split) -> Split:
    keep = split.labels >= 0  # _decode_split marks an undecodable image with label -1
    return Split(split.images[keep], split.labels[keep])


def _check_not_empty(splits: list[Split], classes: list[str], path: Path) -> None:
    for split_name, split in zip(("train", "test"), splits):
        counts = torch.bincount(split.labels, minlength=len(classes)).tolist()
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise BlitzError(
                f"{path}: after skipping bad images, {split_name}/{empty[0]} has no images left"
            )


def _decode_splits(
    splits: list[list[tuple[str, int]]], path: Path, size: int, notes: dict
) -> list[Split]:
    """Decode each split's (file, label) pairs in one pass over the folder or archive; each file
    is decoded as it is read, so the files' bytes are never all in memory at once."""
    images = [np.zeros((len(pairs), size, size, 3), dtype=np.uint8) for pairs in splits]
    labels = [torch.tensor([label for _, label in pairs], dtype=torch.long) for pairs in splits]
    where = {
        file: (s, row) for s, pairs in enumerate(splits) for row, (file, _) in enumerate(pairs)
    }
    resized, bad = [0], {}
    for file, data in iter_files(path, set(where)):
        s, row = where.pop(file)
        try:
            if isinstance(data, BadImage):
                raise data
            images[s][row] = decode_image(data, file, size, resized)
        except BadImage as exc:
            bad[s, row] = (file, exc.reason)
    for file, (s, row) in where.items():  # gone since the listing
        bad[s, row] = (file, "disappeared while it was being read")
    for s, row in bad:
        labels[s][row] = -1
    notes["bad"] += [bad[key] for key in sorted(bad)]  # in split and row order
    notes["resized"] += resized[0]
    return [
        Split(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y)
        for x, y in zip(images, labels)
    ]


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std`` per channel (the seed's Normalize)."""
    channels = images.shape[1]
    mean_t = _per_channel(mean, channels, images.device)
    std_t = _per_channel(std, channels, images.device)
    return (images.float() / 255 - mean_t) / std_t


def _per_channel(values: tuple[float, ...], channels: int, device: torch.device) -> torch.Tensor:
    if len(values) != channels:
        if len(set(values)) != 1:
            raise BlitzError(
                f"normalisation {values} has {len(values)} values for {channels}-channel images"
            )
        values = values[:1] * channels
    return torch.tensor(values, device=device).view(1, channels, 1, 1)
