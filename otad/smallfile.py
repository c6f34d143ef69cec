"""Small files read whole: configuration files, the kernel command line, mountinfo, hwrevision,
sw-versions, token and trust files, env scripts (`read_text`, `read_bytes`), and the system
files otad only looks at (`peek_text`: /proc/locks, /sys, the boot id).

Owns the size cap and the one wording of what can go wrong (cannot read, too large, not
UTF-8); the caller names what the file is for and picks the error class, so a bad hwrevision
is a ConfigError and a bad token file an AuthError, each naming the path. What the content
means is the caller's. A leaf: imports nothing of otad but errors.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, List, Literal, Optional, overload

from otad.errors import OtadError

# The error to raise: a class of the tree such as ConfigError, or a function that builds one
# (`what`, `where` = the path).
ErrorFactory = Callable[[str, str], OtadError]

_CHUNK = 64 << 10


@overload
def read_bytes(path: str, what: str, *, limit: int, error: ErrorFactory,
               missing_ok: Literal[False] = False) -> bytes: ...


@overload
def read_bytes(path: str, what: str, *, limit: int, error: ErrorFactory,
               missing_ok: Literal[True]) -> Optional[bytes]: ...


def read_bytes(path: str, what: str, *, limit: int, error: ErrorFactory,
               missing_ok: bool = False) -> Optional[bytes]:
    """The bytes of `path` (`what` names its role: "the hardware revision"); None for a missing
    file when `missing_ok`. `error(what, path)` if it cannot be read or holds more than `limit`
    bytes (read as a stream: /proc files have no size)."""
    try:
        with open(path, "rb") as f:
            raw = read_capped(f, limit)
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise error(f"cannot read {what}: {exc.strerror or exc}", path) from exc
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}", path) from exc
    if len(raw) > limit:
        raise error(f"expected {what} of at most {limit} bytes, got more", path)
    return raw


@overload
def read_text(path: str, what: str, *, limit: int, error: ErrorFactory, missing_ok: Literal[False] = False,
              errors: str = "strict") -> str: ...


@overload
def read_text(path: str, what: str, *, limit: int, error: ErrorFactory, missing_ok: Literal[True],
              errors: str = "strict") -> Optional[str]: ...


def read_text(path: str, what: str, *, limit: int, error: ErrorFactory, missing_ok: bool = False,
              errors: str = "strict") -> Optional[str]:
    """`read_bytes` decoded as UTF-8; `errors` as for bytes.decode ("strict": a byte that is not
    UTF-8 is `error`, naming its offset; "replace", "surrogateescape": kept)."""
    raw = read_bytes(path, what, limit=limit, error=error, missing_ok=True) if missing_ok else \
        read_bytes(path, what, limit=limit, error=error)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise error(f"expected {what} as UTF-8 text, got byte {raw[exc.start]:#04x} at offset {exc.start}",
                    path) from None


def peek_text(path: str, *, limit: int = 4 << 20) -> Optional[str]:
    """A system file that otad only looks at (/proc, /sys: a lock table, a loop device's backing
    file, the boot id): its text, or None when it is absent, unreadable or over `limit`, for the
    caller to take as "unknown". Never raises; bytes that are not UTF-8 are replaced."""
    try:
        with open(path, "rb") as f:
            raw = read_capped(f, limit)
    except OSError:
        return None
    return raw.decode("utf-8", "replace") if len(raw) <= limit else None


def read_capped(f: BinaryIO, limit: int) -> bytes:
    """What `f` holds, but at most `limit` + 1 bytes (one more tells the caller it is too big).
    Read in chunks: no buffer of `limit` bytes up front for a small file, and /proc/sys refuses
    a read of a few MiB at once (ENOMEM)."""
    parts: List[bytes] = []
    total = 0
    while total <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
