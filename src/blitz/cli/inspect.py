"""``blitz inspect``: the seed's walk-through of a network, a loss, backprop and an update."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="the seed's walk-through: network, loss, backprop, update")
    p.add_argument("--model", default="lenet")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    from blitz.models.walkthrough import walk_through

    walk_through(args.model, args.in_channels, args.seed)
