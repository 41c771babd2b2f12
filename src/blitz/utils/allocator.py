"""glibc's malloc, set for training on a CPU.

By default glibc hands a freed block larger than its mmap threshold (128 KB at first, raised
as blocks are freed) back to the system, and a heap whose top grows past the trim threshold is
cut back: the next batch's activations, megabytes each, then come from fresh pages that the
kernel must fault in and zero, step after step. Fixed thresholds keep that memory for reuse,
as the allocators PyTorch's CPU performance guide suggests preloading (jemalloc, TCMalloc) do.
Measured on blitz's 2-core CPU, fast-cpu's 300 steps (its recipe then), 5 pairs of processes
back to back: 4.74 s against 5.26 s (medians; faster in every pair), the same weights.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt's parameters, as glibc's malloc.h numbers them
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # blocks past 64 MB still go back to the system when freed
TRIM_THRESHOLD = 256 << 20  # at most this much free memory kept at the heap's top


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds (glibc only; elsewhere nothing happens). Returns
    whether they were set. For the command line: a notebook's process is its user's."""
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""  # None: not said
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name
        return False
    if not libc_version.startswith("glibc"):  # musl, for one
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return mmap == 1 and trim == 1
