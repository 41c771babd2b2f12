"""Data sources decoded once into uint8 tensors (cached on disk), and batches sliced from them."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import socket
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blitz import shapes
from blitz.errors import BlitzError
from blitz.images import IMAGE_EXTENSIONS, BadImage, decode_image

CACHE_FORMAT = 1  # bump when the decoded layout changes, so old caches are rebuilt
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
DOWNLOAD_TIMEOUT = 15  # seconds without an answer before a download gives up
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
SPLITS = {"train": "train", "test": "test", "val": "test"}
Log = Callable[[str], None]


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    """A decoded dataset: class names and the train and test splits."""

    name: str
    classes: list[str]
    train: Split
    test: Split

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


def cache_dir() -> Path:
    """Where downloads and decoded tensors live: ``$BLITZ_DATA`` or ``~/.cache/blitz``."""
    return Path(os.environ.get("BLITZ_DATA") or Path.home() / ".cache" / "blitz")


def load_data(
    source: str, image_size: int = 32, log: Log = print, skip_bad: bool = False
) -> ImageData:
    """Resolve a ``--data`` spec (auto, cifar10, mnist, shapes[:N], PATH) to decoded tensors.

    ``skip_bad``: leave out (and count) images that cannot be decoded instead of stopping.
    """
    if source == "auto":
        return _load_auto(image_size, log)
    if source == "cifar10":
        return load_path(_download_cifar10(), image_size, log, name="cifar10")
    if source == "mnist":
        return _load_mnist(image_size, log)
    if source == "shapes" or source.startswith("shapes:"):
        return _load_shapes(source, image_size)
    return load_path(Path(source).expanduser(), image_size, log, skip_bad=skip_bad)


def _load_auto(image_size: int, log: Log) -> ImageData:
    try:
        return load_data("cifar10", image_size, log)
    except BlitzError as exc:
        log(
            f"CIFAR-10 is not in the cache and could not be downloaded ({exc}). "
            "Training on the generated 'shapes' dataset instead, so that this command works "
            "offline. To use CIFAR-10, put cifar-10-python.tar.gz in "
            f"{cache_dir() / 'cifar10'} or pass --data PATH (an image folder or archive)."
        )
        return load_data("shapes", image_size, log)


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


def load_path(
    path: Path, image_size: int, log: Log, name: str | None = None, skip_bad: bool = False
) -> ImageData:
    """Decode a folder or archive once; later calls read the cached tensors."""
    if not path.exists():
        raise BlitzError(
            f"data path {str(path)!r} does not exist: pass an image folder with train/ and test/, "
            "an archive of one (.tar, .tar.gz, .tgz, .zip), or one of auto, cifar10, mnist, shapes"
        )
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BlitzError(
            f"{path} is not a folder or an archive: expected one of " + ", ".join(ARCHIVE_SUFFIXES)
        )
    name = name or path.name.split(".")[0]
    key = _fingerprint(path, f"{image_size}|{skip_bad}")
    cached = cache_dir() / "decoded" / f"{name}-{key}.pt"
    if cached.exists():
        return _read_cache(cached, name)
    data = _decode_path(path, image_size, log, name, skip_bad)
    _write_cache(data, cached)
    return data


def _fingerprint(path: Path, options: str) -> str:
    """A key that changes whenever the source's files (names, sizes, times) or options change."""
    path = path.resolve()  # ./data and /abs/data are the same source
    digest = hashlib.sha1(f"{CACHE_FORMAT}|{options}|{path}".encode())
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(f"|{file.relative_to(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
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


def _decode_path(path: Path, image_size: int, log: Log, name: str, skip_bad: bool) -> ImageData:
    others: list[str] = []
    files = dict(_read_files(path, _is_wanted, others))
    if any(Path(f).name == "data_batch_1" for f in files):
        data = _cifar_from_pickles(files, name)
        return _resize_data(data, image_size, log)
    log(f"decoding {path} (once; later runs read the cache)")
    _note_other_files(others, log)
    return _image_folder(files, others, path, image_size, skip_bad, log, name)


def _note_other_files(others: list[str], log: Log) -> None:
    """Say once how many files were not images (notes, thumbnails' databases, ...)."""
    skipped = [n for n in others if not n.endswith("/")]
    if skipped:
        log(f"ignored {len(skipped)} files that are not images (e.g. {skipped[0]})")


def _is_wanted(name: str) -> bool:
    base = Path(name).name
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS or base in _CIFAR_FILES


def _check_member(name: str, archive: Path) -> str:
    if name.startswith("/") or ".." in Path(name).parts:
        raise BlitzError(f"refusing archive {archive}: member {name!r} points outside the archive")
    return name


def _read_files(
    path: Path, wanted: Callable[[str], bool], others: list[str]
) -> Iterator[tuple[str, bytes]]:
    """(relative POSIX name, bytes) for each wanted file of a folder or archive, in one pass.

    The names of the other files, and of folders (ending in "/"), are appended to ``others``.
    Nothing is extracted to disk: archive members are read into memory only.
    """
    for name, is_dir, read in _members(path):
        if not is_dir and wanted(name):
            yield name, read()
        else:
            others.append(name.rstrip("/") + "/" if is_dir else name)


def _members(path: Path) -> Iterator[tuple[str, bool, Callable[[], bytes]]]:
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            yield file.relative_to(path).as_posix(), file.is_dir(), file.read_bytes
    elif path.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _check_member(info.filename, path)
                    yield name, info.is_dir(), functools.partial(zf.read, info)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise BlitzError(f"cannot read archive {path}: {exc}") from None
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() or member.isdir():  # links and devices are never followed
                        name = _check_member(member.name, path)
                        yield name, member.isdir(), functools.partial(_read_member, tar, member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BlitzError(f"cannot read archive {path}: {exc}") from None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return tar.extractfile(member).read()


# --- the official CIFAR-10 python format ---

_CIFAR_FILES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
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
    missing = sorted(_CIFAR_FILES - set(by_base))
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


def _split_and_class(name: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) >= 4 and parts[0] not in SPLITS and parts[1] in SPLITS:
        parts = parts[1:]  # one top-level folder around the tree
    if len(parts) == 3 and parts[0] in SPLITS:
        return SPLITS[parts[0]], parts[1]
    return None


def _image_folder(
    files: dict[str, bytes],
    others: list[str],
    path: Path,
    image_size: int,
    skip_bad: bool,
    log: Log,
    name: str,
) -> ImageData:
    groups = _group_by_split_and_class(files, others, path)
    classes = sorted(groups["train"])
    notes = {"resized": 0, "bad": []}
    splits = [
        _decode_split(groups[s], classes, files, image_size, notes) for s in ("train", "test")
    ]
    _report_bad_images(notes["bad"], skip_bad, log)
    if notes["resized"]:
        log(f"resized {notes['resized']} images to {image_size}x{image_size}")
    if skip_bad:  # skipping may have emptied a class
        splits = [_drop_failed(split) for split in splits]
        _check_not_empty(splits, classes, path)
    return ImageData(name, classes, *splits)


def _group_by_split_and_class(
    files: dict[str, bytes], others: list[str], path: Path
) -> dict[str, dict[str, list[str]]]:
    groups: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for file in sorted(files):
        where = _split_and_class(file)
        if where:
            groups[where[0]].setdefault(where[1], []).append(file)
    if not groups["train"]:
        raise BlitzError(
            f"{path} has no train/<class>/<image> files: an image-folder dataset needs "
            "train/ and test/ (or val/) folders, each with one folder of images per class"
        )
    if not groups["test"]:
        raise BlitzError(f"{path} has train/ but no test/ or val/ folder of images per class")
    for other in others:  # a folder, or a file in a class folder, where no image was found
        where = _split_and_class(other)
        if where and where[1] not in groups[where[0]]:
            folder = other.rstrip("/") if other.endswith("/") else other.rsplit("/", 1)[0]
            raise BlitzError(
                f"class folder {folder} in {path} has no images: add images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder"
            )
    classes = sorted(groups["train"])
    if sorted(groups["test"]) != classes:
        extra = sorted(set(groups["test"]) ^ set(classes))
        raise BlitzError(
            f"{path}: train/ and test/ hold different classes (only in one: {', '.join(extra)})"
        )
    return groups


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


def _decode_split(
    group: dict[str, list[str]],
    classes: list[str],
    files: dict[str, bytes],
    size: int,
    notes: dict,
) -> Split:
    names = [(f, i) for i, c in enumerate(classes) for f in group[c]]
    images = np.zeros((len(names), size, size, 3), dtype=np.uint8)
    labels = torch.tensor([label for _, label in names], dtype=torch.long)
    resized = [0]
    for row, (file, _) in enumerate(names):
        try:
            images[row] = decode_image(files[file], file, size, resized)
        except BadImage as exc:
            notes["bad"].append((file, exc.reason))
            labels[row] = -1
    notes["resized"] += resized[0]
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)


# --- batches ---


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches sliced from the split's tensors; shuffled when a generator is given."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.labels.device)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        yield split.images[rows], split.labels[rows]


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
