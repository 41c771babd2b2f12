"""``blitz lr-find``: the learning-rate range test."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from blitz.api import DEFAULT_PRESET
from blitz.cli.options import add_setting_flag, overrides
from blitz.config.settings import TRAIN_FLAGS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: loss against lr, a suggestion")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"(default: {DEFAULT_PRESET})")
    for key in ("data.source", "model.name", "train.batch_size", "optim.name"):
        add_setting_flag(p, TRAIN_FLAGS[key])
    p.add_argument("--steps", type=int, default=300, help="steps of the sweep (default: 300)")
    p.add_argument("--out", type=Path, default=Path("lr_find.png"), metavar="FILE.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> None:
    from blitz.data.sources import load_data
    from blitz.errors import BlitzError
    from blitz.models.configs import build_config
    from blitz.outputs.plots import lr_find_png
    from blitz.training.rundir import check_output
    from blitz.utils.writes import write_atomic
    from blitz.workflows.lrfind import lr_find, suggested_settings
    from blitz.workflows.runs import set_up

    if args.steps < 5:
        raise BlitzError(f"invalid --steps {args.steps}: expected an integer >= 5")
    check_output(args.out, "the lr-find plot", ".png")
    cfg = build_config(args.preset, overrides(args))
    ctx = set_up(cfg, None, print, args.quiet, time.perf_counter())  # as train's, writing nothing
    sweep = lr_find(ctx, load_data(ctx.cfg.data), args.steps)
    write_atomic(args.out, lr_find_png(sweep.lrs, sweep.losses, sweep.suggestion))
    print(f"wrote {args.out} ({len(sweep.lrs)} steps, up to lr {sweep.lrs[-1]:.2g})")
    settings = suggested_settings(ctx.cfg.optim, sweep.suggestion)
    others = "".join(f" --set {k}={v:.2g}" for k, v in settings.items() if k != "optim.lr")
    lr = f"{sweep.suggestion:.2g}"
    print(f"suggested learning rate: {lr} (blitz train --lr {lr}{others})")
