"""Help for the config's settings: what ``biasdecay list settings`` prints.

Each line is read off what the config states once per setting (its default, type hint and
:class:`~biasdecay.train.config.Setting`), so the help cannot drift from what loading accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from biasdecay.toml_text import toml_value
from biasdecay.train.config import (
    COMPONENTS,
    FIELD_TYPES,
    SECTIONS,
    SETTINGS,
    TrainConfig,
    check_setting_name,
    config_to_dict,
)
from biasdecay.train.config_values import describe_type

__all__ = ["SettingHelp", "format_setting_help", "setting_help"]


@dataclass(frozen=True)
class SettingHelp:
    """What help text says about one setting.

    Attributes:
        key: ``section.key``.
        default: its default value.
        type: its type in words (``"float or none"``).
        valid: its valid values in words (``"[0, 1)"``; empty when any value of its type is).
        help: one line saying what it sets.
        applies_to: the components it reaches (empty when it is the config's own).
    """

    key: str
    default: Any
    type: str
    valid: str
    help: str
    applies_to: tuple[str, ...] = ()

    def line(self) -> str:
        """``key = default  (type; valid) [entries]: help`` on one line."""
        valid = f"; {self.valid}" if self.valid else ""
        where = f" [only {', '.join(self.applies_to)}]" if self.applies_to else ""
        return f"{self.key} = {toml_value(self.default)}  ({self.type}{valid}){where}: {self.help}"


def setting_help(name: str = "") -> list[SettingHelp]:
    """The help of the settings named by ``name``, in file order.

    Args:
        name: one setting (``"optimizer.momentum"``), a section (``"optimizer"``), or ``""``
            for every setting.

    Returns:
        One :class:`SettingHelp` per setting.

    Raises:
        ConfigError: an unknown section or key (with the valid ones and the closest).
    """
    section, _, key = name.partition(".")
    if section or key:
        check_setting_name(section, key or None, f"setting {name!r}")
    defaults = config_to_dict(TrainConfig())
    return [
        SettingHelp(
            f"{s}.{k}",
            defaults[s][k],
            describe_type(FIELD_TYPES[s][k]),
            spec.constraint.describe() if spec.constraint is not None else "",
            spec.help,
            # Only a narrower reach is worth saying (model.width reaches every model).
            () if set(spec.applies_to) == set(COMPONENTS.get(s, ())) else spec.applies_to,
        )
        for s in ([section] if section else SECTIONS)
        for k, spec in SETTINGS[s].items()
        if not key or k == key
    ]


def format_setting_help(name: str = "") -> str:
    """:func:`setting_help` as text, one line per setting (for ``--help`` and listings).

    Args:
        name: as :func:`setting_help`.

    Returns:
        One :meth:`SettingHelp.line` per setting, joined by newlines.
    """
    return "\n".join(item.line() for item in setting_help(name))
