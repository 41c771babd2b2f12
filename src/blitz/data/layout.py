"""The layout of an image-folder dataset: its file names turned into classes and (file, label)
pairs per set: ``[top/]train|val|test/<class>/<image>`` (val also named valid, validation or
dev), or flat, ``[top/]<class>/<image>``; as torchvision's ``ImageFolder``, an image in a
folder within a class folder (``cat/2019/1.jpg``) is of that class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from blitz.data.dataset import check_class_count
from blitz.data.images import IMAGE_EXTENSIONS
from blitz.errors import BlitzError

# a set's folder names (any case) -> its role
SET_FOLDERS = {
    "train": "train",
    **dict.fromkeys(("val", "valid", "validation", "dev"), "val"),
    "test": "test",
}


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
    outside: list[str] = field(default_factory=list)  # images in no class folder: no class

    def outside_note(self) -> str | None:
        """One line on the images that are in no class folder (ignored: they have no class)."""
        if not self.outside:
            return None
        count, first = len(self.outside), self.outside[0]
        some = (
            f"1 image ({first}) that is"
            if count == 1
            else f"{count} images (e.g. {first}) that are"
        )
        return f"ignored {some} in no class folder: an image's class is the folder it is in"

    @property
    def count(self) -> int:
        return sum(map(len, self.sets.values()))

    @property
    def files(self) -> set[str]:
        return {file for pairs in self.sets.values() for file, _ in pairs}


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
    outside = [name for name in sorted(names) if tree.place(name) is None]
    return Layout(classes, sets, tree.flat, outside)


def _class_mismatch(path: Path, role: str, found: set[str], classes: set[str]) -> str:
    missing, extra = sorted(classes - found), sorted(found - classes)
    parts = [f"{role} lacks {', '.join(missing)}"] if missing else []
    parts += [f"train lacks {', '.join(extra)}"] if extra else []
    return (
        f"{path}: train/ and {role}/ hold different classes ({'; '.join(parts)}): every set "
        "needs a folder for each class (a class with no images cannot be scored)"
    )


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
