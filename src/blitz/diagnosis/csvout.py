"""``doctor.csv``: one finding a row, in the page's order. Its ``image`` column names the image
to act on as ``sets.csv`` does, so ``blitz train --exclude doctor.csv`` leaves those out
(delete the rows you disagree with first). Text cells are written as ``utils.cells`` says: a
name that begins like a formula gets an apostrophe in front, which ``--exclude`` takes off."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from blitz.diagnosis.findings import Finding
from blitz.utils.cells import text_cell
from blitz.utils.writes import write_atomic

COLUMNS = ("kind", "image", "set", "label", "suggested", "score", "other", "other_set",
           "other_label", "detail", "advice")  # fmt: skip


def write_csv(findings: list[Finding], path: Path) -> Path:
    """Write the findings, one a row, to ``path``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for f in findings:
        texts = (f.kind, f.image, f.role, f.label, f.suggested)
        more = (f.other, f.other_role, f.other_label, f.detail, f.advice)
        writer.writerow([*map(text_cell, texts), f"{f.score:.4f}", *map(text_cell, more)])
    # a file name that is not UTF-8 keeps its bytes, as in sets.csv: --exclude finds the file
    write_atomic(path, out.getvalue().encode("utf-8", "surrogateescape"))
    return path
