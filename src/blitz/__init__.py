"""blitz: train and test image classifiers with PyTorch (the 60 Minute Blitz as real software).

From Python: ``blitz.train(data="shapes", epochs=3)`` and ``blitz.load(run_dir)`` give a
``blitz.Run`` (see ``blitz.api``); ``blitz.doctor(data)`` checks data before a run,
``blitz.tune(...)`` searches the settings, ``blitz.serve(run_dir)`` serves a run."""

from __future__ import annotations

from typing import Any

from blitz.errors import BlitzError  # light: what every blitz error is
from blitz.version import __version__ as __version__

__all__ = ["BlitzError", "Run", "doctor", "load", "serve", "train", "tune"]


def __getattr__(name: str) -> Any:
    # on first use, so that `import blitz` (and the CLI's start) stays light: no torch
    if name in __all__:
        from blitz import api

        return getattr(api, name)
    raise AttributeError(f"module 'blitz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
