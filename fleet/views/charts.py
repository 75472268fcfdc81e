"""Server-rendered SVG charts. The variant scatter plot is drawn here rather than in the browser so
it is readable without JavaScript and testable as text."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass
class Point:
    """One variant on the plot."""

    id: str
    label: str
    size: float
    latency: float
    fidelity: float | None
    status: str
    pareto: bool = False
    recommended: bool = False
    original: bool = False


def fidelity_colour(fidelity: float | None) -> str:
    """Red below 0.9 cosine, through amber, to green at 1.0; grey when unknown."""
    if fidelity is None or math.isnan(fidelity):
        return "#9ca3af"
    t = max(0.0, min(1.0, (fidelity - 0.9) / 0.1))
    # red (198,40,40) -> amber (183,121,31) -> green (26,127,55)
    if t < 0.5:
        a, b, u = (198, 40, 40), (214, 158, 46), t * 2
    else:
        a, b, u = (214, 158, 46), (26, 127, 55), (t - 0.5) * 2
    r, g, bl = (round(a[i] + (b[i] - a[i]) * u) for i in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def pareto_front(points: list[Point]) -> list[Point]:
    """Accepted points no other accepted point beats on both size and latency, by size."""
    candidates = sorted((p for p in points if p.status == "accepted" and not p.original),
                        key=lambda p: (p.size, p.latency))
    front, best = [], math.inf
    for p in candidates:
        if p.latency < best:
            front.append(p)
            best = p.latency
    return front


def _ticks(lo: float, hi: float, log: bool, n: int = 5) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        ticks = [10.0 ** k for k in range(a, b + 1)]
        return [t for t in ticks if lo <= t <= hi] or [lo, hi]
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for mult in (1, 2, 5, 10):
        if span / (step * mult) <= n:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    out, t = [], start
    while t <= hi + 1e-12:
        out.append(round(t, 10))
        t += step
    return out


def _fmt_size(v: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if v >= 10 or unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} GB"


def _fmt_ms(v: float) -> str:
    return f"{v:.2g} ms" if v < 1 else f"{v:.3g} ms"


def variant_scatter_svg(points: list[Point], *, width: int = 720, height: int = 380) -> SafeString:
    """Size (x) against p50 latency (y), one dot per variant coloured by fidelity, the Pareto
    frontier as a line, the recommended variant ringed and the original as a diamond."""
    pts = [p for p in points if p.size and p.size > 0 and p.latency is not None and p.latency > 0]
    if not pts:
        return mark_safe('<p class="muted empty">No measured variants to plot yet.</p>')  # noqa: S308
    left, right, top, bottom = 84, 20, 20, 50
    pw, ph = width - left - right, height - top - bottom
    xs, ys = [p.size for p in pts], [p.latency for p in pts]
    xlog = max(xs) / min(xs) > 20
    ylog = max(ys) / min(ys) > 20

    def bounds(vals, log):
        lo, hi = min(vals), max(vals)
        if log:
            return lo / 1.3, hi * 1.3
        pad = (hi - lo) * 0.08 or hi * 0.1 or 1
        return max(0.0, lo - pad), hi + pad

    (x0, x1), (y0, y1) = bounds(xs, xlog), bounds(ys, ylog)

    def sx(v):
        if xlog:
            return left + pw * (math.log10(v) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return left + pw * (v - x0) / ((x1 - x0) or 1)

    def sy(v):
        if ylog:
            return top + ph - ph * (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
        return top + ph - ph * (v - y0) / ((y1 - y0) or 1)

    out = [f'<svg class="scatter" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Variants: size against latency, coloured by fidelity" '
           f'xmlns="http://www.w3.org/2000/svg" data-testid="variant-scatter">']
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#e3e6eb"/>')
    for t in _ticks(x0, x1, xlog):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#f0f2f5"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{escape(_fmt_size(t))}</text>')
    for t in _ticks(y0, y1, ylog):
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#f0f2f5"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(_fmt_ms(t))}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
               f'size{" (log)" if xlog else ""}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" class="axis" '
               f'transform="rotate(-90 14 {top + ph / 2})">latency p50{" (log)" if ylog else ""}</text>')
    front = [p for p in pts if p.pareto] or pareto_front(pts)
    front = sorted(front, key=lambda p: p.size)
    if len(front) > 1:
        path = " ".join(f"{sx(p.size):.1f},{sy(p.latency):.1f}" for p in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="#1f6feb" stroke-width="1.5" '
                   f'stroke-dasharray="5 4" data-testid="pareto-frontier"/>')
    for p in sorted(pts, key=lambda p: p.recommended):
        x, y, colour = sx(p.size), sy(p.latency), fidelity_colour(p.fidelity)
        fid = "n/a" if p.fidelity is None else f"{p.fidelity:.4f}"
        title = escape(f"{p.label}: {_fmt_size(p.size)}, {_fmt_ms(p.latency)}, cosine {fid}, {p.status}"
                       + (", Pareto" if p in front else "") + (", recommended" if p.recommended else ""))
        out.append(f'<g class="pt" data-variant="{escape(p.id)}"><title>{title}</title>')
        if p.original:
            out.append(f'<path d="M{x:.1f},{y - 7:.1f} L{x + 7:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
                       f'L{x - 7:.1f},{y:.1f} Z" fill="#fff" stroke="#111827" stroke-width="1.5"/>'
                       f'<text x="{x + 10:.1f}" y="{y - 8:.1f}" class="lbl">original</text>')
        elif p.status != "accepted":
            out.append(f'<path d="M{x - 5:.1f},{y - 5:.1f} L{x + 5:.1f},{y + 5:.1f} M{x - 5:.1f},{y + 5:.1f} '
                       f'L{x + 5:.1f},{y - 5:.1f}" stroke="{colour}" stroke-width="2.5"/>')
        else:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}" stroke="#111827" stroke-width=".5"/>')
        if p.recommended:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="#1f6feb" stroke-width="2.5" '
                       f'data-testid="recommended-marker"/><text x="{x + 14:.1f}" y="{y + 4:.1f}" '
                       f'class="lbl rec">recommended</text>')
        out.append("</g>")
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 - every interpolated text above is escaped
