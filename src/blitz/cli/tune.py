"""``blitz tune``: search the settings on validation (Optuna), test the winner once."""

from __future__ import annotations

import argparse
from pathlib import Path

from blitz.api import DEFAULT_PRESET
from blitz.cli.options import add_setting_flag, overrides
from blitz.config.settings import TRAIN_FLAGS

PRUNERS = ("median", "hyperband", "none")  # blitz.tuning.job.PRUNERS (not imported: it is heavy)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search the settings on validation (Optuna), then train the winner and test it once",
        description="Trials are blitz runs scored on validation only (the test set is held out); "
        "any option of blitz train fixes that setting for every trial (--max-steps 200: a short "
        "budget). The study lives in SQLite under --out: --resume continues it.",
    )
    p.add_argument("source", nargs="?", metavar="DATA", help="the data, as --data takes it")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the study's folder")
    p.add_argument("--preset", metavar="NAME", help=f"settings to start from ({DEFAULT_PRESET})")
    p.add_argument("--config", type=Path, metavar="FILE", help="or a settings file to start from")
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="finished or pruned trials the study is to have (default: 20)",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="J",
        help="trials at once, each in its own process (default: 1)",
    )
    p.add_argument(
        "--space",
        type=Path,
        metavar="FILE.toml",
        help="a [space] table to search instead of the preset's default space",
    )
    p.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="stops poor trials early on their epochs' validation (default: median)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database (default: sqlite under --out); several processes "
        "or machines given one URL work on one study",
    )
    p.add_argument("--study", default="blitz", metavar="NAME", help="the study's name in it")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the study in --out (or --storage) with its recorded settings",
    )
    p.add_argument(
        "--search-only",
        action="store_true",
        help="run trials only: no results, no test (a worker on another machine)",
    )
    p.add_argument(
        "--search",
        choices=("tpe", "random"),
        default="tpe",
        help="how trials' settings are drawn (default: tpe; random: a baseline)",
    )
    p.add_argument("--search-seed", type=int, default=0, metavar="N",
                   help="seed of the sampler (default: 0)")  # fmt: skip
    for flag in TRAIN_FLAGS.values():  # fixed for every trial
        add_setting_flag(p, flag)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting, fixed for every trial (repeatable)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> None:
    from blitz.api import tune
    from blitz.errors import BlitzError

    if args.source is not None and args.data is not None:
        raise BlitzError(
            f"the data is given twice ({args.source} and --data {args.data}): give one"
        )
    fixed = overrides(args)  # --data and every other train option given, by setting key
    tune(
        args.source,
        args.preset,
        out=args.out,
        config=args.config,
        space=args.space,
        trials=args.trials,
        timeout=args.timeout,
        jobs=args.jobs,
        pruner=args.pruner,
        storage=args.storage,
        study=args.study,
        resume=args.resume,
        search_only=args.search_only,
        search_seed=args.search_seed,
        search=args.search,
        quiet=args.quiet,
        set=fixed,
    )
