"""``PATH``: an image folder (``train/<class>/*`` and ``test/`` or ``val/``), an archive of one,
or the official CIFAR-10 python archive. Decoded once into uint8 tensors (later runs read the
decode cache), or streamed from disk when the decoded images would not fit ``data.max_memory``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blitz.cache import (
    cache_dir,
    cache_folder,
    decoded_file,
    fingerprint,
    read_decoded,
    unwritable_error,
    write_decoded,
)
from blitz.cifar_format import is_cifar_python, read_cifar_python
from blitz.config import DataConfig
from blitz.data import AnySplit, ImageData, Log, Split, resize_splits
from blitz.errors import BlitzError
from blitz.folders import (
    Layout,
    check_path,
    extract,
    find_layout,
    iter_files,
    list_files,
    other_files_note,
    read_files,
)
from blitz.images import BadImage, decode_image
from blitz.locks import locked
from blitz.memory import format_size, memory_budget
from blitz.sources import PATH, list_sources, register_source
from blitz.stream import StreamSplit, worker_count


@register_source(PATH)
def load_spec_path(spec: str, cfg: DataConfig, log: Log) -> ImageData:
    """The folder or archive at ``spec`` (``~`` expanded)."""
    return load_path(Path(spec).expanduser(), cfg, log)


def load_path(path: Path, cfg: DataConfig, log: Log, name: str | None = None) -> ImageData:
    """Decode a folder or archive once into tensors (later calls read the cached tensors), or
    stream it from disk when its decoded images would not fit ``data.max_memory``."""
    check_path(path, list_sources())
    name = name or path.name.split(".")[0]
    cached = decoded_file(name, fingerprint(path, f"{cfg.image_size}|{cfg.skip_bad_images}"))
    budget = memory_budget(cfg.max_memory)
    fits = cached.exists() and cached.stat().st_size <= budget
    if fits and (data := read_decoded(cached, name, log)):
        return data
    names, others = list_files(path)
    if is_cifar_python(names):
        data = read_cifar_python(read_files(path, set(names)), name)
        data = resize_splits(data, cfg.image_size, log)
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
    write_decoded(data, cached, log)
    return data


def _stream(path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> ImageData:
    """The splits as files on disk (an archive is extracted into the cache first)."""
    workers = worker_count(cfg.workers)
    where = {0: "this process", 1: "1 DataLoader worker"}.get(
        workers, f"{workers} DataLoader workers"
    )
    log(f"decoding in {where} (--workers) as batches are needed")
    root = _extracted(path, layout, cfg, log, name) if path.is_file() else path
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


def _extracted(archive: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> Path:
    """The archive's images extracted into the cache (once: gzip cannot be read at random)."""
    root = cache_dir() / "extracted" / f"{name}-{fingerprint(archive, '')}"
    if root.is_dir():  # already there: a read-only cache still serves it
        return root
    cache_folder("extracted")  # made, and checked writable
    try:
        with locked(root.with_name(root.name + ".lock")):  # a second run waits, then reads it
            if not root.is_dir():
                log(f"extracting {archive} to {root} (once) to stream its images from disk")
                files = {file for file, _ in layout.train + layout.test}
                extract(archive, root, files, cfg.skip_bad_images)
    except OSError as exc:  # its lock or folder could not be made (a full disk, read-only)
        raise unwritable_error(root.parent, exc) from None
    return root


def _image_folder(path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> ImageData:
    decoded = _decode_splits([layout.train, layout.test], path, cfg.image_size)
    _report_bad_images(decoded.bad, cfg.skip_bad_images, log)
    if decoded.resized:
        log(f"resized {decoded.resized} images to {cfg.image_size}x{cfg.image_size}")
    splits = decoded.splits
    if cfg.skip_bad_images:  # skipping may have emptied a class
        splits = [Split(s.images[~bad], s.labels[~bad]) for s, bad in zip(splits, decoded.bad_rows)]
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


def _check_not_empty(splits: list[AnySplit], classes: list[str], path: Path) -> None:
    for split_name, split in zip(("train", "test"), splits):
        counts = torch.bincount(split.labels, minlength=len(classes)).tolist()
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise BlitzError(
                f"{path}: after skipping bad images, {split_name}/{empty[0]} has no images left"
            )


@dataclass
class _Decoded:
    """An image folder's splits decoded, and what went wrong on the way."""

    splits: list[Split]  # an image that could not be decoded is left black
    bad_rows: list[torch.Tensor]  # per split, (N,) bool: True where the image is bad
    bad: list[tuple[str, str]]  # (file, reason) of each bad image, in split and row order
    resized: int  # how many images were not already size x size


def _decode_splits(splits: list[list[tuple[str, int]]], path: Path, size: int) -> _Decoded:
    """Decode each split's (file, label) pairs in one pass over the folder or archive; each file
    is decoded as it is read, so the files' bytes are never all in memory at once."""
    images = [np.zeros((len(pairs), size, size, 3), dtype=np.uint8) for pairs in splits]
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
    bad_rows = [torch.zeros(len(pairs), dtype=torch.bool) for pairs in splits]
    for s, row in bad:
        bad_rows[s][row] = True
    decoded = [
        Split(
            torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
            torch.tensor([label for _, label in pairs], dtype=torch.long),
        )
        for x, pairs in zip(images, splits)
    ]
    return _Decoded(decoded, bad_rows, [bad[key] for key in sorted(bad)], resized[0])
