"""What ``blitz doctor`` prints: per kind of finding, the count and its worst examples."""

from __future__ import annotations

from blitz.data.counts import format_counts
from blitz.diagnosis.findings import KINDS, Diagnosis, Finding, by_kind
from blitz.outputs.predict import for_terminal

EXAMPLES = 3  # per kind, in the terminal


def format_summary(d: Diagnosis) -> str:
    """The terminal's summary: counts per class, then each kind found with its worst cases."""
    lines = [format_counts(d.classes, d.counts), ""]
    groups = by_kind(d.findings)
    if not groups:
        lines.append(f"no findings in {d.images} images")
    for kind, found in groups.items():
        lines.append(f"{KINDS[kind]}: {len(found)}")
        lines += [f"  {_line(f)}" for f in found[:EXAMPLES]]
        if len(found) > EXAMPLES:
            lines.append(f"  ... and {len(found) - EXAMPLES} more")
    lines += d.notes
    timing = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in d.seconds.items())
    lines.append(f"checked {d.images} images in {sum(d.seconds.values()):.1f} s ({timing})")
    return "\n".join(lines)


def _line(f: Finding) -> str:
    if not f.image:
        return f.detail
    label = f.label + (f" -> {f.suggested}" if f.suggested else "")
    return for_terminal(f"{f.image} ({label}, score {f.score:.2f}): {f.detail}")
