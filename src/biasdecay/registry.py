"""The one registry type: a read-only mapping name -> entry, with a getter that explains misses.

An :class:`Entry` is a component's builder with what it accepts: its options (name, default,
constraint, one-line help) are read once from the builder's own signature, so a default is
written once, where the builder is defined. A constraint comes from the parameter's annotation
(``Annotated[float, Range(0.0)]``) or from the entry; the help from the builder's ``Args:``
docstring section or from the entry. The entry's own ``defaults`` replace the signature's (the
paper's SGD baseline builds ``torch.optim.SGD`` with momentum 0.9).

Usage::

    SCHEDULES = Registry("schedule", [Entry("cosine", cosine_warmup, fixed=("step",))])
    SCHEDULES.entry("cosine").options["final_lr"].default     # 0.0, from the signature
    SCHEDULES.bind("cosine", total_steps=10, peak_lr=0.1, warmup_steps=2)   # checked kwargs
    SCHEDULES.entry("cosin")    # RegistryError: unknown schedule 'cosin'; valid names: ...

Entries that are not builders (a study, a preset) can live in a :class:`Registry` too: any
object with a ``name`` attribute is an entry; only :class:`Entry` objects have options.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Annotated, Any, Generic, TypeVar, Union

from biasdecay.constraints import Constraint, did_you_mean
from biasdecay.errors import BiasDecayError

__all__ = ["REQUIRED", "Entry", "Option", "OptionError", "Registry", "RegistryError"]

#: The default of an option the caller must give.
REQUIRED = inspect.Parameter.empty

_OPTION_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class RegistryError(BiasDecayError, ValueError):
    """An unknown name; the message lists the registered ones."""


class OptionError(BiasDecayError, ValueError, TypeError):
    """An option a builder does not take, or a required one left out (a ``TypeError`` too: it is
    what calling the builder with such arguments would raise)."""


@dataclass(frozen=True)
class Option:
    """One keyword argument an entry accepts.

    Attributes:
      name: the argument's name.
      default: its default, or :data:`REQUIRED`.
      constraint: its valid values (None: any the builder accepts).
      help: one line saying what it is.
      annotation: its type, as the builder's signature gives it without ``Annotated``'s
        metadata (None where the hints do not resolve, as for some foreign builders).
    """

    name: str
    default: Any = REQUIRED
    constraint: Constraint | None = None
    help: str = ""
    annotation: Any = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """``"name = default  valid  help"`` on one line, for listings."""
        default = "required" if self.required else f"default {self.default!r}"
        valid = f"; {self.constraint.describe()}" if self.constraint is not None else ""
        return f"{self.name} ({default}{valid}){': ' + self.help if self.help else ''}"


def _annotated_constraint(hint: Any) -> Constraint | None:
    """The :class:`Constraint` in an ``Annotated[...]`` hint (also inside ``X | None``)."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Constraint)), None)
    if typing.get_origin(hint) in (Union, types.UnionType):
        found = (_annotated_constraint(arg) for arg in typing.get_args(hint))
        return next((c for c in found if c is not None), None)
    return None


def _plain_type(hint: Any) -> Any:
    """``hint`` without ``Annotated``'s metadata (also inside ``X | None``); None stays None."""
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[0]
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = tuple(_plain_type(arg) for arg in typing.get_args(hint))
        return functools.reduce(operator.or_, args)
    return hint


def _hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The builder's resolved type hints with ``Annotated`` kept; {} when they do not resolve."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # foreign builders (torch) may hold hints that do not resolve here
        return {}


_ARG_LINE = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:, \w+)*)(?: \([^)]*\))?: (?P<text>.*)$")


def _argument_help(doc: str | None) -> dict[str, str]:
    """Argument name -> its description on one line, from a docstring's ``Args:`` section."""
    if not doc:
        return {}
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return {}
    found: dict[str, list[str]] = {}
    indent, current = None, []
    for line in lines[start + 1 :]:
        match = _ARG_LINE.match(line)
        if match and (indent is None or len(match["indent"]) == indent):
            indent, current = len(match["indent"]), [match["text"].strip()]
            for name in match["names"].split(", "):
                found[name] = current
        elif line.strip() and indent is not None and len(line) - len(line.lstrip()) > indent:
            current.append(line.strip())  # a continuation line
        elif line.strip() or indent is None:
            break  # the next section ("Returns:") or text before any argument
    # Help is shown as plain text: the reStructuredText literal quotes go.
    return {name: " ".join(parts).replace("``", "") for name, parts in found.items()}


@dataclass(frozen=True)
class Entry:
    """One registered component: its builder, the options it accepts and the entry's defaults.

    Attributes:
      name: the registry key.
      builder: the function or class that builds the component (None for one that is not
        built, e.g. a streamed data source).
      defaults: the entry's defaults, replacing the builder's own (read-only).
      description: one line for listings.
      constraints: constraints of options whose annotation carries none (foreign builders).
      option_help: help of options whose builder's docstring says nothing useful.
      fixed: builder parameters the caller passes positionally, not options (``params``,
        ``step``).
      options: name -> :class:`Option`, read from the builder's signature (derived).
      open_options: the builder also takes ``**kwargs`` it passes on, so options beyond
        :attr:`options` are left to it (derived).
    """

    name: str
    builder: Callable[..., Any] | None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    constraints: Mapping[str, Constraint] = field(default_factory=dict)
    option_help: Mapping[str, str] = field(default_factory=dict)
    fixed: tuple[str, ...] = ()
    options: Mapping[str, Option] = field(init=False, repr=False, compare=False)
    open_options: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read-only views keep the frozen entry from being changed through its dicts.
        for name in ("defaults", "constraints", "option_help"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "options", MappingProxyType(self._read_options()))
        parameters = inspect.signature(self.builder).parameters.values() if self.builder else ()
        varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        object.__setattr__(self, "open_options", varkw)
        stray = sorted(set(self.defaults) - set(self.options))
        if stray:
            raise TypeError(f"{self.name}: defaults for options the builder lacks: {stray}")

    def _read_options(self) -> dict[str, Option]:
        if self.builder is None:
            return {}
        hints = _hints(self.builder)
        docs = _argument_help(inspect.getdoc(self.builder))
        options = {}
        for name, p in inspect.signature(self.builder).parameters.items():
            if name in self.fixed or p.kind not in _OPTION_KINDS:
                continue
            options[name] = Option(
                name,
                self.defaults.get(name, p.default),
                self.constraints.get(name) or _annotated_constraint(hints.get(name)),
                self.option_help.get(name) or docs.get(name, ""),
                _plain_type(hints.get(name)),
            )
        return options

    def option_names(self) -> tuple[str, ...]:
        """The keyword options the builder accepts, in signature order."""
        return tuple(self.options)

    def accepts(self, option: str) -> bool:
        """Whether ``option`` is one of the builder's options."""
        return option in self.options

    def bind(self, options: Mapping[str, Any], owner: str | None = None) -> dict[str, Any]:
        """The builder's keyword arguments: the entry's defaults, then ``options``, checked.

        Args:
          options: the caller's options.
          owner: how messages name the entry (default: ``'<name>'``).

        Returns:
          ``{**defaults, **options}``, each value checked against (and normalised by) its
          option's constraint; options left out keep the builder's own defaults.

        Raises:
          OptionError: an option the builder does not take (the message lists the valid ones
            and suggests the closest), or a required option left out.
          ConstraintError: a value outside its option's constraint.
        """
        owner = owner or repr(self.name)
        unknown = [key for key in options if key not in self.options and not self.open_options]
        valid = ", ".join(self.options) or "none"
        if unknown:
            raise OptionError(
                f"{owner} got unknown option(s) {', '.join(unknown)}; valid options: {valid}"
                + did_you_mean(unknown[0], self.options, "{}")
            )
        bound = {**self.defaults, **options}
        missing = [n for n, o in self.options.items() if o.required and n not in bound]
        if missing:
            raise OptionError(
                f"{owner} is missing required option(s) {', '.join(missing)}; "
                f"valid options: {valid}"
            )
        for key, value in bound.items():
            option = self.options.get(key)  # absent: passed through to a builder's **kwargs
            constraint = option.constraint if option is not None else None
            if constraint is not None:
                bound[key] = constraint.check(key, value, owner)
        return bound

    def build(self, *args: Any, **options: Any) -> Any:
        """``builder(*args, **bind(options))``: the component, built with checked options."""
        if self.builder is None:
            raise TypeError(f"{self.name!r} has no builder")
        return self.builder(*args, **self.bind(options))

    def describe_options(self) -> list[str]:
        """One line per option (name, default, valid values, help), for listings."""
        return [option.describe() for option in self.options.values()]


E = TypeVar("E")


class Registry(Mapping[str, E], Generic[E]):
    """A read-only mapping name -> entry whose getter lists the known names on a miss.

    Args:
      kind: what an entry is, for messages (``"optimizer"``, ``"decay policy"``).
      entries: the entries, each with a ``name`` attribute.
      sort: list names sorted (else in registration order).
      option_help: help shared by every :class:`Entry` for options its builder does not
        document (an entry's own ``option_help`` wins).
      defaults: defaults shared by every :class:`Entry` that has the option (an entry's own
        ``defaults`` win).
      constraints: constraints shared by every :class:`Entry` that has the option and no
        annotation for it (an entry's own ``constraints`` win).
    """

    def __init__(
        self,
        kind: str,
        entries: Iterable[E],
        *,
        sort: bool = False,
        option_help: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        constraints: Mapping[str, Constraint] | None = None,
    ) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}
        shared = {
            "option_help": option_help or {},
            "defaults": defaults or {},
            "constraints": constraints or {},
        }
        for entry in entries:
            if isinstance(entry, Entry) and any(shared.values()):
                entry = _with_shared(entry, shared)
            if entry.name in self._entries:
                raise ValueError(f"{kind} {entry.name!r} is registered twice")
            self._entries[entry.name] = entry
        self._order = sorted(self._entries) if sort else list(self._entries)

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self._order})"

    def names(self) -> list[str]:
        """The registered names, in listing order."""
        return list(self._order)

    def entry(self, name: str) -> E:
        """The entry registered as ``name``.

        Raises:
          RegistryError: ``name`` is not registered; the message lists the valid names and
            suggests the closest.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self._order)}"
                + did_you_mean(name, self._order)
            ) from None

    def bind(self, name: str, **options: Any) -> dict[str, Any]:
        """The checked keyword arguments of entry ``name`` (see :meth:`Entry.bind`)."""
        return self.entry(name).bind(options, owner=f"{self.kind} {name!r}")

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """Entry ``name``'s component: ``builder(*args, **bind(name, **options))``."""
        entry = self.entry(name)
        return entry.builder(*args, **entry.bind(options, owner=f"{self.kind} {name!r}"))

    def all_options(self) -> tuple[str, ...]:
        """Every option any entry accepts, in registration order, each once."""
        return tuple(dict.fromkeys(n for e in self._entries.values() for n in _options_of(e)))

    def option(
        self, option: str, applies_to: Iterable[str] | None = None
    ) -> tuple[Option, tuple[str, ...]]:
        """An option shared by several entries, as the first of them defines it.

        A configuration section that sets one option for whichever entry is chosen reads its
        default, constraint and help here rather than restating them.

        Args:
          option: the option's name.
          applies_to: the entries the setting reaches, the first defining it; None: every
            entry that accepts the option, in registration order.

        Returns:
          ``(the first entry's Option, the names of the entries it applies to)``.

        Raises:
          ValueError: no entry (or one named in ``applies_to``) accepts the option.
        """
        if applies_to is None:
            names = tuple(n for n, e in self._entries.items() if option in _options_of(e))
        else:
            names = tuple(applies_to)
        lacking = [n for n in names if option not in _options_of(self.entry(n))]
        if not names or lacking:
            raise ValueError(f"{self.kind} option {option!r} is not accepted by {lacking or 'any'}")
        return _options_of(self._entries[names[0]])[option], names


def _options_of(entry: Any) -> Mapping[str, Option]:
    return entry.options if isinstance(entry, Entry) else {}


def _with_shared(entry: Entry, shared: Mapping[str, Mapping[str, Any]]) -> Entry:
    """``entry`` with the registry's shared mappings (help, defaults, constraints) under its own."""
    names = set(_options_of(entry))
    merged = {
        field_name: {**{k: v for k, v in table.items() if k in names}, **getattr(entry, field_name)}
        for field_name, table in shared.items()
    }
    return replace(entry, **merged)
