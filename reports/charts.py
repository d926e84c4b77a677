"""Bar charts of the reports, drawn with matplotlib for inline SVG.

Each function returns a matplotlib ``Figure`` built without pyplot, so no
global figure state is kept and no GUI backend is loaded. ``reports.html``
turns a figure into inline SVG with its text kept as text, so the labels can
be found in the page.

Bars are horizontal, one per label, top to bottom in the order given, so a
chart lists the techs in the same order as the report's table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Figure size and margins in inches: the width, the height of one bar's row,
# the room for the title above the bars and for the axis below them.
CHART_WIDTH = 8.0
ROW_HEIGHT = 0.28
TOP_MARGIN = 0.45
BOTTOM_MARGIN = 0.6
# The left margin contains the labels, at about this width per character of
# 8-point text, and takes at most this share of the width.
LABEL_CHARACTER_WIDTH = 0.075
MAX_LABEL_SHARE = 0.4
# Room right of the longest bar for its value text, as a share of the axis.
VALUE_ROOM = 1.2

# Colour-blind safe colours (Okabe and Ito), in the order the series use them.
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
BAR_COLOUR = PALETTE[0]
# Written in place of a bar when a label has no value.
NO_VALUE = "no data"


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    axis_label: str,
    value_texts: Sequence[str] | None = None,
    axis_limit: float | None = None,
) -> Figure:
    """Draw one horizontal bar per label.

    A None value gets no bar and the text ``no data``. ``value_texts``, when
    given, are written at the end of each bar instead of the plain value.
    ``axis_limit`` fixes the end of the value axis, such as 100 for a share
    in percent. Raises ValueError when the sequences differ in length.
    """
    _check_lengths(labels, {"values": values, "value_texts": value_texts})
    figure, axes = _new_chart(title, labels, axis_label)

    positions = list(range(len(labels)))
    drawn = [0.0 if value is None else value for value in values]
    axes.barh(positions, drawn, color=BAR_COLOUR)
    largest = max(drawn, default=0.0)
    limit = axis_limit if axis_limit is not None else max(largest * VALUE_ROOM, 1.0)
    axes.set_xlim(0, limit)

    for position, value in enumerate(values):
        if value is None:
            text = NO_VALUE
        elif value_texts is not None:
            text = value_texts[position]
        else:
            text = f"{value:g}"
        # Written just right of the bar, or of the axis when there is none.
        axes.annotate(
            text,
            xy=(drawn[position], position),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="#444444" if value is None else "#1b1b1b",
        )
    return figure


def stacked_bar_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    axis_label: str,
) -> Figure:
    """Draw one horizontal bar per label, split into one segment per series.

    The series' names make the legend, in the order of ``series``. Each bar
    ends with its total. Raises ValueError when a series has another length
    than ``labels``.
    """
    _check_lengths(labels, dict(series))
    figure, axes = _new_chart(title, labels, axis_label)

    positions = list(range(len(labels)))
    totals = [0.0] * len(labels)
    for index, (name, values) in enumerate(series.items()):
        axes.barh(
            positions,
            list(values),
            left=list(totals),
            color=PALETTE[index % len(PALETTE)],
            label=name,
        )
        totals = [total + value for total, value in zip(totals, values, strict=True)]

    axes.set_xlim(0, max(max(totals, default=0.0) * VALUE_ROOM, 1.0))
    for position, total in enumerate(totals):
        axes.annotate(
            f"{total:g}",
            xy=(total, position),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    if series:
        # In the margin above the bars, right of the title, so it hides none.
        axes.legend(
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=len(series),
            fontsize=8,
            frameon=False,
        )
    return figure


def _new_chart(
    title: str, labels: Sequence[str], axis_label: str
) -> tuple[Figure, Axes]:
    # Fixed margins rather than matplotlib's constrained layout, which
    # measures every text and took most of the drawing time of a chart.
    bars_height = ROW_HEIGHT * max(len(labels), 1)
    height = TOP_MARGIN + bars_height + BOTTOM_MARGIN
    longest = max((len(label) for label in labels), default=0)
    left = min(0.2 + LABEL_CHARACTER_WIDTH * longest, MAX_LABEL_SHARE * CHART_WIDTH)
    figure = Figure(figsize=(CHART_WIDTH, height))
    figure.subplots_adjust(
        left=left / CHART_WIDTH,
        right=0.97,
        top=1 - TOP_MARGIN / height,
        bottom=BOTTOM_MARGIN / height,
    )
    axes = figure.add_subplot()
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_xlabel(axis_label, fontsize=9)
    axes.set_yticks(list(range(len(labels))), list(labels), fontsize=8)
    # The first label at the top, as in the table, and no padding beyond
    # half a row above and below the bars.
    axes.set_ylim(max(len(labels), 1) - 0.5, -0.5)
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(axis="x", labelsize=8)
    return figure, axes


def _check_lengths(
    labels: Sequence[str], sequences: Mapping[str, Sequence[object] | None]
) -> None:
    for name, sequence in sequences.items():
        if sequence is not None and len(sequence) != len(labels):
            raise ValueError(
                f"{name} has {len(sequence)} entries for {len(labels)} labels"
            )
