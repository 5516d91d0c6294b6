"""The ``biasdecay`` subcommands, one module each, all of the same form.

Each module has:

``add_parser(subparsers) -> argparse.ArgumentParser``
    adds the subcommand to ``subparsers`` (what ``ArgumentParser.add_subparsers`` returned),
    with its help line, description, examples and arguments, and returns its parser.
``run(args: argparse.Namespace) -> int``
    does what ``args`` (the subcommand's parsed arguments) ask and returns the exit status, 0
    unless its docstring says otherwise; bad input raises a
    :class:`~biasdecay.errors.BiasDecayError`, which :mod:`biasdecay.cli` prints in one line.

Flags several subcommands take are defined once, in :mod:`biasdecay.commands.flags`.
"""
