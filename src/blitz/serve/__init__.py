"""A finished run as a web service: ``blitz serve`` (a page, a JSON API with dynamic batching,
health, readiness and Prometheus metrics), on FastAPI and uvicorn. Needs ``pip install
'blitz[serve]'``. Importing this package is light: the server's modules load when it starts."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from blitz.errors import BlitzError


def run(run_dir: str | os.PathLike, **options: Any) -> None:
    """Serve a finished run until stopped (Ctrl-C, SIGTERM); ``options``: ``blitz serve``'s
    options as keywords (``port=8080``, ``backend="onnx"``, ``cors=("https://x.org",)``)."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise BlitzError(f"blitz.serve: run_dir must be a path, not {type(run_dir).__name__}")
    try:
        from blitz.serve.options import build_options
        from blitz.serve.server import serve
    except ImportError as exc:
        raise BlitzError(
            f"blitz serve needs FastAPI, uvicorn, prometheus-client and python-multipart "
            f"({exc.name} is missing): pip install 'blitz[serve]'"
        ) from None
    serve(build_options(run_dir, **options))


class _CallablePackage(types.ModuleType):
    """``blitz.serve`` names this package and, at the package root, the function that serves
    a run (``blitz.serve(run_dir, port=8080)``): one name, so the package is callable."""

    def __call__(self, run_dir: str | os.PathLike, **options: Any) -> None:
        run(run_dir, **options)


sys.modules[__name__].__class__ = _CallablePackage
