"""``PATH``: an image folder (``train/<class>/*`` with ``val/`` and/or ``test/``, or flat:
``<class>/*``), an archive of one, the official CIFAR-10 python archive, or a table of image
files and labels (``.csv``, ``.tsv``: ``blitz.data.sources.table``). Decoded once into uint8 tensors
(later runs read the decode cache), or streamed from disk when the decoded images would not
fit ``data.max_memory``."""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blitz.config.checks import format_size
from blitz.config.data_settings import DataConfig
from blitz.config.types import concrete
from blitz.data.cache import (
    cache_dir,
    cache_folder,
    decoded_file,
    fingerprint,
    read_decoded,
    unwritable_error,
    write_decoded,
)
from blitz.data.cifar_format import is_cifar_python, read_cifar_python
from blitz.data.counts import label_counts
from blitz.data.dataset import (
    AnySplit,
    ImageData,
    Log,
    Split,
    from_sets,
    label_tensor,
    progress_bar,
    resize_splits,
)
from blitz.data.folders import (
    check_path,
    extract,
    iter_files,
    list_files,
    other_files_note,
    read_files,
)
from blitz.data.images import BadImage, decode_image
from blitz.data.layout import Layout, Pairs, find_layout
from blitz.data.memory import memory_budget
from blitz.data.sources import PATH, list_sources, register_source
from blitz.data.sources.table import TABLE_SUFFIXES, is_table, iter_listed, read_table
from blitz.data.stream import StreamSplit, worker_count
from blitz.errors import BlitzError
from blitz.utils.locks import locked
from blitz.utils.signals import unwind_on_sigterm


@register_source(PATH)
def load_spec_path(spec: str, cfg: DataConfig, log: Log) -> ImageData:
    """The folder, archive or table at ``spec`` (``~`` expanded)."""
    return load_path(Path(spec).expanduser(), cfg, log)


def load_path(path: Path, cfg: DataConfig, log: Log, name: str | None = None) -> ImageData:
    """Decode a folder, archive or table once into tensors (later calls read the cached
    tensors), or stream it from disk when its decoded images would not fit ``data.max_memory``."""
    check_path(path, list_sources(), tuple(TABLE_SUFFIXES))
    name = name or path.name.split(".")[0]
    if is_table(path):
        return _load_table(path, cfg, log, name)
    cached = decoded_file(name, fingerprint(path, _options(cfg)))
    if data := _read_cache(cached, cfg, name, log):
        return data
    names, others = list_files(path, log)
    if is_cifar_python(names):
        data = read_cifar_python(read_files(path, set(names)), name)
        data = resize_splits(data, concrete(cfg.image_size), log)
        write_decoded(data, cached, log)
        return data
    layout = find_layout(names, others, path)
    notes = [note for note in (other_files_note(others), layout.outside_note()) if note]
    for note in notes:
        log(note)
    return _load_layout(path, layout, cfg, log, name, cached, notes)


def list_layout(path: Path, log: Log) -> Layout | None:
    """The image files a folder, archive or table lists, by set and class, none of them read
    (``blitz doctor`` reads each one itself); None for the CIFAR-10 python archive, whose
    images are batches, not files."""
    check_path(path, list_sources(), tuple(TABLE_SUFFIXES))
    if is_table(path):
        return read_table(path).layout
    names, others = list_files(path, log)
    return None if is_cifar_python(names) else find_layout(names, others, path)


def _load_table(path: Path, cfg: DataConfig, log: Log, name: str) -> ImageData:
    """A table's images. The table is read first: the decode cache's key is what it lists, not
    everything its folder holds (which may be a home folder, or hold the cache itself)."""
    table = read_table(path, cfg.task, cfg.label_delimiter, log)
    cached = decoded_file(name, fingerprint(path, _options(cfg), table.stamp))
    if data := _read_cache(cached, cfg, name, log):
        return data
    return _load_layout(path, table.layout, cfg, log, name, cached, [])


def _options(cfg: DataConfig) -> str:
    """The settings the decoded tensors depend on (part of the decode cache's key). Not the
    task nor the label delimiter: a folder's labels are its folders whatever they say, and a
    table's stamp holds the labels they made of it (a run records ``--task auto`` as the task
    it found: with the task in the key, its eval decoded everything again)."""
    return f"{cfg.image_size}|{cfg.skip_bad_images}"


def _read_cache(cached: Path, cfg: DataConfig, name: str, log: Log) -> ImageData | None:
    """The decode cache's tensors, if they are there and fit ``data.max_memory``."""
    fits = cached.exists() and cached.stat().st_size <= memory_budget(cfg.max_memory)
    return read_decoded(cached, name, log) if fits else None


def _load_layout(
    path: Path,
    layout: Layout,
    cfg: DataConfig,
    log: Log,
    name: str,
    cached: Path,
    notes: list[str],
) -> ImageData:
    """The images a folder's, archive's or table's layout lists: decoded and saved to the
    decode cache ``cached`` with ``notes``, what was said of its files (and the images skipped)
    for later runs to say again; or streamed when decoded they would not fit
    ``data.max_memory``."""
    budget = memory_budget(cfg.max_memory)
    decoded = layout.count * 3 * concrete(cfg.image_size) ** 2
    if decoded > budget:
        log(
            f"{path}: {layout.count} images take {format_size(decoded)} decoded, more than "
            f"--max-memory ({format_size(budget)}): streaming them from disk"
        )
        return _stream(path, layout, cfg, log, name)
    log(f"decoding {path} (once; later runs read the cache)")
    data = _image_folder(path, layout, cfg, log, name, notes)
    write_decoded(data, cached, log, notes)
    return data


def read_images(path: Path, names: set[str]) -> Iterator[tuple[str, bytes | BadImage]]:
    """The named images' bytes: a table's where it lists them (relative to its folder), a
    folder's or archive's in one pass over it."""
    return iter_listed(path.parent, names) if is_table(path) else iter_files(path, names)


def _stream(path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str) -> ImageData:
    """The splits as files on disk (an archive is extracted into the cache first; a table's
    files are read where it lists them, relative to its folder)."""
    workers = worker_count(cfg.workers)
    where = {0: "this process", 1: "1 DataLoader worker"}.get(
        workers, f"{workers} DataLoader workers"
    )
    log(f"decoding in {where} (--workers) as batches are needed")
    if is_table(path):
        root = path.parent
    else:
        root = _extracted(path, layout, cfg, log, name) if path.is_file() else path
    sets, bad = {}, []
    for role, pairs in layout.sets.items():
        labels = label_tensor([label for _, label in pairs], len(layout.classes))
        split = StreamSplit(root, [f for f, _ in pairs], labels, concrete(cfg.image_size), workers)
        if cfg.skip_bad_images:
            split, skipped = split.without_bad()
            bad += skipped
        sets[role] = split
    if note := _report_bad_images(bad, skip_bad=True):
        log(note)
    _check_not_empty(sets, layout.classes, path)
    return from_sets(name, layout.classes, sets)


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
                extract(archive, root, layout.files, cfg.skip_bad_images, log)
    except OSError as exc:  # its lock or folder could not be made (a full disk, read-only)
        raise unwritable_error(root.parent, exc) from None
    return root


def _image_folder(
    path: Path, layout: Layout, cfg: DataConfig, log: Log, name: str, notes: list[str]
) -> ImageData:
    workers = worker_count(cfg.workers)
    try:
        size = concrete(cfg.image_size)
        listed = list(layout.sets.values())
        decoded = _decode_splits(listed, len(layout.classes), path, size, workers, log)
    except BrokenProcessPool:  # a decoder crashed (a native library, a hostile file) or was killed
        raise BlitzError(
            f"decoding {path} stopped: one of its {workers} decoding processes died. Run again "
            "with --workers 0 to decode in one process (slower; a crash there names no file)"
        ) from None
    if note := _report_bad_images(decoded.bad, cfg.skip_bad_images):
        log(note)
        notes.append(note)
    if decoded.resized:
        log(
            f"resized {decoded.resized} images to {cfg.image_size}x{cfg.image_size} (the shorter "
            "side, then the middle cropped: aspect ratios kept)"
        )
    splits = decoded.splits
    if cfg.skip_bad_images:  # skipping may have emptied a class
        kept = [torch.nonzero(~bad)[:, 0] for bad in decoded.bad_rows]
        splits = [s.subset(rows, role) for s, rows, role in zip(splits, kept, layout.sets)]
    sets = dict(zip(layout.sets, splits))
    _check_not_empty(sets, layout.classes, path)
    return from_sets(name, layout.classes, sets)


def _report_bad_images(bad: list[tuple[str, str]], skip_bad: bool) -> str | None:
    """The line on the images left out (``--skip-bad-images``), or the error naming them."""
    if not bad:
        return None
    listed = "; ".join(f"{name} ({reason})" for name, reason in bad[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    if skip_bad:
        some = "1 image that cannot" if len(bad) == 1 else f"{len(bad)} images that cannot"
        return f"skipped {some} be decoded: {listed}{more}"
    raise BlitzError(
        f"cannot decode image{'s' if len(bad) > 1 else ''} {listed}{more}. "
        "Replace or delete them, or pass --skip-bad-images to train without them"
    )


def _check_not_empty(sets: Mapping[str, AnySplit], classes: list[str], path: Path) -> None:
    for role, split in sets.items():
        if split.labels.ndim == 2 and role != "train":  # multi-label: a set may lack a label
            continue
        counts = label_counts(split.labels, len(classes)).tolist()
        empty = [c for c, n in zip(classes, counts) if n == 0]
        if empty:
            raise BlitzError(
                f"{path}: after skipping bad images, the {role} set's class {empty[0]!r} has "
                "no images left"
            )


@dataclass
class _Decoded:
    """An image folder's splits decoded, and what went wrong on the way."""

    splits: list[Split]  # an image that could not be decoded is left black
    bad_rows: list[torch.Tensor]  # per split, (N,) bool: True where the image is bad
    bad: list[tuple[str, str]]  # (file, reason) of each bad image, in split and row order
    resized: int  # how many images were not already size x size


def _decode_splits(
    splits: list[Pairs], classes: int, path: Path, size: int, workers: int, log: Log
) -> _Decoded:
    """Decode each split's (file, label) pairs in one pass over the folder, archive or table's
    files, in ``workers`` processes; each file is decoded as it is read, so the files' bytes are
    never all in memory at once."""
    images = [np.zeros((len(pairs), size, size, 3), dtype=np.uint8) for pairs in splits]
    where = {
        file: (s, row) for s, pairs in enumerate(splits) for row, (file, _) in enumerate(pairs)
    }
    resized, bad = 0, {}
    files = _decoded(read_images(path, set(where)), size, workers)
    for file, decoded in progress_bar(files, f"decoding {path.name}", log, len(where)):
        s, row = where.pop(file)
        if isinstance(decoded, BadImage):
            bad[s, row] = (file, decoded.reason)
        else:
            images[s][row], was_resized = decoded
            resized += was_resized
    for file, (s, row) in where.items():  # gone since the listing
        bad[s, row] = (file, "disappeared while it was being read")
    bad_rows = [torch.zeros(len(pairs), dtype=torch.bool) for pairs in splits]
    for s, row in bad:
        bad_rows[s][row] = True
    decoded_splits = [
        Split(
            torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
            label_tensor([label for _, label in pairs], classes),
            [file for file, _ in pairs],
        )
        for x, pairs in zip(images, splits)
    ]
    return _Decoded(decoded_splits, bad_rows, [bad[key] for key in sorted(bad)], resized)


Decoded = tuple[np.ndarray, bool] | BadImage  # the image and whether it was resized, or why not


CHUNK_FILES, CHUNK_BYTES = 256, 32 * 2**20  # files sent to a decoding process at a time


def _decoded(
    files: Iterable[tuple[str, bytes | BadImage]], size: int, workers: int
) -> Iterator[tuple[str, Decoded]]:
    """Each file decoded: here, or with ``workers`` > 1 in that many processes (decoding a small
    image is mostly Python, so threads would share one core), a chunk of files at a time, at
    most two chunks per process in flight."""
    if workers <= 1:
        for file, data in files:
            yield file, _decode_one(file, data, size)
        return
    pool = ProcessPoolExecutor(workers, _start_method(), initializer=_ignore_interrupts)
    with pool, unwind_on_sigterm():  # Ctrl-C or SIGTERM: the processes end with this one
        pending: deque[Future[list[tuple[str, Decoded]]]] = deque()
        for chunk in _chunks(files):
            pending.append(pool.submit(_decode_chunk, chunk, size))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _start_method() -> multiprocessing.context.BaseContext:
    # fork: no re-import of blitz in each process (spawn where there is no fork)
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops them


def _chunks(
    files: Iterable[tuple[str, bytes | BadImage]],
) -> Iterator[list[tuple[str, bytes | BadImage]]]:
    chunk, held = [], 0
    for file, data in files:
        chunk.append((file, data))
        held += len(data) if isinstance(data, bytes) else 0
        if len(chunk) == CHUNK_FILES or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _decode_chunk(
    chunk: list[tuple[str, bytes | BadImage]], size: int
) -> list[tuple[str, Decoded]]:
    return [(file, _decode_one(file, data, size)) for file, data in chunk]


def _decode_one(file: str, data: bytes | BadImage, size: int) -> Decoded:
    if isinstance(data, BadImage):
        return data
    resized = [0]
    try:
        return decode_image(data, file, size, resized), bool(resized[0])
    except BadImage as exc:
        return exc
