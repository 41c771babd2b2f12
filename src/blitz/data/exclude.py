"""``--exclude FILE``: images left out of every set, named by a file: ``blitz doctor``'s
``doctor.csv`` (its ``image`` column), any table with an ``image`` column (``sets.csv``), or a
list of image ids, one a line (``#`` starts a comment). The files themselves are never touched."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import torch

from blitz.data.dataset import ImageData, Log
from blitz.data.roles import SET_NAMES
from blitz.errors import BlitzError
from blitz.files import read_regular
from blitz.utils.cells import cell_text

MAX_LIST_BYTES = 256 * 2**20  # a list of a million ids takes ~50 MB


def read_excluded(path: Path) -> set[str]:
    """The image ids a file names (see the module's docstring)."""
    try:
        raw = read_regular(path, MAX_LIST_BYTES)
    except FileNotFoundError:
        raise BlitzError(
            f"--exclude {path} does not exist: pass the doctor.csv that blitz doctor wrote, or "
            "a list of images, one a line as sets.csv names them"
        ) from None
    except OSError as exc:
        raise BlitzError(f"cannot read --exclude {path}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", "surrogateescape")  # a file name's bytes, as sets.csv keeps them
    lines = text.splitlines()
    head = next(csv.reader(lines[:1]), [])
    if "image" in head:  # a table: doctor.csv, sets.csv
        column = head.index("image")
        rows = csv.reader(io.StringIO(text, newline=""))
        cells = (row[column] for row in list(rows)[1:] if len(row) > column and row[column])
        return set(map(cell_text, cells))  # doctor.csv's and sets.csv's text cells
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def exclude_images(data: ImageData, path: Path, log: Log) -> ImageData:
    """``data`` without the images ``path`` names, in every set; ``excluded`` records them."""
    listed = read_excluded(path)
    left_out: list[str] = []
    sets = {}
    for role, split in data.sets().items():
        ids = split.row_ids(role)
        keep = [row for row, image in enumerate(ids) if image not in listed]
        left_out += [image for image in ids if image in listed]
        if not keep:
            raise BlitzError(
                f"--exclude {path} names every image of the {SET_NAMES[role]} set: nothing "
                "would be left to train or test on"
            )
        sets[role] = split if len(keep) == len(ids) else split.subset(torch.tensor(keep), role)
    unknown = len(listed) - len(left_out)
    log(
        f"left out {len(left_out)} images that {path} names (--exclude)"
        + (f"; {unknown} it names are not in {data.name}" if unknown else "")
    )
    val = sets.get("val")
    test = val if data.test_is_val else sets.get("test")
    return replace(data, train=sets["train"], val=val, test=test, excluded=sorted(left_out))
