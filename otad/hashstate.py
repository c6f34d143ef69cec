"""Hashes whose running state can be saved to disk and taken up again after a reboot.

hashlib cannot export a half-fed hash, yet a download resumed after a power cut must go on
hashing from where it stopped (there is no copy of the bytes to hash again). OpenSSL's
low-level SHA256_CTX / SHA_CTX are plain structs: the same libcrypto that Python's hashlib
uses is called through ctypes, and the struct's bytes are the state. The state is only
meaningful to the same libcrypto on the same machine, which is all a resume needs; a state
of the wrong size is refused. Where libcrypto cannot be loaded, `available()` is False and
callers fall back to hashlib (and to restarting downloads from the first byte).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional

from otad.errors import HashStateError

if TYPE_CHECKING:
    import ctypes  # imported when a hash state is first made: `otad install` from a file needs none


@dataclass(frozen=True)
class _Algorithm:
    name: str
    prefix: str  # OpenSSL's function prefix: SHA256_Init, SHA1_Init...
    ctx_size: int  # sizeof(SHA256_CTX) etc.; stable across OpenSSL 1.1 and 3
    digest_size: int


ALGORITHMS: Dict[str, _Algorithm] = {
    "sha256": _Algorithm("sha256", "SHA256", 112, 32),
    "sha1": _Algorithm("sha1", "SHA1", 96, 20),
}


class _Libcrypto:
    """The libcrypto hashlib has loaded, else one by its usual names; ctypes.util.find_library
    only last: it runs ldconfig (and gcc) as subprocesses, 2 s of `otad install`'s start on a Pi Zero."""

    def __init__(self) -> None:
        self.lib: Optional[ctypes.CDLL] = self._load(_hashlibs_libcrypto(), "libcrypto.so.3", "libcrypto.so.1.1")
        if self.lib is None:
            import ctypes.util

            self.lib = self._load(ctypes.util.find_library("crypto"))

    @staticmethod
    def _load(*candidates: Optional[str]) -> Optional[ctypes.CDLL]:
        import ctypes

        for candidate in filter(None, candidates):
            try:
                lib = ctypes.CDLL(candidate)
                for algorithm in ALGORITHMS.values():
                    for suffix in ("_Init", "_Update", "_Final"):
                        getattr(lib, algorithm.prefix + suffix)
            except (OSError, AttributeError):
                continue
            return lib
        return None


def _hashlibs_libcrypto(maps: str = "/proc/self/maps") -> Optional[str]:
    """The path of the libcrypto mapped into this process (hashlib's), if any."""
    try:
        import _hashlib  # noqa: F401  # hashlib's OpenSSL module: maps libcrypto
        with open(maps) as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                if os.path.basename(path).startswith("libcrypto.so"):
                    return path
    except (ImportError, OSError):
        pass
    return None


_LIBCRYPTO: Optional[_Libcrypto] = None


def _lib() -> Optional[ctypes.CDLL]:
    global _LIBCRYPTO
    if _LIBCRYPTO is None:
        _LIBCRYPTO = _Libcrypto()
    return _LIBCRYPTO.lib


def available() -> bool:
    return _lib() is not None


class ResumableHash:
    """A running sha256/sha1 with hashlib's update/copy/hexdigest and a savable `state()`."""

    def __init__(self, name: str, state: Optional[bytes] = None, count: int = 0) -> None:
        import ctypes

        algorithm = ALGORITHMS.get(name)
        lib = _lib()
        if algorithm is None:
            raise HashStateError(f"no resumable {name!r} hash (have: {', '.join(ALGORITHMS)})")
        if lib is None:
            raise HashStateError("libcrypto cannot be loaded: hash states cannot be saved on this system")
        self.name = name
        self.count = count  # bytes fed so far, kept with the state
        self._algorithm = algorithm
        self._update = getattr(lib, algorithm.prefix + "_Update")
        self._final = getattr(lib, algorithm.prefix + "_Final")
        self._buffer, self._size_t = ctypes.create_string_buffer, ctypes.c_size_t
        if state is None:
            self._ctx = self._buffer(algorithm.ctx_size)
            getattr(lib, algorithm.prefix + "_Init")(self._ctx)
        elif len(state) != algorithm.ctx_size:
            raise HashStateError(f"saved {name} state is {len(state)} bytes, expected {algorithm.ctx_size}")
        else:
            self._ctx = self._buffer(bytes(state), algorithm.ctx_size)

    def update(self, data: bytes) -> None:
        self._update(self._ctx, bytes(data), self._size_t(len(data)))
        self.count += len(data)

    def copy(self) -> "ResumableHash":
        return ResumableHash(self.name, self._ctx.raw, self.count)

    def state(self) -> bytes:
        return self._ctx.raw

    def digest(self) -> bytes:
        ctx = self._buffer(self._ctx.raw, self._algorithm.ctx_size)  # Final spoils its ctx
        out = self._buffer(self._algorithm.digest_size)
        self._final(out, ctx)
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()


def new_hash(name: str) -> "ResumableHash | hashlib._Hash":
    """A resumable hash where the system allows it, else hashlib's."""
    if name in ALGORITHMS and available():
        return ResumableHash(name)
    return hashlib.new(name)
