"""fw_env.config: where the U-Boot env's copies live (device, offset, size), read as fw_printenv does.

Owns the layout (one copy, or two of the same size) and parsing the file with the fw tools'
sscanf() semantics, stricter where they would misread a line. A copy's bytes are envimage's;
reading and writing the copies, ubootenv's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from otad.boot.envimage import MAX_ENV_SIZE, MIN_ENV_SIZE
from otad.errors import ConfigError
from otad.smallfile import read_text

DEFAULT_CONFIG_PATH = "/etc/fw_env.config"
_MAX_CONFIG_BYTES = 0x10000
_OFF_T_MAX = 2**63 - 1

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EnvCopyLocation",
    "EnvLayout",
    "load_fw_env_config",
    "parse_fw_env_config",
]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class EnvCopyLocation:
    """One copy of the env: `size` bytes at `offset` of `device` (negative: from a block device's end)."""

    device: str
    offset: int
    size: int
    sector_size: Optional[int] = None
    sector_count: Optional[int] = None

    def describe(self) -> str:
        return self.device if self.offset == 0 else f"{self.device}@{self.offset:#x}"


@dataclass(frozen=True)
class EnvLayout:
    """Where the env lives: one copy (single) or two copies of the same size (redundant)."""

    copies: Tuple[EnvCopyLocation, ...]

    def __post_init__(self) -> None:
        problem = _layout_problem(self.copies)
        if problem:
            raise ConfigError(problem, where="env layout")

    @property
    def redundant(self) -> bool:
        return len(self.copies) == 2

    @property
    def size(self) -> int:
        return self.copies[0].size

    def describe(self) -> str:
        return " + ".join(c.describe() for c in self.copies)


def _layout_problem(copies: Sequence[EnvCopyLocation]) -> Optional[str]:
    if len(copies) not in (1, 2):
        return f"expected 1 or 2 env copies, got {len(copies)}"
    for copy in copies:
        problem = _size_problem(copy.size) or _offset_problem(copy.offset, copy.size)
        if problem:
            return f"{copy.describe()}: {problem}"
    if len(copies) == 2 and copies[0].size != copies[1].size:
        return f"copies differ in size: {copies[0].size:#x} and {copies[1].size:#x}"
    return None


def _size_problem(size: int) -> Optional[str]:
    if size < MIN_ENV_SIZE or size > MAX_ENV_SIZE:
        return f"env size: expected {MIN_ENV_SIZE:#x}..{MAX_ENV_SIZE:#x}, got {size:#x}"
    return None


def _offset_problem(offset: int, size: int) -> Optional[str]:
    if not -_OFF_T_MAX - 1 <= offset or offset + size > _OFF_T_MAX:
        return f"offset: {offset:#x} plus size {size:#x} is out of range"
    return None


# ------------------------------------------------------------------- fw_env.config

# sscanf's %s and the blanks between conversions: C isspace() in the "C" locale.
_C_SPACE = " \t\n\v\f\r"
_C_SPACES = re.compile(r"[ \t\n\v\f\r]+")
# %lli: strtoll base 0 (0x hex, leading 0 octal, else decimal), optional sign.
_OFFSET = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
# %lx: strtoul base 16, "0x" optional. A '-' would wrap around in C; refuse it instead.
_HEX = re.compile(r"\+?(?:0[xX])?([0-9a-fA-F]+)")


def parse_fw_env_config(text: str, *, source: str) -> EnvLayout:
    """Parse fw_env.config text as fw_printenv does: ``device offset size [sector-size [count]]``.

    '#' at column 0 starts a comment, lines with fewer than 3 fields are skipped, and after two
    device lines the rest is not read. Stricter than the tools' sscanf(): a field that is not
    wholly a number raises ConfigError instead of being cut short or skipping the line.
    """
    copies: List[EnvCopyLocation] = []
    first_line = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("\0", 1)[0]  # C string: a NUL ends the line
        if line.startswith("#"):
            continue
        tokens = [t for t in _C_SPACES.split(line.strip(_C_SPACE)) if t]
        if len(tokens) < 3:
            continue
        where = f"{source}:{lineno}"
        copy = _parse_config_line(tokens, where)
        if copies:
            _check_second_copy(copies[0], copy, first_line, where)
        else:
            first_line = lineno
        copies.append(copy)
        if len(copies) == 2:
            break
    if not copies:
        raise ConfigError(
            "no environment line: expected 'device offset env-size [sector-size [sector-count]]'",
            where=source,
        )
    return EnvLayout(tuple(copies))


def _parse_config_line(tokens: List[str], where: str) -> EnvCopyLocation:
    device = tokens[0]
    if device.startswith("#"):
        raise ConfigError(
            f"device {device!r}: '#' starts a comment only at column 0; "
            "fw_printenv would read this as a device name",
            where=where,
        )
    offset = _parse_offset(tokens[1], where)
    size = _parse_hex(tokens[2], "env size", where)
    problem = _size_problem(size) or _offset_problem(offset, size)
    if problem:
        raise ConfigError(problem, where=where)
    extra: List[int] = []
    for field, token in zip(("sector size", "sector count"), tokens[3:5]):
        if token.startswith("#"):  # a trailing comment; sscanf stops there too
            break
        extra.append(_parse_hex(token, field, where))
    sector_size = extra[0] if extra else None
    sector_count = extra[1] if len(extra) > 1 else None
    return EnvCopyLocation(device, offset, size, sector_size, sector_count)


def _check_second_copy(first: EnvCopyLocation, second: EnvCopyLocation, first_line: int, where: str) -> None:
    if second.size != first.size:
        raise ConfigError(
            f"env size {second.size:#x} differs from {first.size:#x} on line {first_line}; "
            "both copies of a redundant env must have the same size",
            where=where,
        )
    same_side = (first.offset < 0) == (second.offset < 0)
    if second.device == first.device and same_side and abs(second.offset - first.offset) < first.size:
        raise ConfigError(
            f"offset {second.offset:#x} overlaps the first copy at {first.offset:#x} "
            f"(size {first.size:#x}) on the same device {second.device!r}",
            where=where,
        )


def _parse_offset(token: str, where: str) -> int:
    match = _OFFSET.fullmatch(token)
    if match is None:
        raise ConfigError(
            f"offset: expected a decimal, 0x-hex or 0-octal number, got {token!r}", where=where
        )
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits, 10)
    return -value if sign == "-" else value


def _parse_hex(token: str, field: str, where: str) -> int:
    match = _HEX.fullmatch(token)
    if match is None:
        raise ConfigError(
            f"{field}: expected a hex number (always hex, '0x' optional), got {token!r}", where=where
        )
    return int(match.group(1), 16)


def load_fw_env_config(path: str = DEFAULT_CONFIG_PATH) -> EnvLayout:
    """Read and parse the fw_env.config at `path`; any failure is a ConfigError naming it."""
    text = read_text(path, "fw_env.config", limit=_MAX_CONFIG_BYTES, error=ConfigError, errors="surrogateescape")
    return parse_fw_env_config(text, source=path)

