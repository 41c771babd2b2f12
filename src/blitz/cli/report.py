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
        metavar="FILE",
        help="the comparison page, with two or more runs (default: compare.html)",
    )


def main(args: argparse.Namespace) -> None:
    from blitz.errors import BlitzError
    from blitz.outputs.comparison import write_comparison
    from blitz.training.rundir import RunDir, check_output
    from blitz.workflows.finished import rebuild_report

    run_dirs = [RunDir(d) for d in args.run_dirs]
    if len(run_dirs) == 1 and args.out:
        raise BlitzError(
            f"--out names the page that compares two or more runs; one run's report is always "
            f"{run_dirs[0].report}: leave --out out, or name more runs"
        )
    if len(run_dirs) == 1:
        print(f"wrote {rebuild_report(run_dirs[0], log=print)}")
    else:
        out = args.out or Path("compare.html")
        check_output(out, "the comparison page", ".html")
        print(f"wrote {write_comparison(run_dirs, out)}")
