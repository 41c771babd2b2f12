"""The pages blitz writes (the report, the comparison, doctor.html): their frame, with a content
security policy, and their pieces, an embedded PNG, a section, a table (every string escaped)."""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Any


def img(png: bytes, alt: str) -> str:
    """An image embedded as base64 PNG (the page loads nothing from anywhere)."""
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def table(rows: list[tuple], head: tuple | None = None) -> str:
    """Rows of cells (numbers right-aligned), under an optional header row."""

    def cell(value: Any, tag: str = "td") -> str:
        kind = " class='num'" if isinstance(value, int | float) else ""
        return f"<{tag}{kind}>{html.escape(str(value))}</{tag}>"

    header = "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(map(cell, row)) + "</tr>" for row in rows)
    return f"<table>{header}{body}</table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222;
       padding: 0 1rem; background: #fafafa; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
section { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 1rem 1.5rem;
          margin: 1rem 0; }
h2 { margin-top: 0; font-size: 1.2rem; }
table { border-collapse: collapse; } td, th { padding: 0.25rem 0.8rem; text-align: left;
  border-bottom: 1px solid #eee; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .scroll { overflow: auto; max-height: 900px; }
.scroll img { max-width: none; } .row { display: flex; gap: 1.5rem; flex-wrap: wrap; }
.row > div { flex: 1 1 420px; } .same { color: #999; } .diff { background: #fff6d6; }
.note { color: #666; font-size: 0.9rem; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6rem; }
.gallery figure { margin: 0; width: 112px; }
.gallery img { width: 112px; image-rendering: pixelated; }
.gallery figcaption { font-size: 0.75rem; overflow-wrap: anywhere; }
.warn { background: #fff0f0; border-left: 4px solid #c33; padding: 0.5rem 1rem; }
"""
# Lets a headless browser prove that every embedded image decoded: it writes each image's
# natural width into the page, which `chromium --dump-dom` then shows (see tests/test_tools_cli.py).
CHECK_JS = """window.addEventListener("load", () => {
  document.getElementById("image-check").textContent =
    JSON.stringify(Array.from(document.images, (i) => i.naturalWidth));
});"""
CHECK_SCRIPT = f'<pre id="image-check" hidden></pre><script>{CHECK_JS}</script>'
# Defence in depth: should a string ever reach the page unescaped, the browser still runs no
# script but the check above, loads nothing from anywhere, and submits nothing.
_JS_HASH = base64.b64encode(hashlib.sha256(CHECK_JS.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_JS_HASH}'; form-action 'none'; base-uri 'none'"
)


def page(title: str, subtitle: str, sections: list[str]) -> str:
    """A whole page: its title, an escaped subtitle given as HTML, its sections."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='sub'>{subtitle}</p>"
        + "".join(sections)
        + CHECK_SCRIPT
        + "</body></html>\n"
    )
