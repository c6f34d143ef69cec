"""Small files read whole: configuration files, the kernel command line, mountinfo, hwrevision,
sw-versions, token and trust files, env scripts.

Owns the size cap and the one wording of what can go wrong (cannot read, too large, not
UTF-8); the caller names what the file is for and picks the error class, so a bad hwrevision
is a ConfigError and a bad token file an AuthError, each naming the path. What the content
means is the caller's. A leaf: imports nothing of otad but errors.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, overload

from otad.errors import OtadError

# The error to raise: a class of the tree such as ConfigError, or a function that builds one
# (`what`, `where` = the path).
ErrorFactory = Callable[[str, str], OtadError]


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
            raw = f.read(limit + 1)
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
