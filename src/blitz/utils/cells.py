"""Text cells of the CSV files blitz writes, as a spreadsheet shows them: as text.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets, so an image folder called ``=HYPERLINK("http://...")``
would be one in doctor.csv. Such a text cell is written with an apostrophe in front (OWASP's
advice against CSV injection), and so is one that begins with an apostrophe already: reading
takes exactly one off, and every name comes back as it was. Numbers are written as they are.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def text_cell(text: str) -> str:
    """``text`` as a CSV cell that no spreadsheet runs."""
    return QUOTE + text if text.startswith((*FORMULA_STARTS, QUOTE)) else text


def cell_text(cell: str) -> str:
    """The text ``text_cell`` was given."""
    return cell[1:] if cell.startswith(QUOTE) else cell
