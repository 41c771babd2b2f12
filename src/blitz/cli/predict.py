"""``blitz predict``: classify image files with a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=1, help="classes per image (default: 1)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write the predictions as CSV")
    p.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="label an image unknown when its top (calibrated) probability is below P",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="the network's own probabilities, without the run's temperature scaling",
    )


def main(args: argparse.Namespace) -> int:
    """Exit status 1 when some files could not be classified (each is named on stderr)."""
    from blitz.errors import BlitzError
    from blitz.outputs.predict import (
        check_min_confidence,
        collect_images,
        format_prediction,
        predict_files,
        write_csv,
    )
    from blitz.training.rundir import RunDir, check_output

    if args.top_k < 1:
        raise BlitzError(f"invalid --top-k {args.top_k}: expected an integer >= 1")
    check_min_confidence(args.min_confidence)
    if args.csv:
        check_output(args.csv, "the CSV")  # before the work, not after it
    ckpt = RunDir(args.run_dir).load_model()
    if ckpt.model.multi_label and args.min_confidence is not None:
        raise BlitzError(
            "--min-confidence is for single-label runs: a multi-label run answers every label "
            "over its class's threshold (chosen on the validation set)"
        )
    files = collect_images(args.images)
    model = ckpt.build_model()
    predictions = predict_files(ckpt.model, model, files, args.top_k, calibrated=not args.raw)
    labels = [ckpt.model.labels_over(top) for _, top in predictions]
    for prediction, over in zip(predictions, labels):
        print(format_prediction(prediction, args.min_confidence, over))
    if args.csv:
        sets = None if not ckpt.model.multi_label else [over or [] for over in labels]
        write_csv(predictions, args.csv, args.min_confidence, sets, ckpt.cfg.data.label_delimiter)
        print(f"wrote {args.csv}")
    skipped = len(files) - len(predictions)
    if skipped:
        print(f"blitz: skipped {skipped} of {len(files)} files (named above)", file=sys.stderr)
    return 1 if skipped else 0
