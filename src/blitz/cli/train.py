"""``blitz train``: train a classifier, test it, and write a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from blitz.api import DEFAULT_PRESET, KEYWORDS
from blitz.cli.options import add_setting_flag, overrides
from blitz.config.checks import FLAGS
from blitz.config.settings import TRAIN_FLAGS

if TYPE_CHECKING:
    from blitz.training.metrics import Metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a classifier, test it, and write a run directory")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a preset from `blitz presets` (default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings of your own instead of a preset: a .toml file in the presets' format "
        "(blitz presets --show NAME), or a run's config.json or directory to replay it; "
        "the other options override it",
    )
    for flag in TRAIN_FLAGS.values():  # each declared once, with its setting (config.option)
        add_setting_flag(p, flag)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, e.g. --set optim.weight_decay=5e-4 (repeatable)",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="URI",
        help="also log the run to MLflow: any tracking URI (default: MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db here); needs pip install 'blitz[mlflow]'",
    )
    p.add_argument("--out", type=_folder, metavar="DIR", help="run directory (default: runs/...)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its newest checkpoint, with its saved settings",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or running losses")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (DDP through torchrun; one per GPU)",
    )


def main(args: argparse.Namespace, started: float, argv: list[str]) -> None:
    from blitz.api import run_training
    from blitz.errors import BlitzError
    from blitz.training.distributed import World, check_batch_size, launch, launched_by_torchrun

    if args.devices < 1:
        raise BlitzError(f"invalid --devices {args.devices}: expected an integer >= 1")
    plan = train_plan(args)
    if args.devices > 1 and not launched_by_torchrun():
        check_batch_size(plan.cfg.train.batch_size, World(size=args.devices))
        if plan.resume is None:
            plan.run_dir.prepare(args.overwrite)
        pinned = [] if args.resume else ["--out", str(plan.run_dir), "--overwrite"]
        launch(args.devices, _without_devices(argv) + pinned)
        return

    def summary(metrics: Metrics) -> None:  # the result, before seconds of drawing the report
        kept = "best validation" if metrics.kept == "best" else "last"
        # a resumed run's training adds up every process's; its total is this process's
        total = "this process" if plan.resume is not None else "total"
        print(
            metrics.headline  # test accuracy, or a multi-label run's macro mAP
            + f" | weights of epoch {metrics.kept_epoch} of {metrics.epochs} ({kept})"
            f" | training {metrics.train_seconds:.1f} s | {total} {metrics.total_seconds:.1f} s"
            f" | run directory: {plan.run_dir}",
            flush=True,
        )

    run_training(plan, args.overwrite, args.quiet, args.mlflow, started, summary)


def train_plan(args: argparse.Namespace):
    """The settings, the run directory and the checkpoint to resume from (if any); nothing is
    written yet."""
    from blitz.api import plan_resume, plan_training

    if args.resume:
        _refuse_settings_with_resume(args)
        return plan_resume(args.resume)
    return plan_training(args.preset, overrides(args), args.out, args.config)


def _folder(text: str) -> Path:
    # Path("") is ".": `--out "$UNSET"` would write the run among the current folder's files
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path: name the run directory, or leave --out out"
        )
    return Path(text)


def _without_devices(argv: list[str]) -> list[str]:
    """The train command line minus --devices (and --out, which the caller sets)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--devices", "--out"):
            skip = True
        elif not arg.startswith(("--devices=", "--out=")):
            out.append(arg)
    return out


def _refuse_settings_with_resume(args: argparse.Namespace) -> None:
    from blitz.api import refuse_changes_on_resume

    given = [FLAGS[key] for word, key in KEYWORDS.items() if getattr(args, word) is not None]
    names = ("preset", "config", "set", "out", "overwrite")
    given += [f"--{name}" for name in names if getattr(args, name)]
    refuse_changes_on_resume("--resume", args.resume, given)
