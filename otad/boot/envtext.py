"""The U-Boot env as text: fw_printenv's name=value lines and fw_setenv -s scripts.

Owns parsing and printing those line forms (u-boot-initial-env, fw_printenv output, libubootenv
0.3.2's script format). Which names and values may be stored is envimage's; the env on disk,
ubootenv's.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

from otad.boot.envimage import check_change, encode, name_problem
from otad.errors import EnvError

__all__ = [
    "SCRIPT_LINE_MAX",
    "format_env_text",
    "parse_env_text",
    "parse_set_script",
]


# libubootenv reads a script with fgets() into a 1024-byte buffer: a longer line is cut there
# and its rest parsed as a line of its own.
SCRIPT_LINE_MAX = 1023


def parse_set_script(text: str, *, source: str) -> Dict[str, Optional[str]]:
    """Parse a `fw_setenv -s` script as Debian's fw_setenv (libubootenv 0.3.2) reads it.

    One ``name=value`` a line: the name ends at the first '=', the value is the rest as written
    (blanks and quotes included), an empty value deletes, a later line for the same name wins;
    '#' at column 0 comments, empty lines are skipped, trailing CR/LF are dropped. Where
    libubootenv would silently skip a line (no '=', e.g. U-Boot tools/env's ``name value``) or
    cut it (longer than 1023 bytes), this raises EnvError naming ``source:line`` instead, as it
    does for names and values otad does not store.
    """
    changes: Dict[str, Optional[str]] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        size = len(encode(line, "line"))
        if size > SCRIPT_LINE_MAX:
            raise EnvError(f"line of {size} bytes: fw_setenv -s reads at most {SCRIPT_LINE_MAX} a line "
                           "and would cut this one", where=where)
        name, sep, value = line.partition("=")
        if not sep:
            raise EnvError(f"expected 'name=value' (fw_setenv -s skips a line without '='), got {line!r}",
                           where=where)
        try:
            changes[name] = check_change(name, value)
        except EnvError as exc:
            raise EnvError(exc.what, where=where) from None
    return changes


def parse_env_text(text: str, *, source: str) -> Dict[str, str]:
    """Parse ``name=value`` lines (u-boot-initial-env, fw_printenv output) into variables.

    '#' at column 0 comments and empty lines are skipped; a line without '=' or with a name that
    cannot be stored raises EnvError naming ``source:line``. Values are kept as written.
    """
    variables: Dict[str, str] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        name, sep, value = line.partition("=")
        problem = "expected 'name=value'" if not sep else name_problem(name)
        if problem is None and "\0" in value:
            problem = "value contains a NUL byte"
        if problem:
            raise EnvError(f"{problem}, got {line!r}", where=where)
        variables[name] = value
    return variables


def format_env_text(variables: Mapping[str, str]) -> str:
    """``name=value`` lines sorted by name, as fw_printenv prints them."""
    names = sorted(variables, key=lambda n: n.encode("utf-8", "surrogateescape"))
    return "".join(f"{name}={variables[name]}\n" for name in names)
