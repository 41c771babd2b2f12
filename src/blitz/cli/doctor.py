"""``blitz doctor DATA``: what is wrong in the data, before it costs a training run."""

from __future__ import annotations

import argparse
from pathlib import Path

from blitz.api import DEFAULT_PRESET  # light: no torch import
from blitz.diagnosis.findings import DEFAULT_FOLDS, NEAR_BITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``doctor`` subcommand's options."""
    p = sub.add_parser(
        "doctor",
        help="find leakage, copies, bad files, imbalance and likely label errors in data",
    )
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="a --data spec of blitz train (default: auto); not with --run")  # fmt: skip
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="check the sets a finished run used (sets.csv), its model scoring "
                   "its validation and test images")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("doctor"), metavar="DIR",
                   help="where doctor.html and doctor.csv go (default: ./doctor)")  # fmt: skip
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                   help=f"cross-validation folds for the label check (default: {DEFAULT_FOLDS}; "
                   "0: no label check)")  # fmt: skip
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"the cheap preset each fold trains (default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        metavar="N",
        help="training steps per fold (default: the preset's)",
    )
    p.add_argument("--near-bits", type=int, default=NEAR_BITS, metavar="B",
                   help=f"perceptual hashes at most B of 64 bits apart are near copies "
                   f"(default: {NEAR_BITS})")  # fmt: skip
    for flag in ("--val-fraction", "--test-fraction"):
        p.add_argument(flag, type=float, metavar="F",
                       help=f"as blitz train {flag} (the same sets as a run given it)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="print only the summary")


def main(args: argparse.Namespace) -> int:
    """Check, write the page and the table, print the summary."""
    from blitz.api import doctor
    from blitz.diagnosis.summary import format_summary

    settings = {
        f"data.{key}": value
        for key in ("val_fraction", "test_fraction")
        if (value := getattr(args, key)) is not None
    }
    diagnosis = doctor(
        args.data, run=args.run, out=args.out, preset=args.preset, folds=args.folds,
        steps=args.steps, near_bits=args.near_bits, settings=settings, quiet=args.quiet,
    )  # fmt: skip
    print(format_summary(diagnosis))
    for path in diagnosis.files.values():
        print(f"wrote {path}")
    return 0
