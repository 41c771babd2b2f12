"""``blitz report``: rebuild a run's report.html, or compare several runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a run's report.html, or compare several runs")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("compare.html"),
        metavar="FILE",
        help="the comparison page, with two or more runs (default: compare.html)",
    )


def main(args: argparse.Namespace) -> None:
    from blitz.outputs.comparison import write_comparison
    from blitz.training.rundir import RunDir
    from blitz.utils.writes import check_output_file
    from blitz.workflows.finished import rebuild_report

    run_dirs = [RunDir(d) for d in args.run_dirs]
    if len(args.run_dirs) == 1:
        print(f"wrote {rebuild_report(run_dirs[0], log=print)}")
    else:
        check_output_file(args.out, "the comparison page", ".html")
        print(f"wrote {write_comparison(run_dirs, args.out)}")
