"""Copies: exact ones (the same decoded pixels) and near ones (a resized, re-encoded or lightly
edited copy: perceptual hashes a few bits apart), within a set and across the sets (leakage:
a test image the model trained on scores what it memorised, not what it learnt)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from blitz.data.roles import SET_NAMES
from blitz.diagnosis.findings import NEAR_BITS, Finding
from blitz.diagnosis.scan import ImageFacts

# A near pair's 16x16 grey thumbnails differ by at most this much per pixel (of 255), on
# average: resized and re-encoded copies of CIFAR-10 images differ by under 4, while distinct
# images whose hashes happen to be close (plain shapes, skies) differ by 9 or more.
NEAR_PIXELS = 6.0
KEEP_ORDER = {"test": 0, "val": 1, "train": 2}  # of two copies, keep the held-out one
PAIR_BLOCK = 4_000_000  # hash comparisons per numpy block (32 MB)
MAX_PAIRS = 100_000  # near pairs kept: a folder of blank frames must not fill the memory


def exact_groups(facts: list[ImageFacts]) -> list[list[ImageFacts]]:
    """Images with the same decoded pixels, in groups of two or more, the one kept first."""
    return [group for group in _by_digest(facts) if len(group) > 1]


def near_pairs(hashes: np.ndarray, bits: int) -> Iterator[tuple[int, int, int]]:
    """(i, j, distance) for each pair i < j of 64-bit hashes at most ``bits`` apart, compared
    all against all in blocks (N^2 / 2 popcounts: CIFAR-10's 60,000 images in seconds)."""
    hashes = hashes.astype(np.uint64)
    rows = max(1, PAIR_BLOCK // max(len(hashes), 1))
    found = 0
    for start in range(0, len(hashes), rows):
        block = hashes[start : start + rows, None] ^ hashes[None, start:]
        distance = np.bitwise_count(block)
        i, j = np.nonzero(distance <= bits)
        keep = j > i  # j counts from start: the pair's second image comes after the first
        for a, b in zip(i[keep], j[keep]):
            yield start + int(a), start + int(b), int(distance[a, b])
            found += 1
            if found >= MAX_PAIRS:
                return


def exact_findings(groups: list[list[ImageFacts]], classes: list[str]) -> list[Finding]:
    """Per group, a finding for every copy but the one kept (the held-out one): leakage where
    the sets differ, two labels where the labels do."""
    out = []
    for group in groups:
        kept = group[0]
        for copy in group[1:]:
            kind = (
                "two-labels" if copy.label != kept.label
                else "leak" if copy.role != kept.role else "duplicate"
            )  # fmt: skip
            out.append(_pair(kind, copy, kept, classes, 1.0, "the same pixels as"))
    return out


def near_findings(
    facts: list[ImageFacts],
    classes: list[str],
    bits: int = NEAR_BITS,
    field: str = "phash",
    pixels: float | None = NEAR_PIXELS,
) -> list[Finding]:
    """Near copies: a perceptual hash (``field``: phash or dhash) at most ``bits`` apart and,
    unless ``pixels`` is None, small thumbnails at most ``pixels`` apart on average; nearest
    first. Each image is named once; exact copies are not counted again."""
    unique = [group[0] for group in _by_digest(facts)]
    hashes = np.array([getattr(f, field) for f in unique], dtype=np.uint64)
    pairs = sorted(near_pairs(hashes, bits), key=lambda p: p[2])
    flagged: set[str] = set()
    out = []
    for i, j, distance in pairs:
        kept, copy = sorted((unique[i], unique[j]), key=_kept_first)
        if copy.image in flagged or kept.image in flagged:
            continue
        if pixels is not None and _pixel_distance(copy, kept) > pixels:
            continue
        flagged.add(copy.image)
        kind = "near-leak" if copy.role != kept.role else "near-duplicate"
        what = f"{distance} of 64 bits of its perceptual hash differ from"
        out.append(_pair(kind, copy, kept, classes, 1 - distance / 64, what))
    return out


def _pixel_distance(a: ImageFacts, b: ImageFacts) -> float:
    """Mean absolute difference of two images' small grey thumbnails (0 to 255)."""
    x, y = (np.frombuffer(f.small, dtype=np.uint8).astype(np.int16) for f in (a, b))
    return float(np.abs(x - y).mean())


def _by_digest(facts: list[ImageFacts]) -> list[list[ImageFacts]]:
    """Readable images grouped by their pixels, each group's kept image first."""
    groups: dict[bytes, list[ImageFacts]] = {}
    for image in facts:
        if image.digest:
            groups.setdefault(image.digest, []).append(image)
    return [sorted(group, key=_kept_first) for group in groups.values()]


def _kept_first(image: ImageFacts) -> tuple[int, str]:
    return KEEP_ORDER[image.role], image.image


def _pair(
    kind: str, copy: ImageFacts, kept: ImageFacts, classes: list[str], score: float, how: str
) -> Finding:
    where = f"the {SET_NAMES[kept.role]} image {kept.image}"
    labels = (
        f", labelled {classes[kept.label]!r}, not {classes[copy.label]!r}"
        if kept.label != copy.label else ""
    )  # fmt: skip
    return Finding(
        kind, copy.image, copy.role, classes[copy.label], kept.image, kept.role,
        classes[kept.label], score=round(score, 4), detail=f"{how} {where}{labels}",
    )  # fmt: skip
