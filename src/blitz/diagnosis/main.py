"""The whole of ``blitz doctor``: check, then write ``doctor.html`` and ``doctor.csv``."""

from __future__ import annotations

from pathlib import Path

from blitz.data.dataset import Log
from blitz.diagnosis.check import Checks, diagnose
from blitz.diagnosis.csvout import write_csv
from blitz.diagnosis.findings import Diagnosis
from blitz.diagnosis.page import write_page
from blitz.errors import BlitzError


def run_doctor(
    spec: str | None, run: Path | None, checks: Checks, out: Path, log: Log
) -> Diagnosis:
    """Check ``spec`` (or ``run``'s sets) and write the page and the table into ``out``
    (made if missing); the diagnosis records their paths in ``files``."""
    if out.exists() and not out.is_dir():
        raise BlitzError(f"--out {out} is a file: name a folder for doctor.html and doctor.csv")
    diagnosis = diagnose(spec, run, checks, log)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BlitzError(f"cannot make the folder {out}: {exc.strerror or exc}") from None
    diagnosis.files = {
        "html": write_page(diagnosis, out / "doctor.html"),
        "csv": write_csv(diagnosis.findings, out / "doctor.csv"),
    }
    return diagnosis
