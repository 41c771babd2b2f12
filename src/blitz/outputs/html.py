"""Pieces of the report pages: an embedded PNG, a section, a table (every string escaped)."""

from __future__ import annotations

import base64
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
