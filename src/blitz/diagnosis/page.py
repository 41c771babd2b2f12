"""``doctor.html``: one self-contained review page (thumbnails embedded as base64 PNG, no
script but the report's image check), findings grouped by kind in reading order, worst first,
each with its file, set, label, suggestion and score. Every string is escaped: file and class
names come from disk, and may be anything."""

from __future__ import annotations

import html
from pathlib import Path

from blitz.data.counts import format_counts
from blitz.data.roles import SET_NAMES
from blitz.diagnosis.findings import ADVICE, KINDS, Diagnosis, Finding, by_kind

# the report's page parts: one look, one escaping, one content security policy
from blitz.outputs.html import img, page, section, table
from blitz.outputs.predict import printable
from blitz.utils.writes import write_atomic

SHOWN = 120  # findings of one kind with thumbnails on the page (doctor.csv lists all)
GALLERY_STYLE = (
    "<style>.gallery figure.finding { width: 232px; } .finding .pair { display: flex; gap: 4px; } "
    ".finding .pair img { width: 112px; image-rendering: pixelated; } "
    ".finding .missing { width: 112px; height: 112px; background: #eee; font-size: 0.7rem; "
    "display: flex; align-items: center; justify-content: center; }</style>"
)


def write_page(diagnosis: Diagnosis, path: Path) -> Path:
    """Write the review page of ``diagnosis`` to ``path``."""
    d = diagnosis
    what = f"the sets of run {d.run}" if d.run else d.data
    subtitle = (
        f"{d.images} images of {what}, {len(d.classes)} classes: {len(d.findings)} findings, "
        f"checked in {sum(d.seconds.values()):.1f} s"
    )
    sections = [_summary(d), _counts(d)]
    sections += [_kind(kind, found, d) for kind, found in by_kind(d.findings).items()]
    title = f"blitz doctor: {d.data}"
    text = page(title, html.escape(subtitle), [GALLERY_STYLE, *sections])
    write_atomic(path, text.encode("utf-8", "backslashreplace"))
    return path


def _summary(d: Diagnosis) -> str:
    groups = by_kind(d.findings)
    rows = [(KINDS[kind], len(groups.get(kind, [])), ADVICE[kind]) for kind in KINDS]
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in d.notes)
    head = ("finding", "count", "what to do")
    excluded = (
        f"<p class='note'><code>blitz train --exclude doctor.csv</code> would leave out "
        f"{len(d.excluded())} images (each finding's first image; nothing is deleted). Delete "
        "the rows you disagree with first.</p>"
    )
    return section("Summary", table(rows, head) + excluded + notes)


def _counts(d: Diagnosis) -> str:
    return section(
        "Images per class", f"<pre>{html.escape(format_counts(d.classes, d.counts))}</pre>"
    )


def _kind(kind: str, found: list[Finding], d: Diagnosis) -> str:
    """A kind's findings: a gallery where they name images, else a list."""
    advice = f"<p class='note'>{html.escape(ADVICE[kind])}</p>"
    if not any(f.image for f in found):
        items = "".join(f"<li>{html.escape(f.detail)}</li>" for f in found)
        return section(KINDS[kind], f"{advice}<ul>{items}</ul>")
    figures = "".join(_figure(f, d.thumbnails) for f in found[:SHOWN])
    more = (
        f"<p class='note'>and {len(found) - SHOWN} more, listed in doctor.csv</p>"
        if len(found) > SHOWN else ""
    )  # fmt: skip
    title = f"{KINDS[kind]} ({len(found)})"
    return section(title, f"{advice}<div class='gallery'>{figures}</div>{more}")


def _figure(f: Finding, thumbnails: dict[str, bytes]) -> str:
    """One finding: its image (and the image it was found with), then what was found."""
    pictures = _picture(f.image, thumbnails) + (_picture(f.other, thumbnails) if f.other else "")
    label = f.label + (f" → {f.suggested}" if f.suggested else "")
    lines = [
        f"<b>{_e(label)}</b> score {f.score:.2f}",
        f"{html.escape(SET_NAMES.get(f.role, f.role))}: <code>{_e(f.image)}</code>",
        _e(f.detail),
    ]
    caption = "<br>".join(lines)
    return (
        f"<figure class='finding'><div class='pair'>{pictures}</div>"
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _picture(image: str, thumbnails: dict[str, bytes]) -> str:
    if image in thumbnails:
        return img(thumbnails[image], printable(image))
    return "<div class='missing'>no picture: it does not decode</div>"


def _e(text: str) -> str:
    return html.escape(printable(text))
