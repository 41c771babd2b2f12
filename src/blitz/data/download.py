"""Downloads into the cache: a silent network gives up quickly, and any failure is one error."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from blitz.errors import BlitzError

DOWNLOAD_TIMEOUT = 15  # seconds without an answer before a download gives up


@contextmanager
def downloading(failure: str) -> Iterator[None]:
    """Run a download with ``DOWNLOAD_TIMEOUT``; an error in it becomes ``failure: reason``."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        yield
    except (OSError, RuntimeError) as exc:  # no network, a refused or cut connection, a full disk
        raise BlitzError(f"{failure}: {exc}") from None
    finally:
        socket.setdefaulttimeout(old)
