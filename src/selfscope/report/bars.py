"""Horizontal bar charts as self-contained SVG (no scripts, no network), one bar per label.

Negative values draw left of the zero line; every bar carries its value as text and a
``<title>`` (hover), and the chart a ``data-figure`` attribute tests can find.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

ROW, LABEL_W, BAR_W, VALUE_W = 22, 260, 320, 70


def bars_svg(
    name: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    unit: str = "",
    color: str = "#3b6ea8",
    negative: str = "#b5553c",
) -> str:
    """One chart: ``labels[i]`` with a bar of ``values[i]``; ``name`` goes in ``data-figure``."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} values")
    low = min([0.0, *values])
    high = max([0.0, *values])
    span = (high - low) or 1.0
    zero = LABEL_W + BAR_W * (-low / span)
    height = 30 + ROW * len(values) + 8
    width = LABEL_W + BAR_W + VALUE_W
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" data-figure="{escape(name)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 26 + i * ROW
        w = BAR_W * abs(value) / span
        x = zero if value >= 0 else zero - w
        text = label if len(label) <= 40 else label[:37] + "..."
        out += [
            f'<text x="{LABEL_W - 6}" y="{y + 14}" text-anchor="end">{escape(text)}</text>',
            f'<rect class="bar" x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" '
            f'height="{ROW - 6}" fill="{color if value >= 0 else negative}">'
            f"<title>{escape(label)}: {value:.4g}{escape(unit)}</title></rect>",
            f'<text x="{LABEL_W + BAR_W + 6}" y="{y + 14}">{value:.3g}{escape(unit)}</text>',
        ]
    out.append(
        f'<line x1="{zero:.1f}" y1="24" x2="{zero:.1f}" y2="{height - 6}" stroke="#444" '
        'stroke-width="1"/>'
    )
    out.append("</svg>")
    return "\n".join(out)
