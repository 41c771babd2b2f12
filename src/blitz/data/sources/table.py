"""``PATH.csv`` or ``PATH.tsv``: a table of image files and their labels, for images that do
not live in class folders. A header row names the columns: the file (path, file, filename or
image), its label (label, labels or class) and optionally its set (split or set: train, val,
test, or a folder name blitz.data.layout knows); other columns are ignored. A multi-label
table (``blitz.data.sources.labellists``) lists an image's labels in its label cell, separated
by ``data.label_delimiter`` (empty: none), or has no label column but one 0/1 column per
class. Files are relative to the table's folder and never lead out of it. Without a split
column every row is a training image (blitz.data.roles splits the other sets off, as for a
flat folder)."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import NamedTuple

from blitz.config.data_settings import LABEL_DELIMITER
from blitz.data.dataset import Log, check_class_count, silent
from blitz.data.folders import Member, read_member
from blitz.data.images import BadImage
from blitz.data.layout import SET_FOLDERS, Layout
from blitz.data.sources.labellists import SINGLE, decide_task, split_labels
from blitz.errors import BlitzError
from blitz.files import open_regular

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}  # suffix -> the delimiter of its fields
MAX_TABLE_BYTES = 256 * 2**20  # a million rows take ~50 MB; a larger table is no list of files
COLUMNS = {  # column -> the header names (any case) that name it
    "path": ("path", "file", "filename", "image"),
    "label": ("label", "labels", "class"),
    "split": ("split", "set"),
}
NAMED = 10  # missing files named in one error
ONE_HOT = ("0", "1")  # what a class column holds in a table of one 0/1 column per class


class Row(NamedTuple):
    """A row of the table: its line, its file (checked, relative POSIX), label and role."""

    line: int
    file: str
    label: str  # the label cell as written ("" in a table of 0/1 columns)
    role: str  # "train", "val" or "test"
    labels: tuple[str, ...] = ()  # multi-label: the labels it lists (or has a 1 for)


class Table(NamedTuple):
    """A table's layout, and a stamp of what it lists (the decode cache's key)."""

    layout: Layout
    stamp: str  # changes when a row or a listed file (its size or time) changes


def is_table(path: Path) -> bool:
    """Whether ``path`` names a table (.csv, .tsv) rather than a folder or an archive."""
    return path.suffix.lower() in TABLE_SUFFIXES and not path.is_dir()


def read_table(
    path: Path, task: str = "auto", delimiter: str = LABEL_DELIMITER, log: Log = silent
) -> Table:
    """The classes and labelled files of a table, every row checked and every file a regular
    file inside the table's folder (a BlitzError naming the table and line otherwise); ``task``
    and ``delimiter``: the data settings that say how its label cells are read."""
    rows, one_hot = _parse(path, _read_text(path))
    _check_unique(rows, path)
    if one_hot:
        multi, said = True, f"{path}: task multi-label (one 0/1 column per class)"
        if task == SINGLE:
            raise BlitzError(f"{path} has one 0/1 column per class, a multi-label table: drop "
                             f"--task {SINGLE}, or give it a label column")  # fmt: skip
    else:
        cells, lines = [row.label for row in rows], [row.line for row in rows]
        multi, said = decide_task(cells, lines, task, delimiter, path)
        if multi:
            rows = [row._replace(labels=split_labels(row.label, delimiter)) for row in rows]
    log(said)
    layout = _layout(rows, path, multi, log)
    digest = hashlib.sha1(f"{multi}|{delimiter}".encode())
    for row, stamp in zip(rows, _check_files(rows, path)):
        digest.update(f"{row.role}|{row.label}|{row.labels}|{row.file}|{stamp}\n".encode())
    return Table(layout, digest.hexdigest()[:16])


def iter_listed(root: Path, names: set[str]) -> Iterator[tuple[str, bytes | BadImage]]:
    """(name, bytes) of the named regular files under ``root``, each opened by its name (not
    found by walking the folder), as ``blitz.data.folders.iter_files`` gives them."""
    for name in sorted(names):
        member = Member(name, "file", 0, functools.partial(open_regular, root / name))
        try:
            yield name, read_member(member)  # bounded by MAX_FILE_BYTES, as a folder's files
        except BadImage as exc:
            yield name, exc


def _read_text(path: Path) -> str:
    try:
        with open_regular(path) as f:
            too_big = os.fstat(f.fileno()).st_size > MAX_TABLE_BYTES
            data = b"" if too_big else f.read(MAX_TABLE_BYTES + 1)  # it may grow meanwhile
    except OSError as exc:
        raise BlitzError(f"cannot read table {path}: {exc.strerror or exc}") from None
    if too_big or len(data) > MAX_TABLE_BYTES:
        raise BlitzError(
            f"table {path} is larger than {MAX_TABLE_BYTES // 2**20} MB, more than any list "
            "of image files should be: pass a table of path,label rows (one per image)"
        )
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as spreadsheets write, is fine
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BlitzError(
            f"{path}, line {line}: not UTF-8 text ({exc.reason}): save the table as UTF-8"
        ) from None


def _records(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line it starts on, fields) of each row that is not blank."""
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    # strict: a stray quote is an error, not fields silently run together
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records, start = [], 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:  # a quote left open, a field over csv's size limit
        raise BlitzError(
            f"{path}, line {start}: cannot be read ({exc}): check its quotes"
        ) from None
    return records


def _parse(path: Path, text: str) -> tuple[list[Row], list[str]]:
    """The rows, and the class columns of a table of 0/1 columns ([]: it has a label column)."""
    records = _records(path, text)
    if not records or not _names_columns(records[0][1]):
        raise BlitzError(_no_header(path, records))
    columns = _columns(path, records[0])
    one_hot = [name for name in columns if name not in COLUMNS]
    rows = []
    for line, fields in records[1:]:
        if _looks_like_header(fields):  # two tables joined, or the header repeated
            raise BlitzError(
                f"{path}, line {line} looks like a header row ({_shown(fields)}), but the "
                "header must be the first line only: remove it"
            )
        rows.append(_row(path, line, fields, columns))
    if not rows:
        raise BlitzError(f"{path} has a header but no rows: add one row per image")
    return rows, one_hot


def _names_columns(fields: list[str]) -> bool:
    known = {name for names in COLUMNS.values() for name in names}
    return any(field.strip().lower() in known for field in fields)


def _looks_like_header(fields: list[str]) -> bool:
    names = {field.strip().lower() for field in fields}
    return bool(names & set(COLUMNS["path"])) and bool(names & set(COLUMNS["label"]))


def _no_header(path: Path, records: list[tuple[int, list[str]]]) -> str:
    later = next((line for line, fields in records[1:] if _looks_like_header(fields)), None)
    if later:
        return (
            f"{path}, line {later} looks like the header row, but the header must be the first "
            f"line (line {records[0][0]} is {_shown(records[0][1])}): move it to the top"
        )
    first = records[0][1] if records else []
    other = next((mark for mark in ";\t|" if len(first) == 1 and mark in first[0]), None)
    if other:  # Excel writes ';' between columns where ',' is the decimal comma
        return (
            f"{path}: its first line is one column, {first[0]!r}, whose names are separated by "
            f"{other!r}: blitz reads a .csv's columns by ',' and a .tsv's by tabs; save the "
            "table so (in Excel: CSV UTF-8), or with tabs as .tsv"
        )
    return (
        f"{path} has no header row: its first line must name the columns, e.g. path,label "
        "or path,label,split (the file: path, file, filename or image; its class: label or "
        "class; optionally its set: split or set)"
    )


def _columns(path: Path, header: tuple[int, list[str]]) -> dict[str, int | None]:
    """column -> its field (None: no split column); without a label column, each other named
    column is a class's 0/1 column, by its name as written."""
    line, fields = header
    names = [field.strip().lower() for field in fields]
    known = {name for choices in COLUMNS.values() for name in choices}
    classes = {f.strip(): i for i, f in enumerate(fields) if f.strip() and names[i] not in known}
    if not set(names) & set(COLUMNS["label"]) and len(classes) >= 2:
        usual = _columns(path, (line, [*fields, "label"]))  # path and split as usual
        return {**usual, "label": None, **classes}
    found: dict[str, int | None] = {}
    for column, choices in COLUMNS.items():
        at = [i for i, name in enumerate(names) if name in choices]
        if len(at) > 1:
            raise BlitzError(
                f"{path}, line {line}: the header names {len(at)} {column} columns "
                f"({', '.join(fields[i].strip() for i in at)}): rename all but one"
            )
        if not at and column != "split":
            also = " or one 0/1 column per class" if column == "label" else ""
            raise BlitzError(
                f"{path}, line {line}: the header has no {column} column (name it "
                f"{' or '.join(choices)}{also}); it names {_shown(fields)}"
            )
        found[column] = at[0] if at else None
    return found


def _row(path: Path, line: int, fields: list[str], columns: dict[str, int | None]) -> Row:
    where = f"{path}, line {line}"
    needed = max(i for i in columns.values() if i is not None) + 1
    if len(fields) < needed:
        raise BlitzError(
            f"{where} has {len(fields)} field{'s' * (len(fields) != 1)}, but the header "
            f"names {needed} columns ({_shown(fields)}): fill in the missing ones"
        )
    cells = {column: fields[i].strip() for column, i in columns.items() if i is not None}
    if not cells["path"]:
        raise BlitzError(f"{where} has an empty path: fill it in or remove the row")
    role = SET_FOLDERS.get(cells.get("split", "train").lower())
    if role is None:
        raise BlitzError(
            f"{where}: unknown split {cells['split']!r}: use one of "
            f"{', '.join(SET_FOLDERS)} (any case)"
        )
    file = _file_name(cells["path"], where)
    if columns["label"] is not None:
        return Row(line, file, cells["label"], role)
    classes = [column for column in columns if column not in COLUMNS]
    for column in classes:
        if cells[column] not in ONE_HOT:
            raise BlitzError(
                f"{where}: class column {column!r} holds {cells[column]!r}, not 0 or 1 (a table "
                "without a label column has one 0/1 column per class): fix the cell"
            )
    return Row(line, file, "", role, tuple(sorted(c for c in classes if cells[c] == "1")))


def _file_name(text: str, where: str) -> str:
    """A listed path as a relative POSIX name inside the table's folder (``./a.jpg`` and
    ``dir\\a.jpg`` as ``a.jpg`` and ``dir/a.jpg``): an absolute one, or one whose ``..``
    leaves the folder, is refused."""
    name = text.replace("\\", "/")
    if name.startswith("/") or PureWindowsPath(text).drive:
        raise BlitzError(
            f"{where}: {text!r} is an absolute path: list files relative to the table's folder"
        )
    name = posixpath.normpath(name)
    if name == ".." or name.startswith("../"):
        raise BlitzError(
            f"{where}: {text!r} leads out of the table's folder: put the images in the table's "
            "folder (or below it) and list them relative to it"
        )
    return name


def _check_unique(rows: list[Row], path: Path) -> None:
    first: dict[str, int] = {}
    for row in rows:
        if row.file in first:
            raise BlitzError(
                f"{path}, line {row.line} lists {row.file!r} again (as line {first[row.file]} "
                "does): keep one row per image"
            )
        first[row.file] = row.line


def _check_files(rows: list[Row], path: Path) -> list[str]:
    """Each row's file as "size|time" (for the decode cache's key); a file that is missing or
    is not a regular file is named in one error, and a link out of the folder is refused."""
    root = path.parent.resolve()
    stamps, bad = [], []
    for row in rows:
        try:
            real = (path.parent / row.file).resolve(strict=True)  # a link loop: RuntimeError
            info = real.stat()
        except (OSError, RuntimeError, ValueError):  # ValueError: a NUL in the name
            bad.append(f"{row.file!r} (line {row.line})")
            continue
        if not real.is_relative_to(root):
            raise BlitzError(
                f"{path}, line {row.line}: {row.file!r} is a link that leads out of the table's "
                f"folder (to {str(real)!r}): copy the image into the folder instead"
            )
        if not stat.S_ISREG(info.st_mode):  # a folder, pipe or device
            bad.append(f"{row.file!r} (line {row.line}, not a regular file)")
        stamps.append(f"{info.st_size}|{info.st_mtime_ns}")
    if bad:
        more = f", and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
        raise BlitzError(
            f"{path} lists {len(bad)} file{'s' * (len(bad) > 1)} that cannot be read (missing, "
            f"or not a regular file): {', '.join(bad[:NAMED])}{more}. Paths are relative to "
            f"{path.parent}: fix them, or remove the rows"
        )
    return stamps


def _layout(rows: list[Row], path: Path, multi: bool, log: Log) -> Layout:
    """Classes (sorted, from the training rows) and (file, label) per set, as an image folder
    has them: by class, then by file name (multi-label: (file, its classes) by file name)."""
    labels = (row.labels if multi else (row.label,) for row in rows if row.role == "train")
    classes = sorted({label for each in labels for label in each})
    if not classes:
        raise BlitzError(
            f"{path} has no training rows (split train) with labels: blitz learns the classes "
            "from them"
        )
    check_class_count(str(path), classes)
    index = {name: i for i, name in enumerate(classes)}
    sets: dict = {}
    for role in ("train", "val", "test"):
        mine = [row for row in rows if row.role == role]
        if not mine:
            continue
        if not multi:
            _check_labels(mine, set(classes), path)
            pairs = [(row.file, index[row.label]) for row in mine]
            sets[role] = sorted(pairs, key=lambda pair: (pair[1], pair[0]))
            continue
        _check_label_sets(mine, set(classes), path, log)
        listed = [(row.file, tuple(sorted(index[label] for label in row.labels))) for row in mine]
        sets[role] = sorted(listed)
    return Layout(classes, sets, flat=list(sets) == ["train"])


def _check_label_sets(rows: list[Row], classes: set[str], path: Path, log: Log) -> None:
    """A multi-label set's labels are training labels; one it lacks is said (its AP there
    does not exist), not refused: a rare label may be on too few images for every set."""
    role = rows[0].role
    for row in rows:
        if unknown := [label for label in row.labels if label not in classes]:
            raise BlitzError(
                f"{path}, line {row.line}: unknown label {unknown[0]!r} in a {role} row: no "
                "training row has it (a class is learned from training images): fix the "
                "label or add training rows of it"
            )
    lacking = sorted(classes - {label for row in rows for label in row.labels})
    if lacking and role != "train":
        log(
            f"note: {path}'s {role} rows have no image labelled {', '.join(map(repr, lacking))}: "
            f"those labels are not scored on the {role} set"
        )


def _check_labels(rows: list[Row], classes: set[str], path: Path) -> None:
    """A set's labels are the training classes, each of them (it cannot be scored without)."""
    role = rows[0].role
    for row in rows:
        if row.label not in classes:
            raise BlitzError(
                f"{path}, line {row.line}: unknown label {row.label!r} in a {role} row: no "
                "training row has it (a class is learned from training images): fix the "
                "label or add training rows of it"
            )
    lacking = sorted(classes - {row.label for row in rows})
    if lacking:
        raise BlitzError(
            f"{path}: the {role} rows have no images of class {', '.join(map(repr, lacking))}: "
            f"every set needs each class (a class with no images cannot be scored); add {role} "
            "rows of it, or leave out the split column to split the sets off automatically"
        )


def _shown(fields: list[str]) -> str:
    return repr(",".join(field.strip() for field in fields))
