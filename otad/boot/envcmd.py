"""`otad env print|set`: fw_printenv / fw_setenv semantics on top of ubootenv.

Follows Debian's tools (libubootenv 0.3.2) so scripts written for them keep working:
`print` lists `name=value` sorted, `-n NAME` prints the bare value, a missing name prints
`name=` with status 0. `set` takes `NAME=VALUE` arguments or a script (`-s`) and applies all
of them in ONE atomic write; `NAME=` deletes. Unlike libubootenv, a missing name with `-n`
is an error (a bare empty line is indistinguishable from an empty value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from otad.boot.ubootenv import UBootEnv, load_fw_env_config, parse_env_text, parse_set_script
from otad.errors import EnvError


@dataclass(frozen=True)
class PrintResult:
    lines: List[str]
    missing: List[str]


def open_env(fw_env_config: str, lock_file: str) -> UBootEnv:
    return UBootEnv(load_fw_env_config(fw_env_config), lock_path=lock_file)


def print_variables(env: UBootEnv, names: Sequence[str], *, value_only: bool = False) -> PrintResult:
    variables = env.read().variables
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


def parse_assignments(args: Sequence[str]) -> Dict[str, Optional[str]]:
    """`NAME=VALUE` arguments; `NAME=` (or a bare `NAME`) deletes."""
    changes: Dict[str, Optional[str]] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not name:
            raise EnvError(f"expected NAME=VALUE, got {arg!r}")
        changes[name] = value if sep and value else None
    return changes


def read_script(path: str) -> Dict[str, Optional[str]]:
    """`fw_setenv -s FILE` format, `-` for stdin."""
    import sys

    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvError(f"cannot read script: {exc}", path) from exc
    return parse_set_script(text, source=path)


def read_default_env(path: str) -> Mapping[str, str]:
    """A `u-boot-initial-env` style file (`name=value` lines) for an env with no valid copy."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_env_text(f.read(), source=path)
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvError(f"cannot read default environment: {exc}", path) from exc


def set_variables(env: UBootEnv, changes: Mapping[str, Optional[str]],
                  default_env: Optional[Mapping[str, str]] = None) -> None:
    if not changes:
        raise EnvError("nothing to set: give NAME=VALUE arguments or -s SCRIPT")
    env.update(changes, allow_default=default_env)
