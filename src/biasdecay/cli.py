"""The ``biasdecay`` command line: ``measure``, ``train``, ``sweep``, ``report`` and ``list``.

Each subcommand is a module of :mod:`biasdecay.commands` that owns its arguments
(``add_parser``) and its action (``run``); this module lists them and handles their errors.
Every subcommand explains itself with ``--help``. An error in what the user gave (a
:class:`~biasdecay.errors.BiasDecayError`) prints one line saying what is wrong and how to fix
it, with exit status 2 (3 for a diverged run), never a traceback; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from biasdecay import __version__
from biasdecay.commands import listing, measure, report, sweep, train
from biasdecay.errors import BiasDecayError

COMMANDS = (measure, train, sweep, report, listing)

EXIT_USAGE = BiasDecayError.exit_status
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    """The ``biasdecay`` parser with every subcommand of :data:`COMMANDS`.

    Returns:
        The parser; a parsed subcommand's ``run`` function is the ``handler`` attribute.
    """
    parser = argparse.ArgumentParser(
        prog="biasdecay",
        description="Connectivity sharpness, bias decay and large-batch training research tools.",
    )
    parser.add_argument("--version", action="version", version=f"biasdecay {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: the subcommand's, 2 for bad input (and for no subcommand), 3 for a
        diverged run, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except BiasDecayError as exc:
        # Every error about the input says what is wrong and how to fix it: one line is enough.
        print(f"biasdecay {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"biasdecay {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
