"""The source of a delta image (the running slot): how much of it counts, and what it holds.

Owns two orders. The source's length: `source-size` when the bundle gives a number, else the
ext2/3/4 filesystem's size from its superblock (no mount, unlike SWUpdate's "detect"), else the
whole device. The source index: a cached one (the zchunk header of what otad last wrote there),
else the source chunked by libzck through ctypes, else by the pure-Python chunker where enabled,
else none (every chunk is fetched); a `fine` target (one chunk size, a multiple of 4 KiB) is
matched by hashing the source at every 4 KiB offset instead. Matching itself is
otad.delta.srcindex's; storing the cached index otad.delta.slotindex's.
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from otad.delta import libzck, srcindex, zck
from otad.errors import SourceIndexError
from otad.superblock import SUPERBLOCK_END, parse_superblock

log = logging.getLogger(__name__)

# `fine` chunks are 8..32 KiB; libzck's own can all be 128 KiB (an empty filesystem) and are not one.
FINE_MAX_BYTES = 64 << 10

CACHED, LIBZCK, PYTHON, FINE, NONE = "cached index", "libzck", "pure-Python chunker", "4 KiB scan", "none"


@dataclass(frozen=True)
class IndexPolicy:
    """Which ways of indexing a source without a cached index are allowed."""

    libzck: bool = True
    python: bool = False


@dataclass(frozen=True, eq=False)
class SourceFound:
    """What the source holds of the target (`match`) and how that was found (`how`)."""

    match: srcindex.SourceMatch
    how: str
    length: int  # bytes of the source considered


def source_length(f: BinaryIO, declared: Optional[int], name: str) -> int:
    """`declared` (source-size), else the filesystem's size, else the device's; never past its end."""
    try:
        end = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = f.read(SUPERBLOCK_END)
    except OSError as exc:
        raise SourceIndexError(f"cannot read: {exc.strerror or exc}", name) from exc
    if declared is not None:
        if declared > end:
            raise SourceIndexError(f"source-size is {declared} bytes, the source has {end}", name)
        return declared
    sb = parse_superblock(head)
    if sb is not None and 0 < sb.size <= end:
        return sb.size
    return end


def find(target: zck.ChunkIndex, f: BinaryIO, length: int, cached: Optional[zck.ChunkIndex], policy: IndexPolicy,
         *, name: str, on_progress: Optional[Callable[[int], None]] = None) -> SourceFound:
    """What `f`'s first `length` bytes hold of `target`, by the first usable way of the order above."""
    uniform = target.uniform_length()
    if uniform is not None and uniform % srcindex.FINE_STEP == 0 and uniform <= FINE_MAX_BYTES and len(target) > 1:
        return SourceFound(srcindex.match_fine(target, f, length, name=name, on_progress=on_progress), FINE, length)
    if cached is not None:
        return SourceFound(srcindex.match_index(target, cached), CACHED, length)
    use_libzck = policy.libzck and libzck.available()
    if use_libzck or policy.python:
        chunks = srcindex.source_chunks(f, length, name=name, use_libzck=use_libzck, on_progress=on_progress)
        return SourceFound(srcindex.match_chunks(target, chunks), LIBZCK if use_libzck else PYTHON, length)
    log.warning("%s: no cached index and no way to chunk it (libzck not loadable, delta.python_index off): "
                "every chunk is fetched", name)
    return SourceFound(srcindex.SourceMatch(array("q", [srcindex.NOT_FOUND]) * len(target)), NONE, length)
