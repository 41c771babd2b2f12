"""``doctor.csv``: one finding a row, in the page's order. Its ``image`` column names the image
to act on as ``sets.csv`` does, so ``blitz train --exclude doctor.csv`` leaves those out
(delete the rows you disagree with first)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from blitz.diagnosis.findings import Finding
from blitz.utils.writes import write_atomic

COLUMNS = ("kind", "image", "set", "label", "suggested", "score", "other", "other_set",
           "other_label", "detail", "advice")  # fmt: skip


def write_csv(findings: list[Finding], path: Path) -> Path:
    """Write the findings, one a row, to ``path``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for f in findings:
        writer.writerow((f.kind, f.image, f.role, f.label, f.suggested, f"{f.score:.4f}",
                         f.other, f.other_role, f.other_label, f.detail, f.advice))  # fmt: skip
    # a file name that is not UTF-8 keeps its bytes, as in sets.csv: --exclude finds the file
    write_atomic(path, out.getvalue().encode("utf-8", "surrogateescape"))
    return path
