"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, say how to resume."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopFlag:
    """Set by the handler; the loop looks at it between steps, where stopping loses nothing."""

    signum: int = 0


class StopRequested(Exception):
    """Training stopped on a signal after saving a checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While inside, the first SIGINT/SIGTERM sets the flag; a second one acts at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # handlers are main-only
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        flag.signum = signum
        # the user who presses Ctrl-C twice does not want to wait for a checkpoint
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """While inside (main thread), SIGTERM raises SystemExit(143) instead of ending the process
    at once, so the ``with`` blocks around unwind and close what they opened (a pool of
    decoding processes would otherwise be left running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
