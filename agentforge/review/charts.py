"""Inline SVG charts for the review report (no JavaScript, no chart library, no network).

Each function is pure: data in, one ``<svg>`` element out as :class:`markupsafe.Markup`.
Every label passes through :func:`markupsafe.escape` (task names are untrusted). Colours
are presentation attributes and CSS classes, never ``style=`` attributes, so the report's
strict Content-Security-Policy (no inline style attributes) holds.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from markupsafe import Markup

W, H = 420, 260
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 40

SPEEDUP_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.9, "<0.9x"), (0.9, 1.1, "~1x"), (1.1, 1.5, "1.1-1.5x"), (1.5, 2.0, "1.5-2x"),
    (2.0, 4.0, "2-4x"), (4.0, 8.0, "4-8x"), (8.0, math.inf, ">=8x"))


def _svg(body: Iterable[Markup], title: str, w: int = W, h: int = H) -> Markup:
    return Markup('<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" '
                  'height="{h}" role="img" aria-label="{t}"><title>{t}</title>{b}</svg>').format(
        w=w, h=h, t=title, b=Markup("").join(body))


def _text(x: float, y: float, s: str, anchor: str = "middle", cls: str = "lbl") -> Markup:
    return Markup('<text x="{:.1f}" y="{:.1f}" text-anchor="{}" class="{}">{}</text>').format(x, y, anchor, cls, s)


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> Markup:
    return Markup('<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" class="{}"/>').format(x1, y1, x2, y2, cls)


def speedup_bins(speedups: Sequence[float]) -> list[tuple[str, int]]:
    """How many verified kernels fall in each speedup bin (the histogram's data)."""
    return [(lbl, sum(lo <= s < hi for s in speedups)) for lo, hi, lbl in SPEEDUP_BINS]


def speedup_histogram(speedups: Sequence[float]) -> Markup:
    """Bars: verified kernels per speedup-over-baseline bin."""
    bins = speedup_bins(speedups)
    top = max((n for _, n in bins), default=0) or 1
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = pw / len(bins)
    out = [_line(PAD_L, PAD_T + ph, PAD_L + pw, PAD_T + ph, "axis")]
    for i, (lbl, n) in enumerate(bins):
        h = ph * n / top
        x = PAD_L + i * bw
        out.append(Markup('<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" class="bar{}">'
                          '<title>{}: {} kernel(s)</title></rect>').format(
            x + 3, PAD_T + ph - h, bw - 6, h, " good" if i >= 2 else "", lbl, n))
        out.append(_text(x + bw / 2, PAD_T + ph + 14, lbl))
        if n:
            out.append(_text(x + bw / 2, PAD_T + ph - h - 4, str(n)))
    out.append(_text(PAD_L + pw / 2, H - 6, "speedup over the op-by-op baseline"))
    return _svg(out, "speedup distribution")


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def _fmt_si(v: float) -> str:
    for unit, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= f:
            return f"{v / f:g}{unit}"
    return f"{v:g}"


def roofline_chart(peak_flops: float, bandwidth: float, points: Sequence[tuple[str, float, float, str]],
                   title: str = "roofline") -> Markup:
    """Log-log roofline: attained flop/s over arithmetic intensity (flop/byte), the machine's
    memory and compute roofs, and one dot per ``(label, intensity, flop/s, css class)``."""
    ridge = peak_flops / bandwidth
    xs = [p[1] for p in points if p[1] > 0] + [ridge]
    ys = [p[2] for p in points if p[2] > 0] + [peak_flops]
    x_lo, x_hi = min(xs) / 4, max(xs) * 4
    y_lo, y_hi = min(ys + [bandwidth * x_lo]) / 4, peak_flops * 2
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + pw * (math.log10(x) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))

    def sy(y: float) -> float:
        return PAD_T + ph * (1 - (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)))

    out = [_line(PAD_L, PAD_T + ph, PAD_L + pw, PAD_T + ph, "axis"), _line(PAD_L, PAD_T, PAD_L, PAD_T + ph, "axis")]
    for t in _log_ticks(x_lo, x_hi):
        if x_lo <= t <= x_hi:
            out += [_line(sx(t), PAD_T, sx(t), PAD_T + ph, "grid"), _text(sx(t), PAD_T + ph + 14, _fmt_si(t))]
    for t in _log_ticks(y_lo, y_hi):
        if y_lo <= t <= y_hi:
            out += [_line(PAD_L, sy(t), PAD_L + pw, sy(t), "grid"), _text(PAD_L - 4, sy(t) + 4, _fmt_si(t), "end")]
    x0 = max(x_lo, y_lo / bandwidth)
    out.append(Markup('<polyline points="{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" class="roof"/>').format(
        sx(x0), sy(bandwidth * x0), sx(ridge), sy(peak_flops), sx(x_hi), sy(peak_flops)))
    for label, x, y, cls in points:
        if x > 0 and y > 0:
            out.append(Markup('<circle cx="{:.1f}" cy="{:.1f}" r="4" class="pt {}"><title>{}: {} flop/B, '
                              '{}flop/s</title></circle>').format(sx(x), sy(y), cls, label, f"{x:.3g}",
                                                                  _fmt_si(y)))
    out.append(_text(PAD_L + pw / 2, H - 6, "arithmetic intensity (flop / HBM byte)"))
    out.append(Markup('<text x="12" y="{:.1f}" transform="rotate(-90 12 {:.1f})" text-anchor="middle" '
                      'class="lbl">attained flop/s</text>').format(PAD_T + ph / 2, PAD_T + ph / 2))
    return _svg(out, title)


def verified_over_time(finished: Sequence[float], start: float | None = None) -> Markup:
    """A step line: verified kernels so far over the campaign's elapsed time."""
    ts = sorted(finished)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    out = [_line(PAD_L, PAD_T + ph, PAD_L + pw, PAD_T + ph, "axis"), _line(PAD_L, PAD_T, PAD_L, PAD_T + ph, "axis")]
    if not ts:
        out.append(_text(PAD_L + pw / 2, PAD_T + ph / 2, "no verified kernel yet"))
        return _svg(out, "verified kernels over time")
    t0 = min(start if start is not None else ts[0], ts[0])
    span = max(ts[-1] - t0, 1e-9)
    n = len(ts)

    def sx(t: float) -> float:
        return PAD_L + pw * (t - t0) / span

    def sy(k: float) -> float:
        return PAD_T + ph * (1 - k / n)

    pts = [(sx(t0), sy(0))]
    for k, t in enumerate(ts, 1):
        pts += [(sx(t), sy(k - 1)), (sx(t), sy(k))]
    out.append(Markup('<polyline points="{}" class="step"/>').format(" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
    out += [_text(PAD_L - 4, sy(n) + 4, str(n), "end"), _text(PAD_L - 4, sy(0) + 4, "0", "end"),
            _text(PAD_L, PAD_T + ph + 14, "0 s", "start"), _text(PAD_L + pw, PAD_T + ph + 14, _duration(span), "end"),
            _text(PAD_L + pw / 2, H - 6, "elapsed campaign time")]
    return _svg(out, "verified kernels over time")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


__all__ = ["speedup_histogram", "speedup_bins", "roofline_chart", "verified_over_time", "SPEEDUP_BINS"]
