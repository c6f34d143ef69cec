"""libzck (Debian's libzck1) through ctypes: chunk a source the way SWUpdate's delta handler does.

Owns loading the library and driving it: a write context with no compression, uncompressed
SHA-256 digests and the default buzhash chunker, fed the whole source, read back as a
ChunkIndex (the calls of SWUpdate's `create_zckindex`, plus the final `zck_end_chunk` that
SWUpdate before 2024.05 forgets). Also writes .zck files on a build host, as the `zck` tool
does (the `compatible` profile) or with manual chunk ends (the `fine` profile). Where libzck cannot be loaded, `available()` is False and callers
use the pure-Python chunker (otad.delta.chunker).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from array import array
from typing import BinaryIO, Callable, Iterator, Optional, Set, Tuple

from otad.delta import zck
from otad.delta.blocks import read_blocks
from otad.errors import SourceIndexError

SEGMENT_BYTES = 64 << 20  # of source per libzck context (about 2,000 chunks)
TRUNCATE_EVERY = 4 << 20  # libzck 1.2.3 copies every source byte to a temp file: keep it sparse

# zck.h enums
_COMP_TYPE, _MANUAL_CHUNK, _CHUNK_MAX = 100, 101, 103
_HASH_CHUNK_TYPE, _UNCOMP_HEADER, _NO_WRITE = 1, 4, 5
_COMP_NONE, _COMP_ZSTD = 0, 2
_LOG_NONE = 4


class _Lib:
    def __init__(self) -> None:
        self.lib: Optional[ctypes.CDLL] = None
        self.libc: Optional[ctypes.CDLL] = None
        for candidate in filter(None, ("libzck.so.1", ctypes.util.find_library("zck"))):
            try:
                lib = ctypes.CDLL(candidate)
                _declare(lib)
            except (OSError, AttributeError):
                continue
            self.lib = lib
            self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.zck_set_log_level(_LOG_NONE)  # errors come back through zck_get_error
            break


def _declare(lib: ctypes.CDLL) -> None:
    p, b, i, s = ctypes.c_void_p, ctypes.c_bool, ctypes.c_int, ctypes.c_ssize_t
    for name, res, args in (
            ("zck_create", p, []), ("zck_init_write", b, [p, i]), ("zck_set_ioption", b, [p, i, s]),
            ("zck_write", s, [p, ctypes.c_char_p, ctypes.c_size_t]), ("zck_end_chunk", s, [p]),
            ("zck_close", b, [p]), ("zck_free", None, [ctypes.POINTER(p)]),
            ("zck_get_error", ctypes.c_char_p, [p]), ("zck_clear_error", b, [p]),
            ("zck_is_error", i, [p]), ("zck_set_log_level", None, [i]),
            ("zck_get_first_chunk", p, [p]), ("zck_get_next_chunk", p, [p]),
            ("zck_get_chunk_size", s, [p]), ("zck_get_chunk_digest_uncompressed", p, [p])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


_LIB: Optional[_Lib] = None


def _lib() -> Optional[_Lib]:
    global _LIB
    if _LIB is None:
        _LIB = _Lib()
    return _LIB if _LIB.lib is not None else None


def available() -> bool:
    return _lib() is not None


class _Context:
    """One zckCtx opened for writing to `fd`; always freed."""

    def __init__(self, fd: int, what: str) -> None:
        lib = _lib()
        if lib is None or lib.lib is None or lib.libc is None:
            raise SourceIndexError("libzck cannot be loaded (install Debian's libzck1)", what)
        self.lib, self.libc, self.what = lib.lib, lib.libc, what
        before = _temp_fds()
        self.ctx = ctypes.c_void_p(self.lib.zck_create())
        if not self.ctx:
            raise SourceIndexError("zck_create failed", what)
        self._check(self.lib.zck_init_write(self.ctx, fd), "zck_init_write")
        new = _temp_fds() - before
        self.temp_fd = new.pop() if len(new) == 1 else None
        self.no_write = False

    def set(self, option: int, value: int, step: str) -> None:
        self._check(self.lib.zck_set_ioption(self.ctx, option, value), step)

    def try_set(self, option: int, value: int) -> bool:
        """An option older libzck lacks (ZCK_NO_WRITE: 1.3.0): False, and the error cleared."""
        if self.lib.zck_set_ioption(self.ctx, option, value):
            return True
        self.lib.zck_clear_error(self.ctx)
        return False

    def write(self, data: bytes) -> None:
        if self.lib.zck_write(self.ctx, data, len(data)) != len(data):
            self._fail("zck_write")

    def end_chunk(self) -> None:
        if self.lib.zck_end_chunk(self.ctx) < 0:
            self._fail("zck_end_chunk")

    def close(self) -> None:
        self._check(self.lib.zck_close(self.ctx), "zck_close")

    def truncate_temp(self) -> None:
        if self.temp_fd is not None and not self.no_write:
            os.ftruncate(self.temp_fd, 0)  # later writes leave a hole before them: no space used

    def chunks(self) -> Iterator[Tuple[int, bytes]]:
        """(length, uncompressed digest) of each data chunk so far (the dict entry skipped)."""
        item = self.lib.zck_get_first_chunk(self.ctx)
        item = self.lib.zck_get_next_chunk(item) if item else None
        while item:
            hex_ptr = self.lib.zck_get_chunk_digest_uncompressed(item)
            if not hex_ptr:
                self._fail("zck_get_chunk_digest_uncompressed")
            try:
                digest = bytes.fromhex(ctypes.string_at(hex_ptr).decode("ascii"))
            finally:
                self.libc.free(ctypes.c_void_p(hex_ptr))
            yield self.lib.zck_get_chunk_size(item), digest
            item = self.lib.zck_get_next_chunk(item)

    def free(self) -> None:
        if self.ctx:
            self.lib.zck_free(ctypes.byref(self.ctx))

    def _check(self, ok: bool, step: str) -> None:
        if not ok:
            self._fail(step)

    def _fail(self, step: str) -> None:
        message = self.lib.zck_get_error(self.ctx) or b"no message"
        raise SourceIndexError(f"libzck {step}: {message.decode('utf-8', 'replace').strip()}", self.what)

    def __enter__(self) -> "_Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()


def index_source(f: BinaryIO, length: int, *, name: str = "source",
                 on_progress: Optional[Callable[[int], None]] = None) -> zck.ChunkIndex:
    """The chunks of the first `length` bytes of `f` (a slot, an image), as libzck cuts them
    and with their uncompressed SHA-256: the index SWUpdate builds of its `source`."""
    lengths = array("I")
    digests = bytearray()
    for size, digest in source_chunks(f, length, name=name, on_progress=on_progress):
        lengths.append(size)
        digests += digest
    return zck.ChunkIndex.of_source(lengths, bytes(digests))


def source_chunks(f: BinaryIO, length: int, *, name: str = "source",
                  on_progress: Optional[Callable[[int], None]] = None,
                  segment_bytes: int = SEGMENT_BYTES) -> Iterator[Tuple[int, bytes]]:
    """(length, uncompressed SHA-256) of each chunk libzck cuts of `f`'s first `length` bytes, in order.

    libzck keeps every chunk of a context in its index (some 200 bytes each, in C). So a context
    lives for about `segment_bytes` only: its finished chunks are handed on and it is freed, and
    a fresh one is fed from the end of its last finished chunk (the unfinished bytes, at most
    128 KiB, are read again). libzck starts every chunk with an
    empty buzhash window and a zero length, so a context that starts where a chunk ended cuts
    exactly what the old one would have (test_libzck checks it against one context)."""
    start = 0  # where the current context's first chunk begins
    with open(os.devnull, "wb") as sink:
        while True:
            with _Context(sink.fileno(), name) as c:
                c.set(_UNCOMP_HEADER, 1, "ZCK_UNCOMP_HEADER")
                c.set(_COMP_TYPE, _COMP_NONE, "ZCK_COMP_TYPE")
                c.set(_HASH_CHUNK_TYPE, zck.HASH_SHA256, "ZCK_HASH_CHUNK_TYPE")
                c.no_write = c.try_set(_NO_WRITE, 1)
                f.seek(start)
                step = min(segment_bytes, length - start)
                _feed(c, f, step, name, None)
                if on_progress is not None:
                    on_progress(start + step)
                if start + step >= length:
                    c.end_chunk()
                    yield from c.chunks()
                    return
                cut = 0
                for size, digest in c.chunks():
                    cut += size
                    yield size, digest
                if cut == 0:
                    raise SourceIndexError(f"libzck ended no chunk in {step} bytes from byte {start}", name)
                start += cut


def write_zck(f: BinaryIO, length: int, out: BinaryIO, chunk_bytes: Optional[int] = None, *, name: str = "image",
              tmpdir: Optional[str] = None) -> None:
    """Write a .zck of `f`'s first `length` bytes with libzck itself, as `zck -u -h sha256` does:
    zstd, uncompressed SHA-256 digests, and libzck's own (buzhash) chunk ends — or, with
    `chunk_bytes`, chunks ending every `chunk_bytes` (the `fine` profile, as SWUpdate reads it)."""
    old_tmp = os.environ.get("TMPDIR")
    if tmpdir is not None:
        os.environ["TMPDIR"] = tmpdir  # libzck stages the compressed body there
    try:
        with _Context(out.fileno(), name) as c:
            c.set(_COMP_TYPE, _COMP_ZSTD, "ZCK_COMP_TYPE")
            c.set(_UNCOMP_HEADER, 1, "ZCK_UNCOMP_HEADER")
            c.set(_HASH_CHUNK_TYPE, zck.HASH_SHA256, "ZCK_HASH_CHUNK_TYPE")
            if chunk_bytes is not None:
                c.set(_MANUAL_CHUNK, 1, "ZCK_MANUAL_CHUNK")
                c.set(_CHUNK_MAX, chunk_bytes, "ZCK_CHUNK_MAX")  # the manual path ends chunks there itself
            c.no_write = True  # the staged body is the output: never truncate it
            _feed(c, f, length, name, None)
            c.close()
    finally:
        if tmpdir is not None:
            if old_tmp is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_tmp


def _feed(c: _Context, f: BinaryIO, length: int, name: str, on_progress: Optional[Callable[[int], None]]) -> None:
    done, since_truncate = 0, 0
    for block in read_blocks(f, length, name):
        c.write(block)
        done += len(block)
        since_truncate += len(block)
        if since_truncate >= TRUNCATE_EVERY:
            c.truncate_temp()
            since_truncate = 0
        if on_progress is not None:
            on_progress(done)


def _temp_fds() -> Set[int]:
    """The fds of libzck's (unlinked) temp files open in this process."""
    found: Set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if "zcktemp" in os.path.basename(os.readlink(f"/proc/self/fd/{name}")):
                found.add(int(name))
        except OSError:
            continue  # the fd of the listing itself, closed by now
    return found
