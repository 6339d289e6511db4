"""Flagfiles that work from any directory: ``--flagfile`` expanded before absl parses.

absl resolves a relative ``--flagfile=`` inside a flagfile against the working directory, so a
recipe that includes ``common.flags`` only works from one place. Here a relative path inside a
flagfile is resolved against that flagfile's own directory first, and against the working
directory second (where absl would look); on the command line it is the working directory's, as
usual. The syntax is absl's: one flag per line, surrounding whitespace stripped, blank lines and
lines starting with ``#`` or ``//`` ignored.

The expansion remembers where each argument came from: the command line itself, or the flagfile
that holds it (:meth:`ExpandedArgv.flag_origins`). ``tf-simclr`` lets a recipe's flags, those of
any flagfile, yield to the architecture it starts from, holds the user to the flags they typed
(:meth:`ExpandedArgv.typed_flags`), and ``--print_config`` names the flagfile of each value.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


# The origin of an argument typed on the command line itself; any other origin is the absolute
# path of the flagfile that holds the argument (the innermost one, for an included flagfile).
COMMAND_LINE = ""


@dataclasses.dataclass(frozen=True)
class ExpandedArgv:
    """A command line with its flagfiles inlined: ``argv``, what absl parses, and for each of
    its arguments its origin: :data:`COMMAND_LINE` when it was typed on the command line
    itself, else the flagfile it was read from (a recipe's or the user's own, included or not)."""

    argv: tuple[str, ...]
    origins: tuple[str, ...]

    def flag_origins(self, flag_values: flags.FlagValues) -> dict[str, str]:
        """The origin of every flag of ``flag_values`` that the command line sets, by flag name:
        that of its last occurrence, the one whose value absl keeps. Names are read as absl
        reads them (``--name=value``, ``--name value``, ``--noname``, one or two dashes, a short
        name); nothing after ``--`` is a flag."""
        last: dict[str, str] = {}
        skip_value = False
        for arg, origin in zip(self.argv[1:], self.origins[1:], strict=True):
            if skip_value:  # the value of "--name value"
                skip_value = False
                continue
            if arg == "--":
                break
            flag = _named_flag(arg, flag_values)
            if flag is not None:
                last[flag.name] = origin
                skip_value = "=" not in arg and not flag.boolean
        return last

    def typed_flags(self, flag_values: flags.FlagValues) -> frozenset[str]:
        """The names of the flags of ``flag_values`` whose value was typed: the last occurrence
        of the flag is outside every flagfile (:meth:`flag_origins`)."""
        origins = self.flag_origins(flag_values)
        return frozenset(name for name, origin in origins.items() if origin == COMMAND_LINE)


def _named_flag(arg: str, flag_values: flags.FlagValues) -> flags.Flag | None:
    """The flag of ``flag_values`` that ``arg`` sets, or None (not a flag, or unknown)."""
    if not arg.startswith("-"):
        return None
    name = (arg[2:] if arg.startswith("--") else arg[1:]).split("=", 1)[0]
    if name in flag_values:
        return flag_values[name]
    if name.startswith("no") and name[2:] in flag_values and flag_values[name[2:]].boolean:
        return flag_values[name[2:]]
    return None


def expand_argv(argv: list[str], directory: str = "") -> ExpandedArgv:
    """``argv`` with every ``--flagfile=PATH`` replaced by the flags it holds, recursively, so
    that absl sees no flagfile, each argument with its origin (the command line, or the
    flagfile that holds it); a relative PATH in ``argv`` is resolved against ``directory``
    (default: the working directory). Raises ``FileNotFoundError`` naming the file (and the
    flagfile that includes it) when one is missing, ``ValueError`` when flagfiles include each
    other."""
    expanded: list[str] = []
    origins: list[str] = []
    for arg in argv:
        path = _flagfile_path(arg)
        if path is None:
            expanded.append(arg)
            origins.append(COMMAND_LINE)
        else:
            flagfile = os.path.abspath(os.path.join(directory, path))
            for flag, holder in _read_flagfile(flagfile, ()):
                expanded.append(flag)
                origins.append(holder)
    return ExpandedArgv(tuple(expanded), tuple(origins))


def expand_flagfiles(argv: list[str], directory: str = "") -> list[str]:
    """The arguments of :func:`expand_argv`: ``argv`` with its flagfiles inlined."""
    return list(expand_argv(argv, directory).argv)


def _flagfile_path(arg: str) -> str | None:
    for prefix in FLAGFILE_PREFIXES:
        if arg.startswith(prefix):
            return arg[len(prefix) :]
    return None


def _read_flagfile(path: str, including: tuple[str, ...]) -> list[tuple[str, str]]:
    """The flags of the flagfile ``path`` (included by the chain ``including``), each with the
    flagfile that holds it, its includes expanded."""
    if path in including:
        chain = " -> ".join((*including, path))
        raise ValueError(f"flagfiles include each other: {chain}")
    if not os.path.isfile(path):
        where = f" (included by {including[-1]})" if including else ""
        raise FileNotFoundError(f"no flagfile {path}{where}")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    flags: list[tuple[str, str]] = []
    for line in lines:
        if not line or line.startswith(("#", "//")):
            continue
        nested = _flagfile_path(line)
        if nested is None:
            flags.append((line, path))
        else:
            flags.extend(_read_flagfile(_resolve(nested, path), (*including, path)))
    return flags


def _resolve(nested: str, including_file: str) -> str:
    """A flagfile named inside ``including_file``: beside it if it is there, else as given."""
    if os.path.isabs(nested):
        return nested
    beside = os.path.join(os.path.dirname(including_file), nested)
    return os.path.abspath(beside if os.path.exists(beside) else nested)
