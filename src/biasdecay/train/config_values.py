"""Typed values for the config: TOML text read, each value checked against a type hint.

This module knows nothing of the config's sections: its callers pass the type hint, the key to
name in messages and, for an override, the table of known keys. It turns a TOML file into a
mapping, an override's value text into a value, and a value into exactly its field's type (an
int into a float field, a list into a tuple field, a word of :data:`NONE_WORDS` into None for an
optional field), and says a type in words for the messages. Every problem raises
:class:`ConfigError` naming the key, the value and what is valid.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from biasdecay.errors import BiasDecayError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency on 3.10 only)
    import tomli as tomllib

__all__ = [
    "NONE_WORDS",
    "ConfigError",
    "coerce",
    "describe_type",
    "override_value",
    "read_toml",
    "sections_with_key",
    "split_override",
]

# Spellings of None in TOML files and overrides (TOML itself has no null).
NONE_WORDS = frozenset({"none", "None", "null"})


class ConfigError(BiasDecayError, ValueError):
    """A configuration that cannot be used; the message names the key and what is valid."""


def describe_type(hint: Any) -> str:
    """A type hint in words, for messages and help.

    Args:
        hint: a field's type hint, e.g. ``float | None`` or ``tuple[float, float]``.

    Returns:
        The words, e.g. ``"float or none"``, ``"a list of 2 floats"``.
    """
    inner = _optional_inner(hint)
    if inner is not None:
        return f"{describe_type(inner)} or none"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a list of {len(args)} {describe_type(args[0])}s"
    if origin is list:
        return f"a list of {describe_type(args[0])}s"
    if hint is bool:
        return "bool (true or false)"
    return hint.__name__


def _optional_inner(hint: Any) -> Any:
    """``X`` for a hint ``X | None``; None for any other hint (every union here is optional)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return None


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `batch_size = true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against ``hint`` and normalised (int -> float, list -> tuple).

    Args:
        value: a value from TOML, an override or a dataclass.
        hint: the field's type hint.
        key: ``section.key`` for messages.

    Returns:
        The value to store.

    Raises:
        ConfigError: the value does not have the hinted type.
    """
    inner = _optional_inner(hint)
    if inner is not None:
        if value is None or (isinstance(value, str) and value in NONE_WORDS):
            return None
        try:
            return coerce(value, inner, key)
        except ConfigError:
            raise _type_error(key, hint, value) from None
    origin = typing.get_origin(hint)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return _coerce_sequence(value, hint, key)
    if hint is float and _is_int(value):
        return float(value)  # `epochs = 2` means 2.0
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = _is_int(value)
    else:
        ok = origin is None and isinstance(value, hint) and not isinstance(value, bool)
    if not ok:
        raise _type_error(key, hint, value)
    return value


def _type_error(key: str, hint: Any, value: Any) -> ConfigError:
    shown = "none" if value is None else f"{value!r} ({type(value).__name__})"
    return ConfigError(f"{key}: expected {describe_type(hint)}, got {shown}")


def _coerce_sequence(value: Sequence[Any], hint: Any, key: str) -> Any:
    """A list/tuple field element by element; a tuple field must have its exact length."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(value) != len(args):
            raise ConfigError(
                f"{key}: expected {describe_type(hint)}, got {list(value)!r} (length {len(value)})"
            )
        return tuple(
            coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]


def override_value(raw: str, hint: Any) -> Any:
    """The value an override's text gives, before :func:`coerce` checks its type.

    Args:
        raw: the text after ``=``, e.g. ``"2"``, ``"[0.9, 0.99]"``, ``"beta_decay"``.
        hint: the field's type hint (a field that takes a string keeps the text as it is).

    Returns:
        The TOML value when the text parses as exactly one, else the text itself.
    """
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: policy.name=beta_decay, data.root=~/data, data.root=none
    if set(parsed) != {"value"}:
        return raw  # "1\nother = 2" smuggles a second key in; keep it as text
    value = parsed["value"]
    accepts_str = str in (hint, _optional_inner(hint))
    if accepts_str and not isinstance(value, str):
        return raw  # run.out=2024-01-01 is a path, not a TOML date
    return value


def sections_with_key(key: str, keys: Mapping[str, Collection[str]]) -> list[str]:
    """The sections of ``keys`` (section -> its keys) that have ``key``, in their order."""
    return [section for section, known in keys.items() if key in known]


def split_override(text: str, keys: Mapping[str, Collection[str]]) -> tuple[str, str, str]:
    """Split an override ``"section.key=value"`` into its section, key and raw value text.

    Args:
        text: the override, e.g. ``"run.epochs=2"``.
        keys: section -> its keys, to suggest a section when ``text`` names a bare key.

    Returns:
        ``(section, key, raw_value)``, whitespace around each part removed.

    Raises:
        ConfigError: no ``=``, or a name that is not ``section.key``.
    """
    name, eq, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if eq and dot and section and key and "." not in key:
        return section, key, raw.strip()
    owners = sections_with_key(name.strip(), keys)
    hint = f"; did you mean {owners[0]}.{name.strip()}={raw.strip()}?" if eq and owners else ""
    raise ConfigError(
        f"malformed override {text!r}: expected the form section.key=value "
        f"(e.g. run.epochs=2, optimizer.betas=[0.9, 0.99], data.root=none){hint}"
    )


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file.

    Args:
        path: the file.

    Returns:
        Its tables as ``tomllib`` reads them.

    Raises:
        ConfigError: a missing or unreadable file, or invalid TOML (the message names the file
            and quotes the offending line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # tomllib reports "(at line N, column M)" in the message only (no attribute before 3.14).
        where = re.search(r"at line (\d+)", str(err))
        lines = text.splitlines()
        quoted = ""
        if where and 1 <= int(where.group(1)) <= len(lines):
            quoted = f"\n  line {where.group(1)}: {lines[int(where.group(1)) - 1]}"
        raise ConfigError(f"invalid TOML in {path}: {err}{quoted}") from None
