"""Errors raised by the data sources, and the lazy import of optional back-ends.

Every data error names the file it is about, what was expected there, and how to get the data:
a run must stop with an actionable message rather than fall back to anything (least of all to
synthetic data, which would make every number it produces meaningless).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from biasdecay.errors import BiasDecayError

__all__ = ["DataError", "MissingDependencyError", "import_optional"]

INSTALL_HINT = "pip install 'biasdecay[data]'"


class DataError(BiasDecayError, ValueError):
    """A data file is missing, unreadable or does not have the expected layout."""


class MissingDependencyError(BiasDecayError, ImportError):
    """An optional package needed by one data source is not installed."""


def import_optional(module: str, needed_for: str) -> ModuleType:
    """Import an optional dependency on first use, so `import biasdecay.data` stays light.

    Args:
        module: dotted module name, e.g. ``"sklearn.datasets"``.
        needed_for: what the caller was doing, for the message (e.g. ``"the 'digits' dataset"``).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: when the module cannot be imported; the message says which
            extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top_level = module.split(".")[0]
        raise MissingDependencyError(
            f"{needed_for} needs the optional package '{top_level}', which is not installed "
            f"({error}). Install the data extras with: {INSTALL_HINT}"
        ) from error
