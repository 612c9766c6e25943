"""The self-contained HTML report: one file, viewable offline, safe with untrusted content.

Rendering is Jinja2 with autoescape on: every value from the run (kernel text, task names,
LLM output, evaluator messages) is escaped. The report's own CSS and JS are package data
inlined into ``<style>``/``<script>``, and a Content-Security-Policy ``<meta>`` allows exactly
those two blocks by their sha256 hash and nothing else (no network, no other script, no
inline style attributes). No run data is ever placed inside the ``<script>``: the table's
sorting and filtering read ``data-`` attributes, which autoescape covers.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from . import charts
from .data import Review, TaskView
from .highlight import to_html


def _asset(name: str) -> str:
    return resources.files("agentforge.review").joinpath("templates", name).read_text(encoding="utf-8")


def csp_hash(text: str) -> str:
    """The CSP source expression allowing exactly this inline block."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def content_security_policy(css: str, js: str) -> str:
    return (f"default-src 'none'; style-src {csp_hash(css)}; script-src {csp_hash(js)}; img-src data:; "
            f"base-uri 'none'; form-action 'none'")


# ---------------------------------------------------------------------------- formatting filters

def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:,.2f} {unit}"
    return f"{s / 1e-9:,.1f} ns"


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if v >= f:
            return f"{v / f:,.1f} {unit}"
    return f"{v:,.0f} B"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if v and (abs(v) < 0.01 or abs(v) >= 1e6) else f"{v:,.4f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def sort_key(v: float | None) -> str:
    """A data-sort value for the table's JS (missing values sort last)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"     # what JS parseFloat reads ("inf" would be NaN)
    return repr(float(v))


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested manifest/config dicts as (dotted key, value) rows."""
    if not isinstance(d, dict):
        return [(prefix, d)]
    rows: list[tuple[str, Any]] = []
    for k in sorted(d, key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        rows += flatten(d[k], key) if isinstance(d[k], dict) and d[k] else [(key, d[k])]
    return rows


def diff_class(line: str) -> str:
    return ("dh" if line.startswith(("---", "+++")) else "da" if line.startswith("+")
            else "dd" if line.startswith("-") else "dc" if line.startswith("@@") else "")


# ---------------------------------------------------------------------------- charts per review

def task_roofline(t: TaskView) -> Markup | None:
    r = t.roofline
    if r is None:
        return None
    pts = [(f"{t.name} ({which})", *p, which) for which in ("kernel", "baseline") if (p := r.point(which))]
    if not pts:
        return None
    return charts.roofline_chart(r.peak_flops, r.hbm_bandwidth, pts, f"roofline: {t.name}")


def campaign_charts(review: Review) -> dict[str, Markup]:
    """The campaign-level charts: speedup distribution, roofline of all kernels, verified over time."""
    out = {"speedup": charts.speedup_histogram([t.speedup for t in review.tasks
                                                if t.status == "verified" and t.speedup])}
    pts, peak = [], None
    for t in review.tasks:
        if t.roofline is not None and (p := t.roofline.point("kernel")):
            pts.append((t.name, *p, "kernel"))
            peak = peak or (t.roofline.peak_flops, t.roofline.hbm_bandwidth)
    if peak:
        out["roofline"] = charts.roofline_chart(*peak, pts, "roofline: all kernels")
    done = [t.finished for t in review.tasks if t.status == "verified" and t.finished]
    start = review.run.get("created") if review.has_run else None
    out["timeline"] = charts.verified_over_time(done, start)
    return out


# ---------------------------------------------------------------------------- rendering

def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("agentforge.review", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(seconds=fmt_seconds, pct=fmt_pct, x=fmt_x, bytes=fmt_bytes, time=fmt_time, num=fmt_num,
                       sortkey=sort_key, asp=to_html, diffclass=diff_class,
                       prettyjson=lambda v: json.dumps(v, indent=2, sort_keys=True))
    env.globals.update(flatten=flatten, task_roofline=task_roofline)
    return env


def render_html(review: Review) -> str:
    """The whole report as one HTML string."""
    css, js = _asset("report.css"), _asset("report.js")
    tmpl = environment().get_template("report.html.j2")
    from ..campaign.console import FAST_WORDS, OUTLIER_FACTOR, SPEEDUP_WORDS, speedup_stats

    title = review.run.get("id") if review.has_run else Path(review.source).name
    speed = speedup_stats({t.name: t.speedup for t in review.tasks if t.status == "verified"})
    return tmpl.render(review=review, title=title or str(review.source), css=Markup(css), js=Markup(js),
                       speed=speed, outlier_factor=OUTLIER_FACTOR, fast_words=FAST_WORDS, speedup_words=SPEEDUP_WORDS,
                       csp=content_security_policy(css, js), charts=campaign_charts(review),
                       generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


__all__ = ["render_html", "content_security_policy", "csp_hash", "campaign_charts", "environment"]
