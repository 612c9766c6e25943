"""`agentforge report MODEL_FILE`: the offload report of a model on the command line.

Wired into agentforge/cli.py by ``add_report_parser(sub)`` (sub: the subparsers of the main
parser); its handler is ``cmd_report(args) -> exit code``. MODEL_FILE: a .py defining
``Model`` and ``get_inputs()`` (and optionally ``get_init_inputs()``), like a suite task.
"""

from __future__ import annotations

import argparse
import json
import sys

from agentforge.command import standalone_main
from agentforge.errors import AgentforgeError


def add_report_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser("report", help="which ops of a model the library offloads, chip time vs op by op",
                       description="Export MODEL_FILE's Model on get_inputs(), match the library's kernels, and "
                                   "report offloaded ops, eager ops and why, simulated chip time and HBM bytes "
                                   "next to the same model run op by op on the chip.")
    p.add_argument("model_file", metavar="MODEL_FILE", help="a .py defining Model and get_inputs() "
                   "(and optionally get_init_inputs())")
    p.add_argument("--library", help="library folder or campaign run folder (default: agentforge.toml [torch] library)")
    p.add_argument("--machine", help="machine preset or TOML file (default: the library's)")
    p.add_argument("--namespace", help="torch.ops namespace to register the library under (default rdu)")
    p.add_argument("--config", help="config file with a [torch] table (default ./agentforge.toml)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Print the report; 0 on success, 2 on a user error (message, no traceback)."""
    from agentforge.torch.report import load_model_file, report

    try:
        model, inputs = load_model_file(args.model_file)
        opts = {"config": args.config} if getattr(args, "config", None) else {}
        r = report(model, inputs, library=args.library, machine=args.machine, namespace=args.namespace, options=opts)
    except AgentforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r.model = str(args.model_file)
    print(json.dumps(r.to_dict(), indent=2, default=str) if args.json else r)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m agentforge.torch.cli report MODEL_FILE``): the report
    subcommand with the main command's error handling."""
    return standalone_main(add_report_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
