"""``blitz serve RUN_DIR``: a run as a web page and a JSON API (``blitz.serve``). The defaults
live in ``blitz.serving.options.Options``; an option not given is None here."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

OPTIONS = [  # flag, type, metavar, help; the default is said from blitz.serving's Options
    ("--host", str, "ADDRESS", "address to listen on (loopback: this machine only)"),
    ("--port", int, "PORT", "port to listen on"),
    ("--max-batch", int, "N", "images per forward pass, gathered from concurrent requests (1 "
     "turns batching off)"),
    ("--max-wait-ms", float, "MS", "how long an idle model waits for requests to fill its batch"),
    ("--max-queue", int, "N", "images that may wait for the model; past them, 503 with "
     "Retry-After"),
    ("--max-images", int, "N", "images in one request at most"),
    ("--max-mb", float, "MB", "request body size at most"),
    ("--top-k", int, "K", "classes per image in an answer (a request may ask ?top_k=K)"),
    ("--token", str, "TOKEN", "a bearer token every request must carry (default: the "
     "BLITZ_TOKEN variable); /, /health and /ready stay open"),
    ("--workers", int, "N", "processes, each with its own model"),
    ("--threads", int, "N", "torch's threads in each worker (default: its share of the cores "
     "less one, left to the HTTP side)"),
]  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    from blitz.serving.options import BACKENDS, Options  # light: no torch, no FastAPI

    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    p = sub.add_parser(
        "serve", help="serve a run: a page to drop images on, and a JSON API with batching"
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help=f"PyTorch, or the run's ONNX export on ONNX Runtime (exported if missing, checked "
        f"against PyTorch at start-up; default: {defaults['backend']})",
    )
    for flag, kind, metavar, text in OPTIONS:
        default = defaults[flag[2:].replace("-", "_")]
        shown = f"{text} (default: {default:g})" if isinstance(default, float) else text
        shown = f"{text} (default: {default})" if isinstance(default, int | str) else shown
        p.add_argument(flag, type=kind, metavar=metavar, help=shown)
    p.add_argument(
        "--cors",
        action="append",
        metavar="ORIGIN",
        help="let pages from ORIGIN call the API (repeatable; default: no other origin)",
    )


def main(args: argparse.Namespace) -> int:
    from blitz.serving import run

    names = ["backend"] + [flag[2:].replace("-", "_") for flag, *_ in OPTIONS]
    run(args.run_dir, cors=tuple(args.cors or ()), **{name: getattr(args, name) for name in names})
    return 0
