"""Heatmaps as plain SVG text, with no plotting library.

A tool that returns a grid of numbers (a causal trace: layers × positions) can also return a
picture of it that any browser, notebook or report renders. The SVG is written by hand: one
``<rect class="cell">`` per grid value (its value in a ``<title>`` tooltip), the row labels
(``class="row-label"``), column labels (``class="col-label"``), a title, an optional caption
and a colour bar (``class="legend"``). Colours go linearly from white at ``vmin`` to ``color``
at ``vmax`` (values outside are clipped; NaN is grey). Several panels sit side by side in one
figure with :func:`heatmaps_svg`.

Labels are escaped for XML and control characters are shown as escapes (a newline token reads
``\\n``), so any token string gives a well-formed document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

_TITLE, _CAPTION, _ROW_FONT, _COL_FONT = 13, 11, 11, 9
_CHAR = 6.6  # approximate width of one label character at the row font size
_MAX_LABEL = 24  # row labels are cut to this many characters


@dataclass(frozen=True)
class Heatmap:
    """One panel: ``grid[r][c]`` drawn at row ``r`` (top to bottom) and column ``c``."""

    grid: Sequence[Sequence[float]]
    row_labels: Sequence[str]
    col_labels: Sequence[str]
    title: str = ""
    caption: str = ""
    x_label: str = ""
    vmin: float | None = None  # default: the grid's minimum
    vmax: float | None = None  # default: the grid's maximum
    color: str = "#6a1b9a"
    cell: int = 14  # pixels per cell


def _text(value: str) -> str:
    """``value`` as XML character data: control characters as visible escapes, then escaped."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return escape("".join(out), {'"': "&quot;"})


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {color!r} is not #rrggbb")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _shade(t: float, color: tuple[int, int, int]) -> str:
    """White at ``t = 0``, ``color`` at ``t = 1``."""
    t = min(1.0, max(0.0, t))
    r, g, b = (round(255 + (c - 255) * t) for c in color)
    return f"#{r:02x}{g:02x}{b:02x}"


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _panel(h: Heatmap) -> tuple[list[str], int, int]:
    """The SVG elements of one panel (origin at its top-left), its width and height."""
    rows, cols = len(h.row_labels), len(h.col_labels)
    if len(h.grid) != rows or any(len(row) != cols for row in h.grid):
        raise ValueError(f"heatmap grid must be {rows} rows × {cols} columns, like its labels")
    finite = [v for row in h.grid for v in row if not math.isnan(v)]
    vmin = h.vmin if h.vmin is not None else min(finite, default=0.0)
    vmax = h.vmax if h.vmax is not None else max(finite, default=1.0)
    span = vmax - vmin
    color = _rgb(h.color)
    labels = [label[:_MAX_LABEL] for label in h.row_labels]
    left = 8 + math.ceil(_CHAR * max((len(label) for label in labels), default=0))
    top = 8 + _TITLE + 6 + (_CAPTION + 6 if h.caption else 0)
    size = h.cell
    width = left + cols * size + 12 + 10 + 8 + 60
    # a narrow grid (a few layers) must not let its title or caption run into the next panel
    texts = [(h.title, _TITLE), (h.caption, _CAPTION)]
    width = max(width, *(left + math.ceil(0.6 * font * len(t)) + 8 for t, font in texts))
    height = top + rows * size + _COL_FONT + 10 + (_CAPTION + 6 if h.x_label else 0) + 8
    out = [
        f'<text class="title" x="{left}" y="{8 + _TITLE}" font-size="{_TITLE}" '
        f'font-weight="bold">{_text(h.title)}</text>'
    ]
    if h.caption:
        y = 8 + _TITLE + 6 + _CAPTION
        out.append(
            f'<text class="caption" x="{left}" y="{y}" font-size="{_CAPTION}">'
            f"{_text(h.caption)}</text>"
        )
    for r, row in enumerate(h.grid):
        y = top + r * size
        out.append(
            f'<text class="row-label" x="{left - 4}" y="{y + size - 3}" font-size="{_ROW_FONT}" '
            f'text-anchor="end">{_text(labels[r])}</text>'
        )
        for c, value in enumerate(row):
            if math.isnan(value):
                fill = "#cccccc"
            else:
                fill = _shade((value - vmin) / span if span > 0 else 1.0, color)
            tip = f"{h.row_labels[r]} · {h.col_labels[c]}: {_fmt(value)}"
            out.append(
                f'<rect class="cell" x="{left + c * size}" y="{y}" width="{size}" '
                f'height="{size}" fill="{fill}"><title>{_text(tip)}</title></rect>'
            )
    bottom = top + rows * size
    for c, label in enumerate(h.col_labels):
        out.append(
            f'<text class="col-label" x="{left + c * size + size / 2:g}" '
            f'y="{bottom + _COL_FONT + 3}" font-size="{_COL_FONT}" text-anchor="middle">'
            f"{_text(label)}</text>"
        )
    if h.x_label:
        out.append(
            f'<text class="x-label" x="{left + cols * size / 2:g}" '
            f'y="{bottom + _COL_FONT + 8 + _CAPTION}" font-size="{_CAPTION}" '
            f'text-anchor="middle">{_text(h.x_label)}</text>'
        )
    # colour bar: ten steps from vmin (bottom) to vmax (top)
    bar_x, steps = left + cols * size + 12, 10
    step = max(rows * size, 40) / steps
    for k in range(steps):
        bar_y = top + (steps - 1 - k) * step
        out.append(
            f'<rect class="legend" x="{bar_x}" y="{bar_y:.2f}" width="10" height="{step:.2f}" '
            f'fill="{_shade((k + 0.5) / steps, color)}"/>'
        )
    for value, label_y in ((vmax, top + 9.0), (vmin, top + steps * step)):
        out.append(
            f'<text class="legend-label" x="{bar_x + 14}" y="{label_y:.2f}" '
            f'font-size="{_COL_FONT}">{_fmt(value)}</text>'
        )
    height = max(height, int(top + steps * step + 8))
    return out, width, height


def heatmaps_svg(panels: Sequence[Heatmap], gap: int = 24) -> str:
    """A standalone SVG document with ``panels`` side by side, left to right."""
    if not panels:
        raise ValueError("give at least one heatmap panel")
    parts, x, height = [], 0, 0
    for panel in panels:
        elements, w, h = _panel(panel)
        parts.append(f'<g class="panel" transform="translate({x},0)">')
        parts.extend(elements)
        parts.append("</g>")
        x, height = x + w + gap, max(height, h)
    width = x - gap
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">'
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
    )
    return "\n".join([head, *parts, "</svg>"]) + "\n"


def heatmap_svg(
    grid: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    *,
    caption: str = "",
    x_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    color: str = "#6a1b9a",
    cell: int = 14,
) -> str:
    """One heatmap as a standalone SVG document (``grid[r][c]`` at row ``r``, column ``c``)."""
    return heatmaps_svg(
        [Heatmap(grid, row_labels, col_labels, title, caption, x_label, vmin, vmax, color, cell)]
    )
