"""The ``amst`` command's entry point: the CLI's imports take a second, and a Ctrl-C during
them ends the command quietly (exit 130) instead of printing the interpreter's traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("amst: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    cli_main()
