"""The HTML shell of the reports: one self-contained page per report.

A page carries its CSS inline and its charts as inline SVG that matplotlib
draws, and it refers to no URL, so it opens offline and fetches nothing.
Functions that build markup escape every text they are given and return
``Html``, and ``render_page`` joins such parts into the whole document.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from html import escape
from typing import NewType

import matplotlib
from matplotlib.figure import Figure

# Markup built by this module, as opposed to text that still needs escaping.
Html = NewType("Html", str)

# Leaves out matplotlib's Dublin Core block, which names URLs and the date.
SVG_METADATA: dict[str, str | None] = {
    "Format": None,
    "Type": None,
    "Creator": None,
    "Date": None,
}

# Row classes that ``table`` callers may use: ``breached`` rows are red,
# ``failed`` rows yellow and ``cancelled`` rows grey.
PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin-bottom: 0.25rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; }
p.lead { color: #444; margin-top: 0; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.25rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; }
tr.breached td { background: #fde0dd; color: #a50f15; font-weight: 600; }
tr.failed td { background: #fff3cd; }
tr.cancelled td { color: #777; }
"""


def render_page(title: str, parts: Iterable[Html], *, lead: str | None = None) -> str:
    """Return a whole HTML document: the title as heading, the lead line, the parts."""
    body = [f"<h1>{escape(title)}</h1>"]
    if lead is not None:
        body.append(f'<p class="lead">{escape(lead)}</p>')
    body.extend(parts)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{PAGE_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def heading(text: str, level: int = 2) -> Html:
    """Return a heading of ``level`` 2 to 6, because level 1 is the page title."""
    if not 2 <= level <= 6:
        raise ValueError(f"invalid heading level {level}: use 2 to 6")
    return Html(f"<h{level}>{escape(text)}</h{level}>")


def paragraph(text: str) -> Html:
    return Html(f"<p>{escape(text)}</p>")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    caption: str | None = None,
    row_classes: Sequence[str | None] | None = None,
    numeric_columns: Iterable[int] = (),
) -> Html:
    """Return a table. None cells are empty and every other cell is ``str(cell)``.

    ``row_classes``, when given, has one CSS class (or None) per row, such as
    ``breached``. Columns in ``numeric_columns`` (indices) are aligned right.
    Raises ValueError when a row or ``row_classes`` has the wrong length.
    """
    if row_classes is not None and len(row_classes) != len(rows):
        raise ValueError(
            f"invalid row_classes: {len(row_classes)} entries for {len(rows)} "
            "rows, give one class or None per row"
        )
    numeric = set(numeric_columns)

    lines = ["<table>"]
    if caption is not None:
        lines.append(f"<caption>{escape(caption)}</caption>")
    header_cells = "".join(f'<th scope="col">{escape(name)}</th>' for name in headers)
    lines.append(f"<thead><tr>{header_cells}</tr></thead>")
    lines.append("<tbody>")
    for index, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"invalid row {index}: {len(row)} cells for {len(headers)} columns"
            )
        css_class = row_classes[index] if row_classes is not None else None
        opening = f'<tr class="{escape(css_class)}">' if css_class else "<tr>"
        cells = "".join(
            _cell(value, numeric=column in numeric) for column, value in enumerate(row)
        )
        lines.append(f"{opening}{cells}</tr>")
    lines.append("</tbody>")
    lines.append("</table>")
    return Html("\n".join(lines))


def _cell(value: object, *, numeric: bool) -> str:
    text = "" if value is None else escape(str(value))
    return f'<td class="number">{text}</td>' if numeric else f"<td>{text}</td>"


def figure(chart: Figure, *, caption: str) -> Html:
    """Return the chart as inline SVG in a ``<figure>`` with ``caption``."""
    return Html(
        f"<figure>\n{svg_of(chart)}\n"
        f"<figcaption>{escape(caption)}</figcaption>\n</figure>"
    )


def svg_of(chart: Figure) -> str:
    """Draw the chart as an ``<svg>`` element, ready to inline in HTML.

    The XML prolog and its DOCTYPE, which names the DTD's URL, are left out,
    because an inline SVG needs neither. Only the ``xmlns`` attributes name
    URLs.
    """
    buffer = io.StringIO()
    # Text stays text in the SVG ('none'), so the labels of a chart can be
    # found and selected in the page. A fixed salt makes the ids inside the
    # SVG, and so the page, the same for the same chart.
    with matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "ticket-guard"}
    ):
        chart.savefig(buffer, format="svg", metadata=SVG_METADATA)
    document = buffer.getvalue()
    return document[document.index("<svg") :].strip()
