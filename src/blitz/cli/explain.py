"""``blitz explain``: Grad-CAM heat maps of a run's decisions over image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="heat maps (Grad-CAM) of where a run sees its class")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for the heat maps (PNG)"
    )
    p.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="explain this class on every image (default: each image's predicted class)",
    )


def main(args: argparse.Namespace) -> int:
    """Exit status 1 when some files could not be read or decoded (each is named on stderr)."""
    from blitz.outputs.explain import explain_files, format_explanation, require_grad_cam
    from blitz.outputs.predict import collect_images
    from blitz.training.rundir import RunDir

    require_grad_cam()  # before the model is loaded: a missing package is said first
    ckpt = RunDir(args.run_dir).load_model()
    files = collect_images(args.images)
    done = explain_files(ckpt.model, ckpt.build_model(), files, args.out, args.class_name)
    for explanation in done:
        print(format_explanation(explanation))
    skipped = len(files) - len(done)
    if skipped:
        print(f"blitz: skipped {skipped} of {len(files)} files (named above)", file=sys.stderr)
    return 1 if skipped else 0
