"""Image folders and archives of them: their files listed and read, and their layout,
[top/]train|test|val/<class>/<image>, turned into classes and (file, label) pairs."""

from __future__ import annotations

import functools
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blitz.errors import BlitzError
from blitz.images import IMAGE_EXTENSIONS

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
SPLITS = {"train": "train", "test": "test", "val": "test"}
CIFAR_FILES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}


@dataclass
class Layout:
    """An image-folder dataset listed, not decoded: its classes and (file, label) per split,
    ordered by class, then by file name."""

    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]

    @property
    def count(self) -> int:
        return len(self.train) + len(self.test)


def check_path(path: Path) -> None:
    """A data path must be a folder or an archive that exists."""
    if not path.exists():
        raise BlitzError(
            f"data path {str(path)!r} does not exist: pass an image folder with train/ and test/, "
            "an archive of one (.tar, .tar.gz, .tgz, .zip), or one of auto, cifar10, mnist, shapes"
        )
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BlitzError(
            f"{path} is not a folder or an archive: expected one of " + ", ".join(ARCHIVE_SUFFIXES)
        )


def list_files(path: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX names of the images (and CIFAR batch files) of a folder or archive, and
    of everything else (folders end in "/"), without reading any file."""
    wanted: list[str] = []
    others: list[str] = []
    for name, is_dir, _ in _members(path):
        if not is_dir and _is_wanted(name):
            wanted.append(name)
        else:
            others.append(name.rstrip("/") + "/" if is_dir else name)
    return wanted, others


def read_files(path: Path, names: set[str]) -> dict[str, bytes]:
    """The bytes of the named files, in one pass over the folder or archive (nothing is
    extracted to disk: archive members are read into memory only)."""
    return {name: read() for name, is_dir, read in _members(path) if name in names and not is_dir}


def find_layout(names: list[str], others: list[str], path: Path) -> Layout:
    """Classes and labelled files of an image-folder dataset, checked for a usable layout."""
    groups = _group_by_split_and_class(names, others, path)
    classes = sorted(groups["train"])

    def pairs(split: str) -> list[tuple[str, int]]:
        return [(f, i) for i, c in enumerate(classes) for f in groups[split][c]]

    return Layout(classes, pairs("train"), pairs("test"))


def other_files_note(others: list[str]) -> str | None:
    """One line on the files that are not images (notes, thumbnails' databases, ...), if any."""
    skipped = [n for n in others if not n.endswith("/")]
    if not skipped:
        return None
    if len(skipped) == 1:
        return f"ignored 1 file that is not an image ({skipped[0]})"
    return f"ignored {len(skipped)} files that are not images (e.g. {skipped[0]})"


def _is_wanted(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS or Path(name).name in CIFAR_FILES


def _check_member(name: str, archive: Path) -> str:
    if name.startswith("/") or ".." in Path(name).parts:
        raise BlitzError(f"refusing archive {archive}: member {name!r} points outside the archive")
    return name


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


def _split_and_class(name: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) >= 4 and parts[0] not in SPLITS and parts[1] in SPLITS:
        parts = parts[1:]  # one top-level folder around the tree
    if len(parts) == 3 and parts[0] in SPLITS:
        return SPLITS[parts[0]], parts[1]
    return None


def _group_by_split_and_class(
    names: list[str], others: list[str], path: Path
) -> dict[str, dict[str, list[str]]]:
    groups: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for file in sorted(names):
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
