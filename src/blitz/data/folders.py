"""Image folders and archives of them: their files listed and read, and their layout turned
into classes and (file, label) pairs per set: ``[top/]train|val|test/<class>/<image>`` (val
also named valid, validation or dev), or flat, ``[top/]<class>/<image>``; as torchvision's
``ImageFolder``, an image in a folder within a class folder (``cat/2019/1.jpg``) is of that
class. Hidden files and folders (``.ipynb_checkpoints``, macOS's ``._1.jpg``) and ``__MACOSX``
are no part of a dataset."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from blitz.data.dataset import Log, check_class_count, progress_bar, silent
from blitz.data.images import IMAGE_EXTENSIONS, BadImage
from blitz.errors import BlitzError, did_you_mean
from blitz.files import NOFOLLOW, open_regular

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_TAR_INDEX: dict[tuple, list[tarfile.TarInfo]] = {}  # the last tar archive's headers, by stamp
# a set's folder names (any case) -> its role
SET_FOLDERS = {
    "train": "train",
    **dict.fromkeys(("val", "valid", "validation", "dev"), "val"),
    "test": "test",
}
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


Label = int | tuple[int, ...]  # a class number, or (multi-label) the numbers of an image's labels
Pairs = list[tuple[str, Label]]  # (file, label)


@dataclass
class Layout:
    """An image-folder dataset listed, not decoded: its classes and (file, label) per set it
    has ("train", and "val" and "test" where there are such folders), ordered by class, then
    by file name. A flat folder's images are all "train" (the other sets are split off)."""

    classes: list[str]
    sets: dict[str, Pairs]
    flat: bool

    @property
    def count(self) -> int:
        return sum(map(len, self.sets.values()))

    @property
    def files(self) -> set[str]:
        return {file for pairs in self.sets.values() for file, _ in pairs}


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


def find_layout(names: list[str], others: list[str], path: Path) -> Layout:
    """Classes and labelled files of an image-folder dataset, checked for a usable layout."""
    tree = _tree(names)
    _check_no_set_within_a_class(names, tree, path)
    groups = _group(names, tree, path)
    _check_no_empty_class(others, tree, groups, path)
    classes = sorted(groups["train"])
    check_class_count(str(path), classes)
    for role, by_class in groups.items():
        if sorted(by_class) != classes:
            raise BlitzError(_class_mismatch(path, role, set(by_class), set(classes)))
    sets: dict[str, Pairs] = {
        role: [(f, i) for i, c in enumerate(classes) for f in by_class[c]]
        for role, by_class in groups.items()
    }
    return Layout(classes, sets, tree.flat)


def _class_mismatch(path: Path, role: str, found: set[str], classes: set[str]) -> str:
    missing, extra = sorted(classes - found), sorted(found - classes)
    parts = [f"{role} lacks {', '.join(missing)}"] if missing else []
    parts += [f"train lacks {', '.join(extra)}"] if extra else []
    return (
        f"{path}: train/ and {role}/ hold different classes ({'; '.join(parts)}): every set "
        "needs a folder for each class (a class with no images cannot be scored)"
    )


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


class _Tree(NamedTuple):
    """How a folder's names map to sets and classes: without the one top-level folder around
    everything (if there is one), ``SET/CLASS/...FILE``, or flat, ``CLASS/...FILE`` (a file
    in folders within a class folder is of that class)."""

    top: str  # "" or "name/", the folder around everything
    flat: bool

    def place(self, name: str) -> tuple[str, str] | None:
        """(role, class) of a file, or None if it is outside the layout."""
        parts = name.removeprefix(self.top).split("/")
        if self.flat:
            return ("train", parts[0]) if len(parts) >= 2 else None
        role = SET_FOLDERS.get(parts[0].lower()) if len(parts) >= 3 else None
        return (role, parts[1]) if role else None


def _tree(names: list[str]) -> _Tree:
    """The layout the names follow: split folders if any file is in one, else flat; inside
    one top-level folder if everything is, and that folder is no set or class of its own."""
    firsts = {name.split("/")[0] for name in names}
    wrapped = len(firsts) == 1 and all("/" in name for name in names)
    tops = [f"{firsts.pop()}/", ""] if wrapped else [""]
    if tops[0][:-1].lower() in SET_FOLDERS:  # train/ or test/ alone is a set, not a wrapper
        tops = [""]
    for top in tops:
        for flat in (False, True):
            tree = _Tree(top, flat)
            if any(tree.place(name) for name in names):
                return tree
    return _Tree("", flat=True)


def _group(names: list[str], tree: _Tree, path: Path) -> dict[str, dict[str, list[str]]]:
    """role -> class -> files, the roles in the order train, val, test."""
    groups: dict[str, dict[str, list[str]]] = {}
    folders: dict[str, str] = {}  # role -> the set folder it was read from
    for file in sorted(names):
        place = tree.place(file)
        if place is None:
            continue
        role, cls = place
        folder = "" if tree.flat else file.removeprefix(tree.top).split("/")[0]
        if folders.setdefault(role, folder) != folder:
            raise BlitzError(
                f"{path} has both {folders[role]}/ and {folder}/: both name the {role} set; "
                "keep one of them"
            )
        groups.setdefault(role, {}).setdefault(cls, []).append(file)
    if "train" not in groups:
        raise BlitzError(_no_layout(path, tree.flat, groups))
    return {role: groups[role] for role in ("train", "val", "test") if role in groups}


def _check_no_set_within_a_class(names: list[str], tree: _Tree, path: Path) -> None:
    """``cat/test/1.jpg``: set folders inside the class folders would be read as more images of
    each class, and the split the user made lost; it is named instead."""
    for name in names if tree.flat else []:
        cls, *inner = name.removeprefix(tree.top).split("/")
        if len(inner) > 1 and inner[0].lower() in SET_FOLDERS:
            raise BlitzError(
                f"{path}: {cls}/{inner[0]}/ is a set folder inside class folder {cls}/, and "
                f"blitz reads the sets at the top ({inner[0]}/{cls}/...): move the set folders "
                f"up, or rename {cls}/{inner[0]}/ if it is no set"
            )


def _no_layout(path: Path, flat: bool, groups: dict) -> str:
    if not flat:
        found = " and ".join(f"{role}/" for role in groups)
        return f"{path} has {found} but no train/ folder of images per class"
    return (
        f"{path} has no images in class folders: put one folder of images per class in it "
        "(cat/1.jpg, dog/2.jpg, ...), or train/ and test/ (and val/) folders of those; or "
        "list the files with their labels in a CSV table (columns path,label) and pass that"
    )


def _check_no_empty_class(
    others: list[str], tree: _Tree, groups: dict[str, dict[str, list[str]]], path: Path
) -> None:
    """A class folder with no images in it is a mistake to name, not a class to drop."""
    for other in others:  # a folder, or a file that is no image in a folder
        folder = other.rstrip("/") if other.endswith("/") else other.rpartition("/")[0]
        place = tree.place(folder + "/x") if folder else None
        if place and place[1] not in groups.get(place[0], {}):
            raise BlitzError(
                f"class folder {folder} in {path} has no images: add images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder"
            )
