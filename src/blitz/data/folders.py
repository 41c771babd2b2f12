"""Image folders and archives of them: their members listed (hidden files and folders, such as
``.ipynb_checkpoints``, macOS's ``._1.jpg`` and ``__MACOSX``, are no part of a dataset), read,
and extracted; what the names mean is ``data.layout``'s."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from blitz.data.dataset import Log, progress_bar, silent
from blitz.data.images import IMAGE_EXTENSIONS, BadImage
from blitz.errors import BlitzError, did_you_mean
from blitz.files import NOFOLLOW, open_regular

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_TAR_INDEX: dict[tuple, list[tarfile.TarInfo]] = {}  # the last tar archive's headers, by stamp
CIFAR_FILES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
MAX_FILE_BYTES = 256 * 2**20  # no image (or CIFAR batch) comes near; a larger member is a bomb
DISK_MARGIN = 2**30  # an extraction leaves at least this much of the disk free
# Images hardly compress (JPEG and PNG are compressed already), so an archive of them holds
# little more than its own size; its files at 100 times that are zeros or repeats (a bomb, or
# sparse members that would take real blocks once extracted). Small archives get some room.
MAX_EXPANSION = 100
EXPANSION_ROOM = 64 * 2**20


Kind = Literal["file", "dir", "other"]  # other: a link, device, pipe or unreadable entry


class Member(NamedTuple):
    """An entry of a folder or archive: its checked relative name, what it is, and its size."""

    name: str  # relative POSIX path, never absolute, never through ".."
    kind: Kind
    size: int
    open: Callable[[], IO[bytes]]
    mtime_ns: int = 0  # files of a folder: when they last changed (the decode cache's key)


def check_path(path: Path, sources: list[str], tables: tuple[str, ...] = ()) -> None:
    """A data path must be a folder, an archive or a table of image files (``tables``: its
    suffixes) that exists (``sources``: the other specs)."""
    table = f", a table of image files and labels ({', '.join(tables)})" if tables else ""
    if not path.exists():
        raise BlitzError(
            f"data path {str(path)!r} does not exist{did_you_mean(str(path), sources)}: pass an "
            "image folder (one folder per "
            "class, or train/ and test/ folders of those), an archive of one "
            f"({', '.join(ARCHIVE_SUFFIXES)}){table}, or one of {', '.join(sources)}"
        )
    if not path.is_dir() and not path.is_file():  # opening a pipe to list it would wait for ever
        raise BlitzError(
            f"{path} is not a folder or a regular file (a pipe, a socket or a device): pass an "
            f"image folder, an archive ({', '.join(ARCHIVE_SUFFIXES)}){table}"
        )
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES + tables):
        raise BlitzError(
            f"{path} is not a folder or an archive{table and ' or a table'}: expected one of "
            + ", ".join(ARCHIVE_SUFFIXES + tables)
        )


def list_files(path: Path, log: Log = silent) -> tuple[list[str], list[str]]:
    """Relative POSIX names of the images (and CIFAR batch files) of a folder or archive, and
    of everything else (folders end in "/"; links, devices and pipes are "everything else"),
    without reading any file; an archive's listing shows progress (its headers are parsed)."""
    wanted: list[str] = []
    others: list[str] = []
    size = 0
    for member in members(path, log):
        if is_hidden(member.name):
            continue
        if member.kind == "file" and _is_wanted(member.name):
            wanted.append(member.name)
            size += member.size
        else:
            others.append(member.name + "/" if member.kind == "dir" else member.name)
    if not path.is_dir():
        check_expansion(path, size)
    return wanted, others


def check_expansion(archive: Path, size: int) -> None:
    """Refuse an archive whose files (``size`` bytes in all, a sparse member counted at its
    full size) would take far more than any archive of images holds (``MAX_EXPANSION``)."""
    limit = max(MAX_EXPANSION * archive.stat().st_size, EXPANSION_ROOM)
    if size > limit:
        raise BlitzError(
            f"refusing archive {archive}: its images would take {size / 2**20:.0f} MB, "
            f"{size / archive.stat().st_size:.0f} times the archive's size, and no archive of "
            "images expands that much (its files are zeros or repeats: a decompression bomb, "
            "or sparse files). Extract it yourself if you trust it and pass the folder"
        )


def iter_files(path: Path, names: set[str]) -> Iterator[tuple[str, bytes | BadImage]]:
    """(name, bytes) of the named regular files, in one pass over the folder or archive; a file
    that cannot be read comes as (name, BadImage) so the caller can name or skip it. Nothing is
    written to disk, and no file over ``MAX_FILE_BYTES`` is read."""
    for member in members(path):
        if member.kind == "file" and member.name in names:
            try:
                yield member.name, read_member(member)
            except BadImage as exc:
                yield member.name, exc


def read_files(path: Path, names: set[str]) -> dict[str, bytes]:
    """The bytes of the named files (all of them, or a BlitzError naming the first bad one)."""
    out = {}
    for name, data in iter_files(path, names):
        if isinstance(data, BadImage):
            raise data
        out[name] = data
    return out


def read_member(member: Member) -> bytes:
    """A member's bytes, refusing one larger than ``MAX_FILE_BYTES`` (a bomb, or not an image),
    and naming one that cannot be read (encrypted, unknown compression, bad checksum, ...)."""
    too_big = f"larger than {MAX_FILE_BYTES // 2**20} MB, more than any image should be"
    if member.size > MAX_FILE_BYTES:
        raise BadImage(member.name, too_big)
    try:
        with member.open() as f:
            data = f.read(MAX_FILE_BYTES + 1)  # a size header may lie: count what comes
    except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile, tarfile.TarError,
            EOFError, zlib.error) as exc:  # fmt: skip
        raise BadImage(member.name, f"cannot be read: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BadImage(member.name, too_big)
    return data


def extract(
    archive: Path, into: Path, names: set[str], skip_bad: bool = False, log: Log = silent
) -> None:
    """Copy the named regular files of an archive into the folder ``into`` (made here, whole or
    not at all). Paths are built from the checked member names; no link, device or other
    special file is ever created, and the interpreter's extraction filters are not relied on.
    A member that cannot be read is an error naming it, or with ``skip_bad`` left out (the
    check of the streamed files then names and skips it)."""
    listed = {m.name: m for m in members(archive) if m.kind == "file" and m.name in names}
    count = sum(1 for _ in members(archive))  # the headers are parsed once: counting is quick
    total = sum(m.size for m in listed.values())
    check_expansion(archive, total)
    into.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(into.parent).free
    if total > free - DISK_MARGIN:
        raise BlitzError(
            f"extracting {archive} needs {total / 2**30:.2f} GB, but {into.parent} has "
            f"{free / 2**30:.2f} GB free: free some space or set BLITZ_DATA to a larger disk"
        )
    for stale in into.parent.glob(glob.escape(into.name) + ".tmp*"):  # a killed extraction's
        shutil.rmtree(stale, ignore_errors=True)  # (the caller holds the lock: none is live)
    tmp = into.with_name(into.name + f".tmp{os.getpid()}")
    try:
        # one pass: reading a .tar.gz out of order re-reads it
        for member in progress_bar(members(archive), f"extracting {archive.name}", log, count):
            if member.kind == "file" and listed.pop(member.name, None) is not None:
                with contextlib.suppress(*((BadImage,) if skip_bad else ())):
                    _write_new(tmp.joinpath(*member.name.split("/")), member)
    except BaseException as exc:  # a full disk, a bad member, Ctrl-C: nothing is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError | BlitzError):
            raise BlitzError(f"cannot extract {archive} into {into.parent}: {exc}") from None
        raise
    os.replace(tmp, into)  # a half-extracted archive is never mistaken for a whole one


def _write_new(target: Path, member: Member) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = read_member(member)
    # O_EXCL | O_NOFOLLOW: only a new regular file, never through a link (there are none here)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
    with os.fdopen(os.open(target, flags, 0o644), "wb") as f:
        f.write(data)


def other_files_note(others: list[str]) -> str | None:
    """One line on the files that are not images (notes, thumbnails' databases, ...), if any."""
    skipped = [n for n in others if not n.endswith("/")]
    if not skipped:
        return None
    if len(skipped) == 1:
        return f"ignored 1 file that is not an image ({skipped[0]})"
    return f"ignored {len(skipped)} files that are not images (e.g. {skipped[0]})"


def is_hidden(name: str) -> bool:
    """A name that is hidden, or in a hidden folder or ``__MACOSX`` (a zip made on a Mac); an
    archive's ``./`` (``tar -C DIR .``) is no hidden folder."""
    return any((p.startswith(".") and p != ".") or p == "__MACOSX" for p in name.split("/"))


def _is_wanted(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS or Path(name).name in CIFAR_FILES


def _check_member(name: str, archive: Path) -> str:
    if name.startswith("/") or ".." in name.split("/"):
        raise BlitzError(f"refusing archive {archive}: member {name!r} points outside the archive")
    return name.rstrip("/")


def members(path: Path, log: Log = silent) -> Iterator[Member]:
    """The entries of a folder (links to files and folders followed, each folder once) or of
    an archive (links never followed), sorted by name; ``log``: where a tar archive's first
    listing shows its progress."""
    if path.is_dir():
        yield from sorted(_folder_members(path), key=lambda m: m.name)
    elif path.name.lower().endswith(".zip"):
        yield from _zip_members(path)
    else:
        yield from _tar_members(path, log)


def _folder_members(root: Path) -> Iterator[Member]:
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = os.stat(folder)
        rel = Path(folder).relative_to(root).as_posix()
        if (here.st_dev, here.st_ino) in seen:  # a link loop, or a folder linked twice
            dirs.clear()
            yield Member(rel, "other", 0, _no_open)
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = [d for d in dirs if not is_hidden(d)]  # never walk .git or .ipynb_checkpoints
        if rel != ".":
            yield Member(rel, "dir", 0, _no_open)
        prefix = "" if rel == "." else rel + "/"
        for name in files:
            yield _folder_file(Path(folder) / name, prefix + name)


def _folder_file(file: Path, name: str) -> Member:
    try:
        info = file.stat()  # follows a link; a dangling one or a loop raises
    except OSError:
        return Member(name, "other", 0, _no_open)
    if not stat.S_ISREG(info.st_mode):  # a pipe would hang a read, a device never end one
        return Member(name, "other", 0, _no_open)
    opener = functools.partial(open_regular, file)
    return Member(name, "file", info.st_size, opener, info.st_mtime_ns)


def _no_open() -> IO[bytes]:
    raise OSError("not a regular file")


def _zip_members(path: Path) -> Iterator[Member]:
    try:
        with zipfile.ZipFile(path) as zf:
            for name, info in _last_of_each_name(zf.infolist(), "filename", path):
                kind: Kind = "dir" if info.is_dir() else "file"
                yield Member(name, kind, info.file_size, functools.partial(zf.open, info))
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BlitzError(f"cannot read archive {path}: {exc}") from None


def _tar_members(path: Path, log: Log) -> Iterator[Member]:
    try:
        infos = _tar_index(path, log)
        with tarfile.open(path) as tar:
            for name, member in _last_of_each_name(infos, "name", path):
                # links (hard or symbolic), devices and pipes are listed, never followed
                kind: Kind = "file" if member.isfile() else "dir" if member.isdir() else "other"
                yield Member(name, kind, member.size, functools.partial(_tar_file, tar, member))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BlitzError(f"cannot read archive {path}: {exc}") from None


def _tar_file(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    file = tar.extractfile(member)
    if file is None:  # a link, device or folder: tar has no bytes of its own for it
        raise OSError("not a regular file")
    return file


def _last_of_each_name(entries: list, attr: str, archive: Path) -> Iterable[tuple[str, Any]]:
    """(checked name, entry) once per name: an archive may hold a name twice (tar's append and
    update add a newer copy), and the last copy is the file, as extracting it leaves it."""
    return {_check_member(getattr(e, attr), archive): e for e in entries}.items()


def _tar_index(path: Path, log: Log) -> list[tarfile.TarInfo]:
    """A tar archive's headers, parsed once for its listing and its reading: parsing them is
    most of the time a .tar.gz of small images takes to list (100,000 members: seconds), so the
    first parse shows progress. A changed archive is parsed again."""
    key = (path.resolve(), *_stamp(path))
    if key not in _TAR_INDEX:
        with tarfile.open(path) as tar:
            infos = list(progress_bar(tar, f"listing {path.name}", log))
        _TAR_INDEX.clear()  # only the newest archive's: what its listing and reading share
        _TAR_INDEX[key] = infos
    return _TAR_INDEX[key]


def _stamp(path: Path) -> tuple[int, ...]:
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
