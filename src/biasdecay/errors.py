"""The one base class of the errors biasdecay raises about what it was given.

Every error that means "the input (a config, a path, a data file, a checkpoint, a command line)
cannot be used, and here is how to fix it" derives from :class:`BiasDecayError`. The CLI catches
exactly this class and prints its message in one line; anything else is a bug and keeps its
traceback. Each subclass also derives from the built-in exception it has always been
(``ValueError``, ``OSError``, ``ImportError``), so callers that catch those keep working.
"""

from __future__ import annotations

__all__ = ["BiasDecayError", "InputError", "MissingDependencyError"]


class BiasDecayError(Exception):
    """Base of every error whose message says what is wrong with the input and how to fix it.

    Attributes:
        exit_status: what the CLI exits with after printing the message (2: bad input).
    """

    exit_status = 2


class InputError(BiasDecayError, ValueError):
    """An argument the library was given cannot be used (a model, data, a setting, a shape);
    the message names it and says what to pass instead."""


class MissingDependencyError(BiasDecayError, ImportError):
    """An optional package is not installed; the message names the ``pip install`` to run."""
