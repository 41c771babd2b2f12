"""Files that do not decode (empty, truncated, corrupt), and images unlike the rest: a rare
mode (CMYK among RGB photos), a size far from the usual one, an aspect ratio far from it."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from blitz.diagnosis.findings import Finding
from blitz.diagnosis.scan import ImageFacts

RARE_MODE = 0.01  # a mode held by fewer than this share of the images is odd
SIZE_FACTOR = 4.0  # a side this many times smaller or larger than the median's is odd
ASPECT_FACTOR = 2.0  # an aspect ratio this many times off the median's is odd


def unreadable_findings(facts: list[ImageFacts], classes: list[str]) -> list[Finding]:
    """One finding per file that cannot be read, saying why."""
    return [
        Finding("unreadable", f.image, f.role, classes[f.label], detail=f.problem)
        for f in facts
        if f.problem
    ]


def odd_image_findings(facts: list[ImageFacts], classes: list[str]) -> list[Finding]:
    """Images whose mode is rare, or whose size or aspect ratio is far from the median's."""
    readable = [f for f in facts if not f.problem]
    if not readable:
        return []
    modes = Counter(f.mode for f in readable)
    usual = modes.most_common(1)[0][0]
    side = statistics.median(math.sqrt(f.width * f.height) for f in readable)
    aspect = statistics.median(f.width / f.height for f in readable)
    out = []
    for f in readable:
        odd = []
        if modes[f.mode] < RARE_MODE * len(readable):
            odd.append(f"mode {f.mode} ({modes[f.mode]} images; most are {usual})")
        size = math.sqrt(f.width * f.height) / side
        if not 1 / SIZE_FACTOR <= size <= SIZE_FACTOR:
            odd.append(f"{f.width}x{f.height} pixels (the median is about {side:.0f}x{side:.0f})")
        shape = (f.width / f.height) / aspect
        if not 1 / ASPECT_FACTOR <= shape <= ASPECT_FACTOR:
            odd.append(f"aspect ratio {f.width / f.height:.2f} (the median is {aspect:.2f})")
        if odd:
            # how far off, on a log scale, capped at 1: the worst are shown first
            far = max(abs(math.log(size)), abs(math.log(shape)), 0.5 * bool(odd))
            score = round(min(far / math.log(16), 1.0), 4)
            out.append(Finding("odd-image", f.image, f.role, classes[f.label], score=score,
                               detail="; ".join(odd)))  # fmt: skip
    return out
