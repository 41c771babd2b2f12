"""A finished run as a web service: ``blitz serve`` (a page, a JSON API with dynamic batching,
health, readiness and Prometheus metrics), on FastAPI and uvicorn. Needs ``pip install
'blitz[serve]'``. Importing this package is light: the server's modules load when it starts."""

from __future__ import annotations

import os
from typing import Any

from blitz.errors import BlitzError


def run(run_dir: str | os.PathLike, **options: Any) -> None:
    """Serve a finished run until stopped (Ctrl-C, SIGTERM); ``options``: ``blitz serve``'s
    options as keywords (``port=8080``, ``backend="onnx"``, ``cors=("https://x.org",)``)."""
    try:
        from blitz.serving.options import build_options
        from blitz.serving.server import serve
    except ImportError as exc:
        raise BlitzError(
            f"blitz serve needs FastAPI, uvicorn, prometheus-client and python-multipart "
            f"({exc.name} is missing): pip install 'blitz[serve]'"
        ) from None
    serve(build_options(run_dir, **options))
