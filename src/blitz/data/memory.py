"""The memory budget that decides between decoding a dataset into memory and streaming it from
disk (``data.max_memory``)."""

from __future__ import annotations

import os

from blitz.config.checks import parse_size

AUTO_SHARE = 4  # max_memory "auto": a quarter of the machine's memory (decoding needs more)


def memory_budget(max_memory: int | str) -> int:
    """Bytes of decoded images that may be held in memory (``data.max_memory``)."""
    size = parse_size(str(max_memory))
    return physical_memory() // AUTO_SHARE if size is None else size


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume a small machine
        return 8 * 2**30
