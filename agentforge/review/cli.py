"""The ``review`` and ``show`` subcommands (wired into ``agentforge`` by :func:`add_parsers`).

``agentforge review RUN_OR_LIBRARY [-o report.html]`` writes the self-contained report;
``agentforge show TASK [--run DIR]`` prints one task in the terminal (without ``--run``: the
current directory if it is a run or library, else the latest run under ``runs/``). Errors about the path
(missing, not a run directory, not a library, no such task) are :class:`ReviewError`, an
:class:`AgentforgeError`, so the main command prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..command import standalone_main


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
    from .data import load_review, resolve
    from .html import render_html

    t0 = time.monotonic()
    resolve(args.path)      # a bad path is one error line, before anything else is said
    # re-timing every kernel takes a while (about 30 s for the bundled suite): say so first
    print(f"review: reading {args.path}" + ("" if args.no_timing else
          " and re-timing each kernel and its baseline (--no-timing skips this)") + " ...",
          file=sys.stderr, flush=True)
    review = load_review(args.path, timing=not args.no_timing)
    out = Path(args.output) if args.output else default_output(review)
    atomic_write_text(out, render_html(review))
    t = review.totals
    print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB): {t.get('verified')}/{t.get('tasks')} verified "
          f"in {time.monotonic() - t0:.0f} s")
    return 0


def find_run(given: str | None) -> Path:
    """The run ``show`` reads: ``--run`` when given; else the current directory when it is a run
    directory or a library; else the latest run under ``runs/``, found as ``campaign --resume`` does."""
    from ..campaign.runner import RUNS_DIR, latest_run_dir
    from .data import ReviewError

    if given is not None:
        return Path(given)
    here = Path(".")
    if (here / "run.sqlite").is_file() or (here / "manifest.json").is_file():
        return here
    latest = latest_run_dir()
    if latest is None:
        raise ReviewError(f"no campaign run here and none under {RUNS_DIR}/\n  how to fix: run `agentforge "
                          f"campaign` first, or pass --run RUN_DIR (a campaign's --out) or a library folder")
    return latest


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .data import load_review
    from .terminal import render_task

    run = find_run(args.run)
    if args.run is None and run != Path("."):
        print(f"(run {run}: the latest under runs/; --run DIR picks another)", file=sys.stderr)
    review = load_review(run, timing=not args.no_timing, only=args.task)
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
    p.add_argument("--run", default=None, help="the run directory or library (default: the current directory "
                   "when it is one, else the latest run under runs/, as `campaign --resume` finds it)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing breakdown")
    p.add_argument("--no-color", action="store_true", help="plain text")
    p.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    p.set_defaults(func=cmd_show)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m agentforge.review.cli review ...``): the review and show
    subcommands with the main command's error handling."""
    return standalone_main(add_parsers, argv)


if __name__ == "__main__":
    sys.exit(main())
