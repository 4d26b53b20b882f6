"""SVG plots for the HTML pages (the run report, a budget sweep): :func:`line_plot` draws
an inline, self-contained SVG line or scatter plot with nice axis ticks, labels and a legend.

No module of proxytasks is imported here, so any stage can draw with it.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML or SVG (``<``, ``&``, quotes escaped)."""
    return html.escape(str(value))


def finite(v: Any) -> bool:
    """True for a finite int or float (not a bool, None, NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _axis(lo: float, hi: float, fixed: tuple[float, float] | None = None, integer: bool = False,
          cap: float | None = None) -> tuple[float, float, list[float], float]:
    """Axis limits snapped to nice ticks (1, 2, 2.5, 5 x 10^k): (lo, hi, ticks, step).

    ``fixed`` is a range always shown; ``cap`` an upper bound the data cannot pass
    (e.g. 1 for an AUC), kept as the top when a flat series needs padding.
    """
    if fixed is not None:
        lo, hi = min(lo, fixed[0]), max(hi, fixed[1])
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = (lo - 2 * pad, hi) if cap is not None and hi >= cap else (lo - pad, hi + pad)
    raw = (hi - lo) / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [round(lo + k * step, 10) for k in range(int(round((hi - lo) / step)) + 1)]
    return lo, hi, ticks, step


def _tick(v: float, step: float) -> str:
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    if digits and abs(step / 10 ** -digits - 2.5) < 1e-9:
        digits += 1
    return f"{v:.{digits}f}"


def line_plot(series: Sequence[tuple[str, Sequence[tuple[Any, Any]]]], *, title: str, xlabel: str, ylabel: str,
              ylim: tuple[float, float] | None = None, ycap: float | None = None, integer_x: bool = False,
              vline: float | None = None, hline: float | None = None, points: Sequence[str] = (),
              width: int = 460, height: int = 280) -> str:
    """An inline SVG line plot (``class="plot"``) with axes, ticks, labels and a legend.

    Args:
        series: ``(label, [(x, y), ...])`` per line; points with a null or non-finite
            coordinate are skipped, a series left empty is dropped.
        ylim: y range always shown (widened to fit the data).
        ycap: the largest possible y (1 for an AUC): a flat series at it is padded below only.
        integer_x: x ticks at whole numbers only.
        vline, hline: x of a dashed vertical marker (e.g. the selected step), y of a
            dashed horizontal one (e.g. a target accuracy).
        points: labels of the series drawn as points only (a scatter), without a line.
    """
    clean = [(str(label), sorted((float(x), float(y)) for x, y in pts if finite(x) and finite(y)))
             for label, pts in series]
    clean = [(label, pts) for label, pts in clean if pts]
    if not clean:
        return f'<p class="note">{escape(title)}: no values to plot.</p>'
    xs = [x for _, pts in clean for x, _ in pts]
    ys = [y for _, pts in clean for _, y in pts]
    x0, x1, xticks, xstep = _axis(min(xs), max(xs), integer=integer_x)
    y0, y1, yticks, ystep = _axis(min(ys), max(ys), fixed=ylim, cap=ycap)
    legend_w = 34 + 6.5 * min(28, max(len(label) for label, _ in clean))
    left = 30 + 6.5 * max(len(_tick(t, ystep)) for t in yticks)
    right, top, bottom = 16 + legend_w, 28, 44

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text class="title" x="{width / 2:.1f}" y="17" text-anchor="middle">{escape(title)}</text>']
    for t in yticks:
        y = py(t)
        out.append(f'<line class="grid" x1="{left:.1f}" x2="{width - right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_tick(t, ystep)}</text>')
    for t in xticks:
        x = px(t)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{height - bottom}" y2="{height - bottom + 4}"/>'
                   f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_tick(t, xstep)}</text>')
    out.append(f'<path class="axis" d="M{left:.1f} {top}V{height - bottom}H{width - right:.1f}"/>')
    out.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    cy = (top + height - bottom) / 2
    out.append(f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
               f'{escape(ylabel)}</text>')
    if vline is not None and finite(vline) and x0 <= vline <= x1:
        out.append(f'<line x1="{px(vline):.1f}" x2="{px(vline):.1f}" y1="{top}" y2="{height - bottom}" '
                   f'stroke="#888" stroke-dasharray="4 3"/>')
    if hline is not None and finite(hline) and y0 <= hline <= y1:
        out.append(f'<line x1="{left:.1f}" x2="{width - right:.1f}" y1="{py(hline):.1f}" y2="{py(hline):.1f}" '
                   f'stroke="#888" stroke-dasharray="4 3"/>')
    for k, (label, pts) in enumerate(clean):
        colour = COLOURS[k % len(COLOURS)]
        scatter = label in points
        if not scatter:
            line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}">'
                       f'<title>{escape(label)}</title></polyline>')
        if scatter or len(pts) <= 40:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}">'
                       f'<title>{escape(label)}: {x:g}, {y:.4g}</title></circle>' for x, y in pts)
        lx, ly = width - right + 12, top + 8 + 18 * k
        short = label if len(label) <= 28 else label[:27] + "…"
        key = (f'<circle cx="{lx + 9}" cy="{ly}" r="3" fill="{colour}"/>' if scatter else
               f'<line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'{key}<text x="{lx + 23}" y="{ly + 4}">{escape(short)}</text>')
    out.append("</svg>")
    return "".join(out)
