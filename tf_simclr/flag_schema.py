"""Command-line flags generated from the configuration dataclasses (issue 13).

A flag of a binary is a field of a dataclass in :mod:`tf_simclr.config`: the field's type picks
the absl definer (``bool``, ``int``, ``float``, ``str``, and ``X | None`` with a None default; a
``str`` with choices is an enum) and the field itself gives the default, the help text and the
choices (:func:`tf_simclr.config.setting`). A :class:`FlagSchema` only says which dataclasses a
binary exposes, which of their fields are not flags, which flags keep another name
(:class:`Alias`) and how the flags are grouped; it defines the flags and reads the parsed values
back into the dataclasses.

absl files every flag under the module that defines it, and its ``--helpshort`` lists the flags
of the module named ``sys.argv[0]`` only: none for a console script, whose ``__main__`` defines
no flag. The schema files each flag under its group's name instead (``module_name``), so that
``--helpfull`` shows the groups as sections, and :func:`install_grouped_help` replaces ``--help``
and ``--helpshort`` with the binary's own flags, group by group (a help request exits with 0).
A binary whose flags are not dataclass fields (``tf-simclr-export``) lists them as flag names in
its schema's groups and defines them under :meth:`FlagSchema.module_name`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from absl import app, flags

from tf_simclr.config import CHOICES, HELP

ConfigT = TypeVar("ConfigT")

_DEFINERS = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


@dataclasses.dataclass(frozen=True)
class Alias:
    """A flag that sets ``config.field`` under another name.

    With ``values`` the flag is an enum over its keys, each standing for the field value it maps
    to (``--precision=bfloat16`` sets ``dtype_policy="mixed_bfloat16"``). With ``index`` the
    field is a tuple and the flag sets that element of it, the others keeping the field's default
    (``--crop_area_min`` sets ``crop_area_range[0]``).
    """

    config: type
    field: str
    values: Mapping[str, object] | None = None
    index: int | None = None


def _scalar_type(annotation: Any, where: str) -> type:
    """``bool``, ``int``, ``float`` or ``str``: the annotation itself, or ``X`` of ``X | None``."""
    if isinstance(annotation, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            annotation = members[0]
    if annotation not in _DEFINERS:
        raise TypeError(
            f"{where} has type {annotation}, which no flag represents: list it as a field that is "
            "not a flag, or reach it through an Alias."
        )
    return annotation


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """One generated flag: its name, its group and the dataclass field it sets."""

    name: str
    group: str
    config: type
    field: dataclasses.Field
    annotation: Any
    alias: Alias | None = None

    @property
    def default(self) -> object:
        """The flag's default: the field's default, seen through the alias."""
        return self.flag_value(self.field.default)

    def field_value(self, flag_value: object) -> object:
        """The value of the field that ``flag_value`` stands for."""
        if self.alias is not None and self.alias.values is not None:
            return self.alias.values[flag_value]
        if self.alias is not None and self.alias.index is not None:
            values = list(self.field.default)
            values[self.alias.index] = flag_value
            return tuple(values)
        return flag_value

    def flag_value(self, field_value: object) -> object:
        """The flag's value that stands for ``field_value`` (the inverse of
        :meth:`field_value`; an indexed alias reads its element only)."""
        if self.alias is not None and self.alias.values is not None:
            return next(name for name, mapped in self.alias.values.items() if mapped == field_value)
        if self.alias is not None and self.alias.index is not None:
            return field_value[self.alias.index]
        return field_value

    def define(self, flag_values: flags.FlagValues, module_name: str) -> None:
        """Define the flag in ``flag_values``, filed under ``module_name`` (its group)."""
        where = f"{self.config.__name__}.{self.field.name}"
        help_text = self.field.metadata[HELP]
        choices = self.field.metadata[CHOICES]
        if self.alias is not None and self.alias.values is not None:
            mapping = ", ".join(f"{name} = {value}" for name, value in self.alias.values.items())
            help_text = f"{help_text} Values: {mapping}."
            kind, choices = str, tuple(self.alias.values)
        elif self.alias is not None and self.alias.index is not None:
            element = typing.get_args(self.annotation)[self.alias.index]
            kind = _scalar_type(element, f"{where}[{self.alias.index}]")
            help_text = (
                f"{help_text} This flag sets element {self.alias.index}; the others stay as in "
                f"{self.field.default}."
            )
        else:
            kind = _scalar_type(self.annotation, where)
        where_defined = {"flag_values": flag_values, "module_name": module_name}
        if kind is str and choices:
            flags.DEFINE_enum(self.name, self.default, choices, help_text, **where_defined)
            return
        if choices:
            help_text = f"{help_text} One of {', '.join(str(choice) for choice in choices)}."
        _DEFINERS[kind](self.name, self.default, help_text, **where_defined)


@dataclasses.dataclass(frozen=True)
class FlagSchema:
    """The flags a binary generates from its configuration dataclasses.

    ``groups`` lists ``(title, members)`` in the order ``--help`` shows them; a member is a
    dataclass (its fields' flags, unless a group names the flag itself) or a flag name.
    ``not_flags`` names the fields that get no flag (the binary sets them, or they keep the
    paper's value); ``aliases`` maps a flag onto the field it sets when their names differ.
    """

    program: str
    groups: tuple[tuple[str, tuple[type | str, ...]], ...]
    not_flags: Mapping[type, tuple[str, ...]]
    aliases: Mapping[str, Alias]

    def module_name(self, group: str) -> str:
        """What absl files ``group``'s flags under: a section of ``--helpfull``."""
        return f"{self.program} {group}"

    def flags(self) -> list[ConfigFlag]:
        """Every generated flag, dataclass by dataclass in field order."""
        placed = {
            member: title
            for title, members in self.groups
            for member in members
            if isinstance(member, str)
        }
        alias_names = {(alias.config, alias.field): name for name, alias in self.aliases.items()}
        result = []
        for title, members in self.groups:
            for config in members:
                if isinstance(config, str):
                    continue
                annotations = typing.get_type_hints(config)
                for field in dataclasses.fields(config):
                    if field.name in self.not_flags.get(config, ()):
                        continue
                    name = alias_names.get((config, field.name), field.name)
                    group = placed.get(name, title)
                    alias = self.aliases.get(name)
                    result.append(
                        ConfigFlag(name, group, config, field, annotations[field.name], alias)
                    )
        return result

    def define(self, flag_values: flags.FlagValues) -> None:
        """Define every generated flag in ``flag_values``."""
        for flag in self.flags():
            flag.define(flag_values, self.module_name(flag.group))

    def build(self, config: type[ConfigT], values: Mapping[str, object]) -> ConfigT:
        """``config`` from parsed flag ``values``; fields without a flag keep their defaults."""
        return config(
            **{
                flag.field.name: flag.field_value(values[flag.name])
                for flag in self.flags()
                if flag.config is config
            }
        )

    def values_of(self, configs: Iterable[object]) -> dict[str, object]:
        """The value of every generated flag that gives ``configs`` (one instance of each
        dataclass of the schema): the inverse of :meth:`build`, for the fields that have a
        flag."""
        by_type = {type(config): config for config in configs}
        return {
            flag.name: flag.flag_value(getattr(by_type[flag.config], flag.field.name))
            for flag in self.flags()
        }

    def grouped_help(self, flag_values: flags.FlagValues) -> str:
        """The flags of every group, in order, rendered as absl renders a module's flags."""
        return "\n".join(
            flag_values.module_help(self.module_name(title)) for title, _ in self.groups
        )


class HelpFlag(flags.BooleanFlag):
    """A help flag that prints ``text()`` on stdout and exits with 0: the user asked for it, it
    is not an error (absl's own help flags exit with 1)."""

    def __init__(
        self, name: str, short_name: str | None, help_text: str, text: Callable[[], str]
    ) -> None:
        super().__init__(
            name,
            False,
            help_text,
            short_name=short_name,
            allow_override=True,
            allow_hide_cpp=True,
        )
        self._text = text

    def parse(self, argument: object) -> None:
        super().parse(argument)
        if self.value:
            print(self._text())
            sys.exit(0)


def install_grouped_help(doc: str, schema: FlagSchema) -> None:
    """Give the global flags the binary's help: ``doc`` (the binary's docstring), then
    ``--help`` (also ``-?``) and ``--helpshort`` (also ``-h``) list the flags of ``schema``'s
    groups, group by group, and ``--helpfull`` every flag (absl's included); all exit with 0.

    absl's help flags are defined first (``app.define_help_flags`` is idempotent, so ``app.run``
    does not define them again); the replacements override them and stay filed under
    ``absl.app``. absl's own ``--help`` would list the flags of the module that is ``__main__``:
    none for a console script.
    """
    app.define_help_flags()
    values = flags.FLAGS
    short = functools.partial(_grouped_usage, doc, schema, values)
    full = functools.partial(_full_usage, doc, values)
    for name, short_name, help_text, text in (
        ("help", "?", "show this help", short),
        ("helpshort", "h", "show this help", short),
        ("helpfull", None, "show full help", full),
    ):
        flags.DEFINE_flag(HelpFlag(name, short_name, help_text, text), module_name="absl.app")


def _grouped_usage(doc: str, schema: FlagSchema, flag_values: flags.FlagValues) -> str:
    return (
        f"{doc}\nflags:\n{schema.grouped_help(flag_values)}\n\n"
        "Try --helpfull to get a list of all flags."
    )


def _full_usage(doc: str, flag_values: flags.FlagValues) -> str:
    return f"{doc}\nflags:\n{flag_values.get_help()}"
