"""The argparse pieces several subcommands share: their parser's form and common flags."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_overrides_flag", "add_progress_flags", "add_subcommand", "show_progress"]


def add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """Add subcommand ``name``, its description and examples shown as written.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned for the ``biasdecay`` parser.
        name: the subcommand.
        help: its line in ``biasdecay --help``.
        description: the text above its options in ``biasdecay NAME --help`` (line breaks kept).
        epilog: the text below them, usually examples (line breaks kept).

    Returns:
        The subcommand's parser, to add its arguments to.
    """
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--progress`` / ``--no-progress`` (dest ``progress``: True, False or None).

    Args:
        parser: the subcommand's parser.
    """
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress bars (default: only on a terminal)",
    )
    bar.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress bars"
    )


def show_progress(flag: bool | None) -> bool:
    """Whether to show progress bars: as forced by the flags, else only on a terminal.

    Args:
        flag: the ``progress`` value :func:`add_progress_flags` parsed.

    Returns:
        ``flag`` when it was given, else whether stderr is a terminal.
    """
    return sys.stderr.isatty() if flag is None else flag


def add_overrides_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """Add the repeatable ``--set SECTION.KEY=VALUE`` (dest ``set``: a list or None).

    Its items are config overrides in the syntax of :func:`biasdecay.train.config.load_config`.

    Args:
        parser: the subcommand's parser.
        help: what one item applies to and what it wins over.
    """
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=help)
