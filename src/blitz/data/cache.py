"""The cache, ``$BLITZ_DATA``: downloads, extracted archives, and the decode cache (a dataset's
uint8 tensors, keyed by its files' names, sizes and times, so a second run starts at once)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from blitz.data.dataset import ImageData, Log, Split, from_sets, in_memory
from blitz.data.folders import members
from blitz.errors import BlitzError
from blitz.files import atomic_file

CACHE_FORMAT = 5  # bump when decoding or its layout changes, so old caches are rebuilt
# what torch.load raises on a file cut short or overwritten: zip (OSError "invalid argument",
# RuntimeError), pickle and layout errors (random bytes have also made its unpickler raise
# IndexError: tests/test_bad_input.py draws them afresh each run)
DAMAGED = (
    OSError,
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
)


def cache_dir() -> Path:
    """Where downloads and decoded tensors live: ``$BLITZ_DATA`` or ``~/.cache/blitz``."""
    return Path(os.environ.get("BLITZ_DATA") or Path.home() / ".cache" / "blitz")


def cache_folder(name: str) -> Path:
    """``$BLITZ_DATA/name``, made if missing and checked writable before anything is written
    there: a read-only folder, or a file in the way, is one BlitzError saying what to do."""
    folder = cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise unwritable_error(folder, exc) from None
    return folder


def unwritable_error(folder: Path, exc: OSError) -> BlitzError:
    """The error for a cache folder that cannot be written."""
    return BlitzError(
        f"cannot write to {folder} ({exc.strerror or exc}): set BLITZ_DATA to a writable folder "
        "with free space (it holds downloads and decoded data)"
    )


def fingerprint(path: Path, options: str, contents: str = "") -> str:
    """A key ``SOURCE-FILES``: SOURCE names the source (its path, the options, the cache
    format), FILES its files (names, sizes, times; a table's ``contents`` stamp too), so a
    changed source is decoded again and its older copy can be told apart and dropped."""
    path = path.resolve()  # ./data and /abs/data are the same source
    source = hashlib.sha1(f"{CACHE_FORMAT}|{options}|".encode() + os.fsencode(path)).hexdigest()
    digest = hashlib.sha1(f"{source}|{contents}".encode())
    if path.is_dir():
        for m in members(path):
            digest.update(b"|" + os.fsencode(m.name) + f"|{m.kind}|{m.size}|{m.mtime_ns}".encode())
    else:
        stat = path.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{source[:8]}-{digest.hexdigest()[:12]}"


def decoded_file(name: str, key: str) -> Path:
    """Where the decode cache keeps a dataset's tensors."""
    return cache_dir() / "decoded" / f"{name}-{key}.pt"


def _drop_older_copies(file: Path) -> None:
    """Delete the decoded tensors of the same source and options from before its files changed
    (``file``'s name, SOURCE key, and another FILES key): they would never be read again. A
    process reading one has it in memory already (``torch.load`` reads it whole)."""
    name, source, _ = file.stem.rsplit("-", 2)
    with contextlib.suppress(OSError):  # a cache that cannot be tidied still works
        for old in file.parent.glob("*.pt"):
            if old != file and old.stem.rsplit("-", 2)[:2] == [name, source]:
                old.unlink()


def read_decoded(file: Path, name: str, log: Log) -> ImageData | None:
    """The cached dataset, its notes said again (files ignored, images skipped: a run from the
    cache must not be silent about them); None if the file is damaged (it is then deleted, to
    be rebuilt)."""
    try:
        raw = torch.load(file, weights_only=True)
        sets = {role: _read_split(*raw[role]) for role in ("train", "val", "test") if role in raw}
        data = from_sets(name, list(raw["classes"]), sets)
        for note in raw.get("notes", []):
            log(f"{note} (when it was decoded)")
        return data
    except DAMAGED:
        log(f"the decoded cache {file} is damaged (cut short or overwritten): rebuilding it")
    with contextlib.suppress(OSError):  # a read-only cache: writing it again will say so
        file.unlink()
    return None


# A split's file names are stored as one string, NUL between them (no file name holds a NUL):
# torch.load's weights-only unpickler takes 0.2-0.3 s for CIFAR-10's 60,000 names as a list of
# strings, and no time for one string (CACHE_FORMAT 5: older blitz versions keep their own
# files). A list (a name with a NUL) reads too.
SEPARATOR = "\0"


def _joined_names(files: list[str] | None) -> str | list[str] | None:
    if files is None or not files or any(SEPARATOR in name for name in files):
        return files
    return SEPARATOR.join(files)


def _read_split(images: torch.Tensor, labels: torch.Tensor, files: str | list | None) -> Split:
    return Split(images, labels, files.split(SEPARATOR) if isinstance(files, str) else files)


def _in_memory_sets(data: ImageData) -> list[tuple[str, Split]]:
    return [(role, in_memory(split)) for role, split in data.sets().items()]


def write_decoded(data: ImageData, file: Path, log: Log, notes: Sequence[str] = ()) -> None:
    """Save a dataset's tensors, and ``notes``, what decoding said of its files; a cache that
    cannot be written is said, and the run goes on."""
    payload = {
        "classes": data.classes,
        "notes": list(notes),
        **{role: (s.images, s.labels, _joined_names(s.files)) for role, s in _in_memory_sets(data)},
    }
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(file) as f:  # readers never see a half-written cache
            torch.save(payload, f)  # to a file object: a full disk is an OSError, not torch's
        _drop_older_copies(file)
    except OSError as exc:
        log(
            f"could not write the decoded cache {file} ({exc.strerror or exc}): going on "
            "without it (later runs decode again)"
        )
