"""Flagfiles that work from any directory: ``--flagfile`` expanded before absl parses.

absl resolves a relative ``--flagfile=`` inside a flagfile against the working directory, so a
recipe that includes ``common.flags`` only works from one place. Here a relative path inside a
flagfile is resolved against that flagfile's own directory first, and against the working
directory second (where absl would look); on the command line it is the working directory's, as
usual. The syntax is absl's: one flag per line, surrounding whitespace stripped, blank lines and
lines starting with ``#`` or ``//`` ignored.

The expansion remembers which arguments were typed on the command line itself
(:meth:`ExpandedArgv.typed_flags`): ``tf-simclr`` lets a recipe's flags, those of any flagfile,
yield to the architecture it starts from, and holds the user to the flags they typed.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


@dataclasses.dataclass(frozen=True)
class ExpandedArgv:
    """A command line with its flagfiles inlined: ``argv``, what absl parses, and for each of
    its arguments whether it was typed on the command line itself (``typed``) rather than read
    from a flagfile (a recipe's or the user's own, included or not)."""

    argv: tuple[str, ...]
    typed: tuple[bool, ...]

    def typed_flags(self, flag_values: flags.FlagValues) -> frozenset[str]:
        """The names of the flags of ``flag_values`` whose value was typed: the last occurrence
        of the flag, the one whose value absl keeps, is outside every flagfile. Names are read
        as absl reads them (``--name=value``, ``--name value``, ``--noname``, one or two dashes,
        a short name); nothing after ``--`` is a flag."""
        last: dict[str, bool] = {}
        skip_value = False
        for arg, typed in zip(self.argv[1:], self.typed[1:], strict=True):
            if skip_value:  # the value of "--name value"
                skip_value = False
                continue
            if arg == "--":
                break
            flag = _named_flag(arg, flag_values)
            if flag is not None:
                last[flag.name] = typed
                skip_value = "=" not in arg and not flag.boolean
        return frozenset(name for name, typed in last.items() if typed)


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
    that absl sees no flagfile, each argument marked typed (on the command line) or not (from a
    flagfile); a relative PATH in ``argv`` is resolved against ``directory`` (default: the
    working directory). Raises ``FileNotFoundError`` naming the file (and the flagfile that
    includes it) when one is missing, ``ValueError`` when flagfiles include each other."""
    expanded: list[str] = []
    typed: list[bool] = []
    for arg in argv:
        path = _flagfile_path(arg)
        if path is None:
            expanded.append(arg)
            typed.append(True)
        else:
            read = _read_flagfile(os.path.abspath(os.path.join(directory, path)), ())
            expanded.extend(read)
            typed.extend(False for _ in read)
    return ExpandedArgv(tuple(expanded), tuple(typed))


def expand_flagfiles(argv: list[str], directory: str = "") -> list[str]:
    """The arguments of :func:`expand_argv`: ``argv`` with its flagfiles inlined."""
    return list(expand_argv(argv, directory).argv)


def _flagfile_path(arg: str) -> str | None:
    for prefix in FLAGFILE_PREFIXES:
        if arg.startswith(prefix):
            return arg[len(prefix) :]
    return None


def _read_flagfile(path: str, including: tuple[str, ...]) -> list[str]:
    if path in including:
        chain = " -> ".join((*including, path))
        raise ValueError(f"flagfiles include each other: {chain}")
    if not os.path.isfile(path):
        where = f" (included by {including[-1]})" if including else ""
        raise FileNotFoundError(f"no flagfile {path}{where}")
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    flags: list[str] = []
    for line in lines:
        if not line or line.startswith(("#", "//")):
            continue
        nested = _flagfile_path(line)
        if nested is None:
            flags.append(line)
        else:
            flags.extend(_read_flagfile(_resolve(nested, path), (*including, path)))
    return flags


def _resolve(nested: str, including_file: str) -> str:
    """A flagfile named inside ``including_file``: beside it if it is there, else as given."""
    if os.path.isabs(nested):
        return nested
    beside = os.path.join(os.path.dirname(including_file), nested)
    return os.path.abspath(beside if os.path.exists(beside) else nested)
