"""Optional packages: imported on first use, and a missing one named with its pip command.

``import biasdecay`` needs only torch and numpy. Each optional package belongs to an extra of
the distribution (see pyproject.toml); :func:`import_extra` is the one way the library imports
one, so that every missing package gets the same kind of message: what needed it, and the
``pip install`` that provides it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from biasdecay.errors import MissingDependencyError

__all__ = ["MissingDependencyError", "import_extra", "install_command"]


def install_command(extra: str) -> str:
    """``pip install 'biasdecay[EXTRA]'``, the command that provides an extra's packages."""
    return f"pip install 'biasdecay[{extra}]'"


def import_extra(
    module: str, extra: str, needed_for: str, *, package: str | None = None, note: str = ""
) -> ModuleType:
    """Import an optional module, or say which extra provides it.

    Args:
        module: dotted module name, e.g. ``"sklearn.datasets"``.
        extra: the extra that installs it (``data``, ``plot``, ``tensorboard``, ``lightning``,
            ``transformers``).
        needed_for: what the caller was doing, for the message (e.g. ``"the 'digits' dataset"``).
        package: the PyPI name to install on its own (default: the module's top-level name).
        note: a sentence added to the message (e.g. what works without the package).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the module cannot be imported (an ``ImportError``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{needed_for} needs the optional package '{package}', which is not installed "
            f"({error}): {install_command(extra)} (or pip install {package}){note}"
        ) from error
