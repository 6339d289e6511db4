"""Flagfiles that work from any directory: ``--flagfile`` expanded before absl parses.

absl resolves a relative ``--flagfile=`` inside a flagfile against the working directory, so a
recipe that includes ``common.flags`` only works from one place. Here a relative path inside a
flagfile is resolved against that flagfile's own directory first, and against the working
directory second (where absl would look); on the command line it is the working directory's, as
usual. The syntax is absl's: one flag per line, surrounding whitespace stripped, blank lines and
lines starting with ``#`` or ``//`` ignored.
"""

from __future__ import annotations

import os

FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


def expand_flagfiles(argv: list[str], directory: str = "") -> list[str]:
    """``argv`` with every ``--flagfile=PATH`` replaced by the flags it holds, recursively, so
    that absl sees no flagfile; a relative PATH in ``argv`` is resolved against ``directory``
    (default: the working directory). Raises ``FileNotFoundError`` naming the file (and the
    flagfile that includes it) when one is missing, ``ValueError`` when flagfiles include each
    other."""
    expanded: list[str] = []
    for arg in argv:
        path = _flagfile_path(arg)
        if path is None:
            expanded.append(arg)
        else:
            expanded.extend(_read_flagfile(os.path.abspath(os.path.join(directory, path)), ()))
    return expanded


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
