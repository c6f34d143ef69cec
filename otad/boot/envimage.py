"""One U-Boot env copy's bytes: CRC, redundant flags byte, sorted name=value list.

Owns building and parsing an image (as mkenvimage and U-Boot's saveenv write it) and the rules
on names and values: what the format can hold, and what U-Boot's env import would mangle.
Where the copies live is fwenvconfig's; reading and writing them, ubootenv's.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

from otad.errors import EnvError

# Real envs are 8 KiB to 256 KiB; the cap keeps a typo'd size from allocating gigabytes.
MAX_ENV_SIZE = 0x1000000
# Room for CRC, flags byte and the empty list's terminator.
MIN_ENV_SIZE = 8
_CRC = struct.Struct("<I")
_CRC_BE = struct.Struct(">I")

__all__ = [
    "MAX_ENV_SIZE",
    "MIN_ENV_SIZE",
    "build_image",
    "check_change",
    "decode_copy",
    "encode",
    "name_problem",
    "parse_image",
]


# --------------------------------------------------------------------------- image


def _header_size(redundant: bool) -> int:
    return 5 if redundant else 4


def encode(text: str, what: str) -> bytes:
    # surrogateescape: bytes that are not UTF-8 were decoded to U+DC80..U+DCFF and go back as-is.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise EnvError(f"{what} {text!r}: expected text encodable as UTF-8") from exc


def name_problem(name: str) -> Optional[str]:
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
        problem = name_problem(name)
        if problem:
            raise EnvError(f"variable name {name!r}: {problem}")
        if not isinstance(value, str) or "\0" in value:
            raise EnvError(f"variable {name!r}: expected text without NUL bytes, got {value!r}")
        items.append((encode(name, "variable name"), encode(value, f"variable {name!r}: value")))
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


def decode_copy(blob: bytes, size: int, redundant: bool) -> Union[_Decoded, str]:
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
    decoded = decode_copy(blob, size, redundant)
    return decoded.variables if isinstance(decoded, _Decoded) else None


# ------------------------------------------------------------ names and values


def _new_name_problem(name: str) -> Optional[str]:
    """Why otad refuses to create `name`: unstorable, or mangled by U-Boot's env import."""
    problem = name_problem(name)
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


def check_change(name: str, value: Optional[str], *, keep_empty: bool = False) -> Optional[str]:
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

