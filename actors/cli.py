"""The ``gpulane`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``gpulane`` sub-command."""
    parser = argparse.ArgumentParser(
        prog="gpulane",
        description="A durable, preemptive GPU arbiter for local LLMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "demo", help="run the demo on a simulated GPU (what `make run` does)", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from actors.demo import main as demo_main

        return demo_main(rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
