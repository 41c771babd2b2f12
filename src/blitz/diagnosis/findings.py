"""A finding: one thing wrong with the data (an image, a pair, a class or a set), in the order
a person should read them: leakage across the sets first (it makes the test's figure a lie),
then what breaks or mislabels images, then what only skews them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FOLDS = 4  # cross-validation's folds: 4 cheap trainings, each on 3/4 of the images
# Bits (of 64) two perceptual hashes may differ by and still be a near copy (measured on
# CIFAR-10 by bench/doctor.py: see bench/RESULTS.md)
NEAR_BITS = 6

# kind -> its title on the page and in the terminal, in reading order
KINDS = {
    "leak": "Same image in two sets (leakage)",
    "near-leak": "Near copy in another set (leakage)",
    "two-labels": "Same image under two labels",
    "unreadable": "Unreadable files",
    "label": "Likely label errors",
    "duplicate": "Exact duplicates within a set",
    "near-duplicate": "Near duplicates within a set",
    "class-names": "Class names that differ only in case or punctuation",
    "imbalance": "Class balance",
    "odd-image": "Odd modes, sizes and aspect ratios",
}
# what a person can do about each kind (the page's and the CSV's suggestion)
ADVICE = {
    "leak": "drop the training copy (blitz train --exclude doctor.csv drops the image named)",
    "near-leak": "look: a resized or re-encoded copy of the other image; drop one of them",
    "two-labels": "the same pixels carry two labels: keep the right one, drop the other",
    "unreadable": "replace or remove the file (blitz train stops on it without --skip-bad-images)",
    "label": "look at the image: relabel it to the suggested class, or drop it",
    "duplicate": "a repeat weighs twice in training: drop one copy",
    "near-duplicate": "look: a resized or re-encoded copy; drop one if it adds nothing",
    "class-names": "merge the classes if each pair is one class",
    "imbalance": "add images of the small classes, or train with --class-weights balanced",
    "odd-image": "look: check it is the kind of image the others are",
}


@dataclass(frozen=True)
class Finding:
    """One problem. ``image`` is the image to act on (as ``sets.csv`` names it: what
    ``blitz train --exclude`` drops); ``other`` the image it was found with, if any. ``score``
    in [0, 1] says how sure or how bad: 1 for an exact copy, a label's 1 - label quality."""

    kind: str
    image: str = ""
    role: str = ""  # the image's set: train, val or test
    label: str = ""  # its class, as given
    other: str = ""
    other_role: str = ""
    other_label: str = ""
    suggested: str = ""  # a label error's suggested class
    score: float = 1.0
    detail: str = ""

    @property
    def title(self) -> str:
        return KINDS[self.kind]

    @property
    def advice(self) -> str:
        return ADVICE[self.kind]


def ordered(findings: list[Finding]) -> list[Finding]:
    """By kind in reading order (``KINDS``), worst (highest score) first within a kind."""
    rank = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (rank[f.kind], -f.score, f.image))


def by_kind(findings: list[Finding]) -> dict[str, list[Finding]]:
    """The findings grouped by kind, in reading order."""
    groups: dict[str, list[Finding]] = {}
    for finding in ordered(findings):
        groups.setdefault(finding.kind, []).append(finding)
    return groups


@dataclass
class Diagnosis:
    """What ``blitz doctor`` found, and what it needs to show it."""

    data: str  # the data's name
    classes: list[str]
    counts: dict[str, list[int]]  # per set, images per class
    images: int  # images checked
    findings: list[Finding]  # in reading order (findings.ordered)
    seconds: dict[str, float] = field(default_factory=dict)  # per check
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # image id -> PNG
    run: str = ""  # the run whose sets were checked, if any
    files: dict[str, Path] = field(default_factory=dict)  # what was written: "html", "csv"

    def excluded(self) -> list[str]:
        """The images ``blitz train --exclude doctor.csv`` leaves out: one per finding."""
        return sorted({f.image for f in self.findings if f.image})
