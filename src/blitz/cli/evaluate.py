"""``blitz eval``: test a finished run on its test set, or on other data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test a finished run on its test set (or another --data)")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", metavar="SPEC", help="data to test on (default: the run's own)")
    p.add_argument("--quiet", action="store_true", help="print only the results")


def main(args: argparse.Namespace) -> None:
    from blitz.training.rundir import RunDir
    from blitz.workflows.finished import eval_run

    eval_run(RunDir(args.run_dir), args.data, print if not args.quiet else _results_only())


RESULTS = ("Accuracy of the network", "multi-label figures")  # the lines --quiet keeps


def _results_only():
    def log(message: str) -> None:
        if message.startswith(RESULTS):
            print(message.splitlines()[0])  # a multi-label line, without its table per class

    return log
