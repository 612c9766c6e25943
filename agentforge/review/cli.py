"""The ``review`` and ``show`` subcommands (wired into ``agentforge`` by :func:`add_parsers`).

``agentforge review RUN_OR_LIBRARY [-o report.html]`` writes the self-contained report;
``agentforge show TASK [--run DIR]`` prints one task in the terminal. Errors about the path
(missing, not a run directory, not a library, no such task) are :class:`ReviewError`, an
:class:`AgentforgeError`, so the main command prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .data import Review


def default_output(review: "Review") -> Path:
    """RUN/report.html for a run directory; ./report.html for a library (which may be shipped as is)."""
    src = Path(review.source)
    if review.has_run:
        return (src.parent if src.is_file() else src) / "report.html"
    return Path("report.html")


def cmd_review(args: argparse.Namespace) -> int:
    from ..library import atomic_write_text
    from .data import load_review
    from .html import render_html

    review = load_review(args.path, timing=not args.no_timing)
    out = Path(args.output) if args.output else default_output(review)
    atomic_write_text(out, render_html(review))
    t = review.totals
    print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB): {t.get('verified')}/{t.get('tasks')} verified")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .data import load_review
    from .terminal import render_task

    review = load_review(args.run, timing=not args.no_timing, only=args.task)
    task = review.task(args.task)
    console = Console(no_color=args.no_color or None, width=args.width)
    render_task(review, task, console)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``review`` and ``show`` to the ``agentforge`` command's subparsers."""
    p = sub.add_parser("review", help="write a self-contained HTML report of a campaign run or kernel library")
    p.add_argument("path", metavar="RUN_OR_LIBRARY", help="a campaign's --out directory, or a kernel library")
    p.add_argument("-o", "--output",
                   help="the HTML file to write (default: RUN/report.html; ./report.html for a bare library)")
    p.add_argument("--no-timing", action="store_true",
                   help="skip recomputing each kernel's timing breakdown and the baseline's traffic (faster)")
    p.set_defaults(func=cmd_review)
    p = sub.add_parser("show", help="print one task of a campaign run (kernel, lineage, checks, timing)")
    p.add_argument("task", help="the task name")
    p.add_argument("--run", default=".", help="the run directory or library (default: the current directory)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing breakdown")
    p.add_argument("--no-color", action="store_true", help="plain text")
    p.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    p.set_defaults(func=cmd_show)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m agentforge.review.cli review ...``): the main command's parser
    and error handling."""
    from ..cli import main as agentforge_main

    return agentforge_main(argv)


if __name__ == "__main__":
    sys.exit(main())
