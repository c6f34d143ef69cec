"""`otad env print|set`: Debian's fw_printenv / fw_setenv (libubootenv 0.3.2) on top of ubootenv.

Scripts written for the fw_printenv/fw_setenv that Debian and Raspberry Pi OS ship keep working
(U-Boot's own tools/env, which joins the words after NAME into one value, is not followed):

- `print` lists `name=value` sorted, without `.flags`; `-n NAME` prints the bare value; a missing
  name prints `name=` with status 0. Unlike libubootenv, a missing name with `-n` is an error (a
  bare empty line is indistinguishable from an empty value).
- `set NAME VALUE [NAME VALUE ...]` sets each pair, a trailing NAME without a VALUE deletes it,
  `NAME ""` keeps it with an empty value. otad's own form `NAME=VALUE ...` (`NAME=` deletes) is
  taken only when every argument contains '='; a mix of the two is a usage error. `-s SCRIPT`
  reads fw_setenv's script format (`envtext.parse_set_script`). Everything lands in ONE write.
- Where fw_setenv refuses (a NAME with '=') or silently keeps a variable (the `.flags`
  attributes it enforces), otad refuses with one line and writes nothing. otad also refuses
  what it cannot store safely (see `envimage`) and input that fw_setenv would quietly drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from otad.boot.envtext import parse_env_text, parse_set_script
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.ubootenv import UBootEnv
from otad.boot.envimage import MAX_ENV_SIZE
from otad.errors import EnvCorrupt, EnvError, UsageError
from otad.smallfile import read_text

# U-Boot's variable attributes; libubootenv hides the variable and enforces some of them.
FLAGS = ".flags"


@dataclass(frozen=True)
class PrintResult:
    lines: List[str]
    missing: List[str]


def open_env(fw_env_config: str, lock_file: str) -> UBootEnv:
    return UBootEnv(load_fw_env_config(fw_env_config), lock_path=lock_file)


def print_variables(env: UBootEnv, names: Sequence[str], *, value_only: bool = False) -> PrintResult:
    variables = {k: v for k, v in env.read().variables.items() if k != FLAGS}
    if value_only and len(names) != 1:
        raise EnvError("-n needs exactly one variable name")
    if not names:
        return PrintResult([f"{k}={v}" for k, v in sorted(variables.items())], [])
    missing = [n for n in names if n not in variables]
    if value_only:
        if missing:
            raise EnvError(f"variable {names[0]!r} is not defined")
        return PrintResult([variables[names[0]]], [])
    return PrintResult([f"{n}={variables.get(n, '')}" for n in names], missing)


def requested_changes(args: Sequence[str], script: Optional[str]) -> Dict[str, Optional[str]]:
    """The changes `otad env set [-s SCRIPT] ARGS...` asks for."""
    if script and args:
        raise UsageError("-s SCRIPT and NAME VALUE arguments together: fw_setenv would ignore the arguments; "
                         "give one or the other")
    return read_script(script) if script else parse_arguments(args)


def parse_arguments(args: Sequence[str]) -> Dict[str, Optional[str]]:
    """fw_setenv's `NAME VALUE ...` (a trailing NAME deletes), or otad's `NAME=VALUE ...` when
    every argument has an '=' (`NAME=` deletes). None means delete; a later NAME wins."""
    if args and all("=" in arg for arg in args):
        return {name: value or None for name, _, value in (arg.partition("=") for arg in args)}
    changes: Dict[str, Optional[str]] = {}
    for i in range(0, len(args), 2):
        name = args[i]
        if "=" in name:
            raise UsageError(
                f"{name!r} where a NAME belongs: give NAME VALUE pairs (as fw_setenv) or NAME=VALUE "
                "for every argument, not a mix")
        changes[name] = args[i + 1] if i + 1 < len(args) else None
    return changes


def read_script(path: str) -> Dict[str, Optional[str]]:
    """`fw_setenv -s FILE` format, `-` for stdin; bytes that are not UTF-8 are kept as they are."""
    import sys

    if path == "-":
        text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    else:
        text = read_text(path, "the script", limit=MAX_ENV_SIZE, error=EnvError, errors="surrogateescape")
    return parse_set_script(text, source=path)


def read_default_env(path: str) -> Mapping[str, str]:
    """A `u-boot-initial-env` style file (`name=value` lines) for an env with no valid copy."""
    return parse_env_text(read_text(path, "the default environment", limit=MAX_ENV_SIZE, error=EnvError),
                          source=path)


def set_variables(env: UBootEnv, changes: Mapping[str, Optional[str]],
                  default_env: Optional[Mapping[str, str]] = None) -> None:
    """Apply `changes` (None deletes, "" is an empty value) in one write, or refuse them all."""
    if not changes:
        raise UsageError("nothing to set: give NAME VALUE pairs, NAME=VALUE arguments or -s SCRIPT")
    if FLAGS in changes:
        raise EnvError(f"{FLAGS} holds U-Boot's variable attributes; fw_setenv hides it and does not "
                       "change it reliably, and neither does otad")
    try:
        current = dict(env.read().variables)
    except EnvCorrupt:
        if default_env is None:
            raise
        current = {}  # libubootenv keeps no attributes from a default env
    _check_attributes(current, changes)
    env.update(changes, allow_default=default_env, keep_empty=True)


# --- .flags as libubootenv 0.3.2 enforces it -----------------------------------------------------


def _check_attributes(current: Mapping[str, str], changes: Mapping[str, Optional[str]]) -> None:
    """Refuse what Debian's fw_setenv silently leaves unchanged because of `.flags`.

    libubootenv 0.3.2 reads only the first `name:attributes` entry of `.flags` (it measures the
    list after cutting it), and only for an existing variable. Then it keeps that variable when
    the access is `r` (read-only) or `o` (write-once), and keeps its value (deleting still works)
    when the type is `d` or `x`: its number check fails for every value. fw_setenv exits 0 either
    way; otad says so instead.
    """
    entry = _first_flags_entry(current.get(FLAGS, ""))
    if entry is None or entry[0] not in current:
        return
    name, attributes = entry
    if name not in changes or changes[name] == current[name]:
        return
    value = changes[name]
    access = _last_of(attributes, "aroc")
    kind = _last_of(attributes, "sdxbim")
    if access in ("r", "o"):
        what = "read-only" if access == "r" else "write-once"
        raise EnvError(f"variable {name!r} is {what} in {FLAGS} ({name}:{attributes}); fw_setenv would "
                       "leave it unchanged")
    if kind in ("d", "x") and value is not None:
        what = "decimal" if kind == "d" else "hex"
        raise EnvError(f"variable {name!r} is typed {what} in {FLAGS} ({name}:{attributes}); Debian's "
                       "fw_setenv (libubootenv 0.3.2) refuses every new value for such a variable, only "
                       "deleting it works")


def _first_flags_entry(flags: str) -> Optional[Tuple[str, str]]:
    name, sep, rest = flags.partition(":")
    return (name, rest.split(",", 1)[0]) if sep and name else None


def _last_of(attributes: str, letters: str) -> Optional[str]:
    found = [c for c in attributes if c in letters]
    return found[-1] if found else None
