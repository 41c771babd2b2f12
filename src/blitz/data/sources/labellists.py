"""Whether a table's label cells name one class each or list several (multi-label), and the
labels of each cell: the table's ``--task`` decided (or detected, and said), its delimiter
checked against the others tables use, so that nothing silently becomes single-label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from blitz.config.checks import option_name
from blitz.config.data_settings import LABEL_DELIMITER
from blitz.errors import BlitzError

SEPARATORS = (",", ";", "|", "\t", " ")  # how tables list several labels in a cell
SINGLE, MULTI = "single-label", "multi-label"


def split_labels(cell: str, delimiter: str) -> tuple[str, ...]:
    """The labels a cell lists, in order, each once (blank parts, as a doubled space, dropped)."""
    parts = (part.strip() for part in cell.split(delimiter))
    return tuple(dict.fromkeys(part for part in parts if part))


def decide_task(cells: Sequence[str], lines: Sequence[int], task: str, delimiter: str,
                path: Path) -> tuple[bool, str]:  # fmt: skip
    """(multi-label?, what was decided and why, for the terminal) for a table's label cells
    (``lines``: the table's line of each); a list in a single-label table, mixed delimiters and
    empty labels where they cannot be meant are BlitzErrors naming a line."""
    parts = [split_labels(cell, delimiter) for cell in cells]
    several = [i for i, p in enumerate(parts) if len(p) > 1]
    alone = {p[0] for p in parts if len(p) == 1}
    detected = any(set(parts[i]) <= alone for i in several) or 2 * len(several) > len(cells)
    if task == "auto" and not detected:
        task = SINGLE
        why = "each label cell names one class"
        if several:  # cells with the delimiter in them that do not look like lists
            why += f" (those with {delimiter!r} in them, as {cells[several[0]]!r}, read whole)"
    elif task == "auto":
        task = MULTI
        why = f"{len(several)} of {len(cells)} label cells list several, split by {delimiter!r}"
    else:
        why = "--task"
    multi = task == MULTI
    if multi:
        _check_mixed(cells, lines, parts, delimiter, path)
    else:
        _check_single(cells, lines, delimiter, path, by_hand=why == "--task")
    if not any(parts) and cells:
        raise BlitzError(
            f"{path}: the label column is empty in every row: give each image its labels "
            "(an empty cell means an image with none of them)"
        )
    said = why if why == "--task" else f"{why}; --task to choose"  # chosen, or found
    return multi, f"{path}: task {task} ({said})"


def _lists(cells: Sequence[str], separator: str, known: set[str] | None) -> list[int]:
    """The cells that list several of the ``known`` labels (None: any), split by ``separator``."""
    found = []
    for i, cell in enumerate(cells):
        parts = split_labels(cell, separator)
        if len(parts) > 1 and (known is None or set(parts) <= known):
            found.append(i)
    return found


def _check_single(
    cells: Sequence[str], lines: Sequence[int], delimiter: str, path: Path, by_hand: bool
) -> None:
    """A single-label table: none of its cells lists classes of other rows; nor, unless the task
    was chosen by hand, do most cells look like lists (``a;b``) of any labels; and no cell is
    empty (said after the lists: a table of lists with some empty cells is multi-label)."""
    known = set(cells) - {""}
    for separator in dict.fromkeys((delimiter, *SEPARATORS)):
        found = _lists(cells, separator, known)
        if not found and not by_hand and separator != " ":  # a class name may hold spaces
            found = _lists(cells, separator, None)
            found = found if 2 * len(found) > len(cells) else []
        if found:
            cell = cells[found[0]]
            flag = "" if separator == LABEL_DELIMITER else f" --label-delimiter {separator!r}"
            raise BlitzError(
                f"{path}, line {lines[found[0]]}: the label {cell!r} lists several classes "
                f"({', '.join(map(repr, split_labels(cell, separator)))}), as {len(found)} "
                f"row{'s' * (len(found) > 1)} do, but the task is {SINGLE}: pass "
                f"--task {MULTI}{flag} to train several labels per image, or give each image "
                "one label"
            )
    for cell, line in zip(cells, lines):  # after the lists: an empty cell may be one of them
        if not cell:
            raise BlitzError(
                f"{path}, line {line} has an empty label: fill it in or remove the row (an image "
                f"with no labels is allowed with --task {MULTI})"
            )


def _check_mixed(cells: Sequence[str], lines: Sequence[int], parts: list[tuple[str, ...]],
                 delimiter: str, path: Path) -> None:  # fmt: skip
    """A multi-label table lists its labels with one delimiter: a cell that lists known labels
    with another (``cat;dog`` where the delimiter is a space) would become a class of its own."""
    known = {label for labels in parts for label in labels}
    for separator in SEPARATORS:
        if separator in delimiter or (separator == " " and delimiter != LABEL_DELIMITER):
            continue  # a class name may hold a space where another delimiter is chosen
        if found := _lists(cells, separator, known):
            raise BlitzError(
                f"{path}, line {lines[found[0]]}: the label cell {cells[found[0]]!r} lists "
                f"labels separated by {separator!r}, but {option_name('data.label_delimiter')} "
                f"is {delimiter!r} (mixed delimiters, in {len(found)} of {len(cells)} rows): use "
                "one delimiter in every row, and name it with --label-delimiter"
            )
