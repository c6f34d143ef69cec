"""The U-Boot environment: fw_env.config layouts, env images and their copies on disk.

Owns parsing fw_env.config, building/parsing images (CRC, redundant flags, sorted name=value
list) and one locked, verified read-modify-write, compatible with U-Boot, mkenvimage and
libubootenv. What to set (slots, bootcount) is the slot logic's; argparse and output are cli.py's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from otad import crashpoint, durable
from otad.errors import ConfigError, EnvCorrupt, EnvError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/fw_env.config"
# libubootenv 0.3.2 flock()s this file (O_WRONLY|O_CREAT|O_TRUNC, LOCK_EX) around every read and
# write, as U-Boot's tools/env did before v2023.07 (/run/fw_printenv.lock since).
DEFAULT_LOCK_PATH = "/var/lock/fw_printenv.lock"
# Real envs are 8 KiB to 256 KiB; the cap keeps a typo'd size from allocating gigabytes.
MAX_ENV_SIZE = 0x1000000
# Room for CRC, flags byte and the empty list's terminator.
MIN_ENV_SIZE = 8
_MAX_CONFIG_BYTES = 0x10000
_CRC = struct.Struct("<I")
_CRC_BE = struct.Struct(">I")
_OFF_T_MAX = 2**63 - 1

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LOCK_PATH",
    "EnvCopyLocation",
    "EnvLayout",
    "EnvSnapshot",
    "UBootEnv",
    "build_image",
    "format_env_text",
    "load_fw_env_config",
    "parse_env_text",
    "parse_fw_env_config",
    "parse_image",
    "parse_set_script",
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
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", where=path) from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"expected a short fw_env.config, got more than {_MAX_CONFIG_BYTES} bytes", where=path)
    return parse_fw_env_config(raw.decode("utf-8", "surrogateescape"), source=path)


# --------------------------------------------------------------------------- image


def _header_size(redundant: bool) -> int:
    return 5 if redundant else 4


def _encode(text: str, what: str) -> bytes:
    # surrogateescape: bytes that are not UTF-8 were decoded to U+DC80..U+DCFF and go back as-is.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise EnvError(f"{what} {text!r}: expected text encodable as UTF-8") from exc


def _name_problem(name: str) -> Optional[str]:
    """What makes `name` impossible to store at all (the image format itself)."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty name, got {name!r}"
    if "=" in name:
        return "contains '=' (the name ends at the first '=')"
    if "\0" in name:
        return "contains a NUL byte (it ends the entry)"
    return None


def _encode_entries(variables: Mapping[str, str]) -> bytes:
    items: List[Tuple[bytes, bytes]] = []
    for name, value in variables.items():
        problem = _name_problem(name)
        if problem:
            raise EnvError(f"variable name {name!r}: {problem}")
        if not isinstance(value, str) or "\0" in value:
            raise EnvError(f"variable {name!r}: expected text without NUL bytes, got {value!r}")
        items.append((_encode(name, "variable name"), _encode(value, f"variable {name!r}: value")))
    items.sort()  # strcmp() order on the bytes, as U-Boot's saveenv and libubootenv write it
    return b"".join(k + b"=" + v + b"\0" for k, v in items) + b"\0"


def build_image(
    variables: Mapping[str, str],
    size: int,
    *,
    redundant: bool = False,
    flags: int = 1,
    pad: int = 0x00,
) -> bytes:
    """One env copy of `size` bytes, sorted by name; = `mkenvimage -s SIZE [-r] -p PAD` of sorted lines.

    Raises EnvError if the variables do not fit, before anything can be written.
    """
    for what, value in (("flags", flags), ("pad", pad)):
        if not 0 <= value <= 0xFF:
            raise EnvError(f"{what}: expected a byte 0..255, got {value!r}")
    if not MIN_ENV_SIZE <= size <= MAX_ENV_SIZE:
        raise EnvError(f"env size: expected {MIN_ENV_SIZE:#x}..{MAX_ENV_SIZE:#x}, got {size:#x}")
    body = _encode_entries(variables)
    room = size - _header_size(redundant)
    if len(body) > room:
        raise EnvError(
            f"environment too large: {len(variables)} variables need {len(body)} bytes, "
            f"a copy of size {size:#x} holds {room}"
        )
    data = body + bytes([pad]) * (room - len(body))
    crc = _CRC.pack(zlib.crc32(data))
    return crc + bytes([flags]) + data if redundant else crc + data


@dataclass(frozen=True)
class _Decoded:
    variables: Dict[str, str]
    flags: Optional[int]


def _decode_copy(blob: bytes, size: int, redundant: bool) -> Union[_Decoded, str]:
    """The variables and flags of one copy, or a sentence saying why it is not valid."""
    header = _header_size(redundant)
    if size <= header:
        return f"size {size:#x} leaves no room for data"
    if len(blob) < size:
        return f"short: {len(blob)} of {size:#x} bytes"
    blob = blob[:size]
    data = blob[header:]
    (stored,) = _CRC.unpack_from(blob)
    actual = zlib.crc32(data)
    if stored != actual:
        return _crc_problem(blob, stored, actual)
    return _Decoded(_decode_entries(data), blob[4] if redundant else None)


def _crc_problem(blob: bytes, stored: int, actual: int) -> str:
    if not blob.strip(b"\xff"):
        return "erased (all 0xff), bad CRC"
    if not blob.strip(b"\0"):
        return "all zeros, bad CRC"
    if _CRC_BE.unpack_from(blob)[0] == actual:
        return f"CRC {stored:#010x} is big-endian (mkenvimage -b?), expected little-endian {actual:#010x}"
    return f"bad CRC: stored {stored:#010x}, computed {actual:#010x}"


def _decode_entries(data: bytes) -> Dict[str, str]:
    """``name=value\\0`` entries up to the empty one; the data area's end also ends the list.

    The view of fw_printenv: entries without '=' (U-Boot drops them) and with an empty name
    are skipped, the last duplicate wins, bytes are kept as they are (no unescaping).
    """
    end = 0 if data.startswith(b"\0") else data.find(b"\0\0")
    body = data if end < 0 else data[:end]
    env: Dict[str, str] = {}
    for entry in body.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env


def parse_image(blob: bytes, size: int, *, redundant: bool) -> Optional[Dict[str, str]]:
    """The variables of one env copy, or None if it is short or its CRC is bad."""
    decoded = _decode_copy(blob, size, redundant)
    return decoded.variables if isinstance(decoded, _Decoded) else None


# ----------------------------------------------------------------------- text forms


def _new_name_problem(name: str) -> Optional[str]:
    """Why otad refuses to create `name`: unstorable, or mangled by U-Boot's env import."""
    problem = _name_problem(name)
    if problem:
        return problem
    if name.startswith("#"):
        return "starts with '#' (U-Boot's env import skips the entry as a comment)"
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in name):
        return "contains blanks or control characters (expected a plain name such as 'rootpart')"
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "is not encodable as UTF-8"
    return None


def _new_value_problem(value: str) -> Optional[str]:
    """Why otad refuses to store `value` (a non-empty string)."""
    if "\0" in value:
        return "value contains a NUL byte (it ends the entry)"
    if "\\" in value:
        return "value contains a backslash (U-Boot's env import removes one level: 'a\\b' becomes 'ab')"
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "value is not encodable as UTF-8"
    return None


def _check_change(name: str, value: Optional[str], *, keep_empty: bool = False) -> Optional[str]:
    """The normalised value (None deletes; so does "" unless `keep_empty`), or raise EnvError
    naming the variable."""
    problem = _new_name_problem(name)
    if problem:
        raise EnvError(f"variable name {name!r}: {problem}")
    if value is None or (value == "" and not keep_empty):
        return None
    if not isinstance(value, str):
        raise EnvError(f"variable {name!r}: expected a text value, got {value!r}")
    problem = _new_value_problem(value)
    if problem:
        raise EnvError(f"variable {name!r}: {problem}, got {value!r}")
    return value


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
        size = len(_encode(line, "line"))
        if size > SCRIPT_LINE_MAX:
            raise EnvError(f"line of {size} bytes: fw_setenv -s reads at most {SCRIPT_LINE_MAX} a line "
                           "and would cut this one", where=where)
        name, sep, value = line.partition("=")
        if not sep:
            raise EnvError(f"expected 'name=value' (fw_setenv -s skips a line without '='), got {line!r}",
                           where=where)
        try:
            changes[name] = _check_change(name, value)
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
        problem = "expected 'name=value'" if not sep else _name_problem(name)
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


# ---------------------------------------------------------------------- the device


@dataclass(frozen=True)
class EnvSnapshot:
    """The env as read: the active copy's variables, its index and flags, and which copies are valid."""

    variables: Mapping[str, str]
    active_copy: int
    flags: Optional[int]
    valid_copies: Tuple[int, ...]


@dataclass(frozen=True)
class _CopyState:
    variables: Optional[Dict[str, str]]  # None: not a valid copy
    flags: Optional[int]
    problem: str


def _newer_copy(flags0: int, flags1: int) -> int:
    """Incremental flags (files, block devices): the larger wins, 0 beats 255 (wrap), a tie is copy 0."""
    if flags0 == 0xFF and flags1 == 0:
        return 1
    if flags1 == 0xFF and flags0 == 0:
        return 0
    return 1 if flags1 > flags0 else 0


def _select(layout: EnvLayout, states: Sequence[_CopyState]) -> EnvSnapshot:
    valid = tuple(i for i, s in enumerate(states) if s.variables is not None)
    if not valid:
        raise EnvCorrupt(_corrupt_message(layout, states), where=layout.describe())
    if len(valid) == 1:
        active = valid[0]
    else:
        f0, f1 = states[0].flags, states[1].flags
        assert f0 is not None and f1 is not None  # both valid redundant copies carry flags
        active = _newer_copy(f0, f1)
    chosen = states[active]
    assert chosen.variables is not None
    return EnvSnapshot(MappingProxyType(dict(chosen.variables)), active, chosen.flags, valid)


def _corrupt_message(layout: EnvLayout, states: Sequence[_CopyState]) -> str:
    if not layout.redundant:
        reasons = states[0].problem
    else:
        reasons = "; ".join(
            f"copy {i} ({loc.describe()}): {s.problem}" for i, (loc, s) in enumerate(zip(layout.copies, states))
        )
    return f"no valid U-Boot environment: {reasons}; U-Boot would boot its built-in default env"


def _env_os_error(action: str, loc: EnvCopyLocation, exc: OSError) -> EnvError:
    return EnvError(f"cannot {action}: {exc.strerror or exc}", where=loc.describe())


def _resolve_offset(fd: int, loc: EnvCopyLocation) -> int:
    """The absolute offset of `loc` in the open `fd`; refuses what would hang or corrupt."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISCHR(mode):
        raise EnvError(
            "character device (MTD/UBI?): expected a regular file or a block device", where=loc.device
        )
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise EnvError("expected a regular file or a block device", where=loc.device)
    if loc.offset >= 0:
        return loc.offset
    if not stat.S_ISBLK(mode):
        raise EnvError(
            f"offset {loc.offset:#x}: a negative offset counts from the end of a block device, "
            "but this is a regular file",
            where=loc.device,
        )
    start = os.lseek(fd, 0, os.SEEK_END) + loc.offset
    if start < 0:
        raise EnvError(f"offset {loc.offset:#x} is before the start of the device", where=loc.device)
    return start


def _pread_full(fd: int, size: int, start: int) -> bytes:
    chunks: List[bytes] = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, start + got)
        if not chunk:  # end of file: a short copy, never a wait
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _pwrite_full(fd: int, data: bytes, start: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], start + done)
        if written <= 0:
            raise OSError(0, f"device took no more bytes after {done} of {len(data)}")
        done += written


def _read_copy(loc: EnvCopyLocation, redundant: bool) -> _CopyState:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; _resolve_offset refuses it.
        fd = os.open(loc.device, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _CopyState(None, None, "missing: no such file")
    except OSError as exc:
        raise _env_os_error("open for reading", loc, exc) from exc
    try:
        start = _resolve_offset(fd, loc)
        with contextlib.suppress(OSError, AttributeError):
            # Drop clean cached pages so a read-back after fsync sees the medium.
            os.posix_fadvise(fd, start, loc.size, os.POSIX_FADV_DONTNEED)
        blob = _pread_full(fd, loc.size, start)
    except OSError as exc:
        raise _env_os_error("read", loc, exc) from exc
    finally:
        os.close(fd)
    decoded = _decode_copy(blob, loc.size, redundant)
    if isinstance(decoded, str):
        return _CopyState(None, None, decoded)
    return _CopyState(decoded.variables, decoded.flags, "")


class UBootEnv:
    """A U-Boot env as laid out by fw_env.config: read it, or change it with one verified write.

    Every access holds flock() on `lock_path`, the lock fw_printenv/fw_setenv take, so otad
    and the fw tools never interleave a read-modify-write.
    """

    def __init__(self, layout: EnvLayout, *, lock_path: str = DEFAULT_LOCK_PATH) -> None:
        self.layout = layout
        self.lock_path = lock_path

    def read(self) -> EnvSnapshot:
        """The active copy's variables; EnvCorrupt (naming each copy's problem) if none is valid."""
        with self._locked(fcntl.LOCK_SH):
            return _select(self.layout, self._read_all())

    def update(
        self,
        changes: Mapping[str, Optional[str]],
        *,
        allow_default: Optional[Mapping[str, str]] = None,
        keep_empty: bool = False,
    ) -> EnvSnapshot:
        """Apply `changes` (None or "" deletes) in one atomic, verified write; return the new env.

        With `keep_empty`, "" is stored as an empty value (``name=``, as ``fw_setenv name ""``
        does) and only None deletes.

        Single copy: replace a file that holds only the env (temp + fsync + rename), else write
        in place. Redundant: write the inactive copy with flags + 1; the active one is never
        touched. With no valid copy, raise EnvCorrupt unless `allow_default` is given, which then
        is the base (like ``fw_setenv -f``). Nothing is written if nothing changes.
        """
        wanted = {name: _check_change(name, value, keep_empty=keep_empty) for name, value in changes.items()}
        with self._locked(fcntl.LOCK_EX):
            current = self._current(allow_default)
            base = dict(current.variables) if current else dict(allow_default or {})
            new = _apply(base, wanted)
            if current is not None and new == base:
                log.debug("env unchanged, nothing written")
                return current
            target, flags = self._target(current)
            image = build_image(new, self.layout.size, redundant=self.layout.redundant, flags=flags)
            crashpoint.reached("env.before_write")
            snapshot = self._write_verified(target, image, new, flags)
            crashpoint.reached("env.written")
        log.info("env: wrote copy %d (%s)", target, ", ".join(sorted(wanted)) or "default env")
        return snapshot

    def check_update(self, changes: Mapping[str, Optional[str]]) -> None:
        """Raise what `update(changes)` would raise before its write, writing nothing: a bad name
        or value, no valid copy (EnvCorrupt), a copy otad may not write, a result too big."""
        wanted = {name: _check_change(name, value) for name, value in changes.items()}
        current = self.read()
        target, flags = self._target(current)
        device = self.layout.copies[target].device
        if os.path.exists(device) and not os.access(device, os.W_OK):
            raise EnvError("not writable", where=self.layout.copies[target].describe())
        build_image(_apply(dict(current.variables), wanted), self.layout.size, redundant=self.layout.redundant,
                    flags=flags)

    # -- steps

    def _current(self, allow_default: Optional[Mapping[str, str]]) -> Optional[EnvSnapshot]:
        try:
            return _select(self.layout, self._read_all())
        except EnvCorrupt:
            if allow_default is None:
                raise
            log.warning("env: no valid copy, starting from the given default env")
            return None

    def _target(self, current: Optional[EnvSnapshot]) -> Tuple[int, int]:
        """The copy to write and its flags byte (1 for a single copy, where it is not stored)."""
        if not self.layout.redundant:
            return 0, 1
        if current is None or current.flags is None:
            return 0, 1
        return 1 - current.active_copy, (current.flags + 1) & 0xFF

    def _write_verified(self, target: int, image: bytes, expected: Dict[str, str], flags: int) -> EnvSnapshot:
        problem = ""
        for attempt in (1, 2):
            self._write_copy(target, image)
            result = self._verify(target, expected, flags)
            if isinstance(result, EnvSnapshot):
                return result
            problem = result
            log.warning("env: copy %d did not read back as written (attempt %d): %s", target, attempt, problem)
        raise EnvError(
            f"copy {target} did not read back as written, also after one retry: {problem}",
            where=self.layout.copies[target].describe(),
        )

    def _verify(self, target: int, expected: Dict[str, str], flags: int) -> Union[EnvSnapshot, str]:
        states = self._read_all()
        state = states[target]
        if state.variables is None:
            return state.problem
        if state.variables != expected:
            differ = sorted(set(state.variables.items()) ^ set(expected.items()))
            return f"variables differ: {', '.join(name for name, _ in differ[:5])}"
        if self.layout.redundant and state.flags != flags:
            return f"flags: wrote {flags}, read {state.flags}"
        snapshot = _select(self.layout, states)
        if snapshot.active_copy != target:
            return f"copy {snapshot.active_copy} still wins over the written copy {target}"
        return snapshot

    def _read_all(self) -> Tuple[_CopyState, ...]:
        return tuple(_read_copy(loc, self.layout.redundant) for loc in self.layout.copies)

    def _write_copy(self, target: int, image: bytes) -> None:
        loc = self.layout.copies[target]
        if not self.layout.redundant and self._holds_only_env(loc):
            # realpath: replace the file a symlink points to, not the symlink.
            try:
                durable.atomic_write(os.path.realpath(loc.device), image)
            except OSError as exc:
                raise _env_os_error("replace", loc, exc) from exc
        else:
            self._write_in_place(loc, image)

    def _holds_only_env(self, loc: EnvCopyLocation) -> bool:
        """A regular file at offset 0 no longer than the env: safe to replace as a whole."""
        if loc.offset != 0:
            return False
        try:
            st = os.stat(loc.device)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise _env_os_error("stat", loc, exc) from exc
        return stat.S_ISREG(st.st_mode) and st.st_size <= loc.size

    def _write_in_place(self, loc: EnvCopyLocation, image: bytes) -> None:
        """pwrite + fsync at the copy's offset; the other bytes of the file or device stay."""
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
        created = False
        try:
            try:
                fd = os.open(loc.device, flags)
            except FileNotFoundError:
                # The inactive copy of a redundant env may not exist yet (U-Boot creates it on its
                # first saveenv); the active copy is untouched, so creating it is safe.
                if not (self.layout.redundant and loc.offset == 0):
                    raise
                fd = os.open(loc.device, flags | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            try:
                _pwrite_full(fd, image, _resolve_offset(fd, loc))
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                durable.fsync_dir(os.path.dirname(os.path.abspath(loc.device)))
        except OSError as exc:
            raise _env_os_error("write", loc, exc) from exc

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        try:
            directory = os.path.dirname(self.lock_path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise EnvError(f"cannot open lock file: {exc.strerror or exc}", where=self.lock_path) from exc
        try:
            try:
                fcntl.flock(fd, operation)
            except OSError as exc:
                raise EnvError(f"cannot lock: {exc.strerror or exc}", where=self.lock_path) from exc
            yield
        finally:
            os.close(fd)  # also releases the flock


def _apply(base: Dict[str, str], changes: Mapping[str, Optional[str]]) -> Dict[str, str]:
    new = dict(base)
    for name, value in changes.items():
        if value is None:
            new.pop(name, None)
        else:
            new[name] = value
    return new
