"""``blitz show``: a grid of images with their labels, as the seed shows them."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="write a grid of images with their labels (the seed's look)")
    p.add_argument("--data", default="auto", metavar="SPEC", help="data source (default: auto)")
    p.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="a run's own data and sets (sets.csv)"
    )
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--count", type=int, default=8, help="how many images (default: 8)")
    p.add_argument("--out", type=Path, default=Path("images.png"), metavar="FILE.png")


def main(args: argparse.Namespace) -> None:
    from blitz.data.dataset import label_text
    from blitz.errors import BlitzError
    from blitz.outputs.plots import save_image_grid
    from blitz.training.rundir import check_output
    from blitz.workflows.record import sample_rows

    if args.count < 1:
        raise BlitzError(f"invalid --count {args.count}: expected an integer >= 1")
    check_output(args.out, "the image grid", ".png")
    data = _show_data(args)
    split = getattr(data, args.split)
    if split is None or (args.split == "test" and data.test_is_val):
        missing = "validation" if args.split == "val" else "test"
        raise BlitzError(f"{data.name} has no {missing} set: add a {args.split}/ folder to it")
    rows = sample_rows(args.count, len(split))
    names = label_text(split.labels[rows], data.classes)  # a multi-label image's: "cat, dog"
    save_image_grid(split.images_at(rows), names, args.out)
    print(" | ".join(names) if data.multi_label else " ".join(f"{n:>5s}" for n in names))
    print(f"wrote {args.out}")


def _show_data(args: argparse.Namespace):
    """``--data`` with its sets as blitz makes them, or with ``--run`` the run's own."""
    from blitz.data.sources import load_data
    from blitz.errors import BlitzError
    from blitz.training.rundir import RunDir

    if args.run is None:
        return load_data(args.data)
    if args.data != "auto":
        raise BlitzError("--run shows the run's own data: drop --data")
    run_dir = RunDir(args.run)
    if not run_dir.config.is_file():
        raise BlitzError(f"{run_dir} holds no config.json: pass a run directory to --run")
    return load_data(run_dir.read_config().data, print, run_dir.read_sets())
