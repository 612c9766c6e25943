"""Running one parsed ``agentforge`` subcommand: the error handling every entry point shares.

``agentforge`` (:mod:`agentforge.cli`) and the standalone entries of its subcommand modules
(``python -m agentforge.review.cli``, ``python -m agentforge.torch.cli``) run a handler the
same way: a user error is one line and exit 2, an interrupt 130, a bug one line and exit 3.
It is its own module so that the subcommand modules need not import the main command (which
imports them to register their parsers).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .errors import AgentforgeError

__all__ = ["run_command", "standalone_main"]


def _llm_errors() -> tuple[type[BaseException], ...]:
    try:
        from .llm.errors import LLMError
        return (LLMError,)
    except ImportError:  # pragma: no cover
        return ()


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` and turn what it raises into the command's exit code and message."""
    from asp_lang import AspError

    try:
        return args.func(args)
    except AgentforgeError as e:
        print(f"agentforge: error: {e}", file=sys.stderr)
        return 2
    except AspError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except _llm_errors() as e:  # no key, unreachable server, spent budget: the user's to fix
        print(f"agentforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:  # a bug in agentforge: one line, not a traceback
        print(f"agentforge: internal error: {type(e).__name__}: {e} (please report this)", file=sys.stderr)
        return 3


def standalone_main(add_parsers: Callable[["argparse._SubParsersAction"], object],
                    argv: list[str] | None = None) -> int:
    """A subcommand module's own entry: a parser with only the subcommands ``add_parsers`` adds
    (named as under ``agentforge``), run with the main command's error handling."""
    ap = argparse.ArgumentParser(prog="agentforge")
    add_parsers(ap.add_subparsers(dest="cmd", required=True))
    return run_command(ap.parse_args(argv))
