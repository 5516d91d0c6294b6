"""Errors raised by the data sources, and the lazy import of optional back-ends.

Every data error names the file it is about, what was expected there, and how to get the data:
a run must stop with an actionable message rather than fall back to anything (least of all to
synthetic data, which would make every number it produces meaningless).
"""

from __future__ import annotations

from types import ModuleType

from biasdecay.errors import BiasDecayError, MissingDependencyError
from biasdecay.extras import import_extra

__all__ = ["DataError", "MissingDependencyError", "import_optional"]


class DataError(BiasDecayError, ValueError):
    """A data file is missing, unreadable or does not have the expected layout."""


def import_optional(module: str, needed_for: str) -> ModuleType:
    """Import a package of the ``data`` extra on first use, so `import biasdecay.data` stays light.

    Args:
        module: dotted module name, e.g. ``"sklearn.datasets"``.
        needed_for: what the caller was doing, for the message (e.g. ``"the 'digits' dataset"``).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module cannot be imported; the message names the extra.
    """
    return import_extra(module, "data", needed_for)
