"""Config fields that state their setting once: a :class:`Setting` in each dataclass field.

A section of the config is a plain dataclass whose fields are made by :func:`setting`,
:func:`choice` or :func:`option`. Each field carries, besides its default, a :class:`Setting`
(its valid values, one line of help and, for a component's option, which option of which
registry entries it sets) that loading, ``--set``, the help and the engine read back with
:func:`setting_of`. A component's option takes its default, constraint and help from the
component's registry, so they are written once, where the component is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from biasdecay.constraints import Constraint, OneOf
from biasdecay.registry import Registry

__all__ = ["Setting", "choice", "every_option", "option", "setting", "setting_of"]

_KEY = "setting"  # the key of a field's metadata that holds its Setting


@dataclass(frozen=True)
class Setting:
    """What a config field is, stated once: loading, ``--set``, help and the engine read it.

    Attributes:
        constraint: its valid values (None: any value of its type).
        help: one line saying what it sets.
        option: the option of the section's component it sets (None: the config's own).
        applies_to: the registry entries of that component that take it.
        in_epochs: the value counts epochs where the option counts steps (the engine
            converts it with the run's steps per epoch).
    """

    constraint: Constraint | None = None
    help: str = ""
    option: str | None = None
    applies_to: tuple[str, ...] = ()
    in_epochs: bool = False


def setting(default: Any, constraint: Constraint | None, help: str, **facts: Any) -> Any:
    """A dataclass field holding its :class:`Setting` (a list default is copied per instance).

    Args:
        default: the field's default value.
        constraint: its valid values (None: any value of its type).
        help: one line saying what it sets.
        **facts: the other attributes of :class:`Setting` (``option``, ``applies_to``,
            ``in_epochs``).

    Returns:
        The ``dataclasses.field``.
    """
    metadata = {_KEY: Setting(constraint, help, **facts)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def choice(registry: Registry, default: str, help: str) -> Any:
    """A field naming an entry of ``registry``.

    Args:
        registry: the entries it chooses from.
        default: the entry chosen by default.
        help: one line saying what it chooses.

    Returns:
        The ``dataclasses.field``, valid values the registry's names.
    """
    return setting(default, OneOf(registry.names), help)


def option(
    registry: Registry,
    name: str,
    *,
    applies_to: tuple[str, ...] | None = None,
    default: Any = dataclasses.MISSING,
    help: str | None = None,
) -> Any:
    """A field setting a component's option, its facts read from the component's registry.

    Args:
        registry: the component's registry.
        name: the option, as the entries' builders name it.
        applies_to: the entries that take it (None: every entry that does); the first one's
            default, constraint and help are the field's.
        default: the field's default when it differs from the entry's.
        help: the field's help when it differs from the entry's.

    Returns:
        The ``dataclasses.field``.
    """
    spec, names = registry.option(name, applies_to)
    default = spec.default if default is dataclasses.MISSING else default
    help = spec.help if help is None else help
    return setting(default, spec.constraint, help, option=name, applies_to=names)


def every_option(registry: Registry, *, exclude: tuple[str, ...] = ()) -> Any:
    """Class decorator (under ``@dataclass``): an :func:`option` field for each of the options.

    The section then holds every option any entry of ``registry`` accepts (less ``exclude`` and
    the fields the class declares itself), each typed as its builder's signature types it. A new
    option of a builder is thus a config setting, with its default, range and help, without an
    edit here.

    Args:
      registry: the component's registry.
      exclude: options the config does not expose (the engine sets them).

    Returns:
      The decorator; it adds the fields after the declared ones, in registration order.

    Raises:
      TypeError: an option whose builder's type hints do not resolve (declare it explicitly).
    """

    def add_fields(section: type) -> type:
        annotations = section.__dict__.get("__annotations__", {})
        for name in registry.all_options():
            if name in exclude or name in annotations:
                continue
            spec, _ = registry.option(name)
            if spec.annotation is None:
                raise TypeError(f"{section.__name__}: option {name!r} has no resolvable type")
            annotations[name] = spec.annotation
            setattr(section, name, option(registry, name))
        section.__annotations__ = annotations
        return section

    return add_fields


def setting_of(item: dataclasses.Field[Any]) -> Setting:
    """The :class:`Setting` a field made by this module holds.

    Args:
        item: one of ``dataclasses.fields(section)``.

    Returns:
        Its :class:`Setting`.
    """
    return item.metadata[_KEY]
