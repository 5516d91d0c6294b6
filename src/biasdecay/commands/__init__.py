"""Implementations of the ``biasdecay`` subcommands (argument parsing lives in cli.py)."""
