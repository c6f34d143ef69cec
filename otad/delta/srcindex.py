"""What a source (the booted slot, an image file) already holds of a target image, and where.

Owns reading a source once, with bounded memory, and matching its bytes to the target's chunk
digests, three ways: from a chunk index of the source (a cached header, or one made here by
libzck or the pure-Python chunker: the `compatible` profile, SWUpdate's exact rule), or by
hashing a fixed-size window at every 4 KiB offset (the `fine` profile). The result is a
`SourceMatch`: a source offset per target chunk. Verifying those bytes again when they are
copied, and deciding what to fetch, belong to the assembler and the planner.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, List, Optional

from otad.delta import chunker, libzck, zck
from otad.delta.blocks import read_blocks, read_chunks
from otad.errors import SourceIndexError

FINE_STEP = 4096  # filesystem block: where a moved block can start
NOT_FOUND = -1

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True, eq=False)
class SourceMatch:
    """For target chunk i, `offsets[i]` is where the source holds its bytes (NOT_FOUND: fetch)."""

    offsets: "array[int]" = field(repr=False)

    def __len__(self) -> int:
        return len(self.offsets)

    def found(self) -> int:
        return sum(1 for o in self.offsets if o != NOT_FOUND)


def chunk_source(f: BinaryIO, length: int, *, name: str = "source", use_libzck: Optional[bool] = None,
                 on_progress: Progress = None) -> zck.ChunkIndex:
    """The `compatible` index of `f`'s first `length` bytes: libzck's chunks with their SHA-256.
    libzck through ctypes when it loads (or `use_libzck`), else the pure-Python chunker.
    Offsets count from byte 0 of `f`, wherever it is positioned now."""
    f.seek(0)
    if use_libzck is None:
        use_libzck = libzck.available()
    if use_libzck:
        return libzck.index_source(f, length, name=name, on_progress=on_progress)
    return _python_index(f, length, name, on_progress)


def _python_index(f: BinaryIO, length: int, name: str, on_progress: Progress) -> zck.ChunkIndex:
    lengths: List[int] = []
    digests = bytearray()
    done = 0
    for data in read_chunks(f, length, chunker.BuzhashChunker(), name):
        lengths.append(len(data))
        digests += hashlib.sha256(data).digest()
        done += len(data)
        if on_progress is not None:
            on_progress(done)
    return zck.ChunkIndex.of_source(lengths, bytes(digests))


def _key(digest: bytes) -> int:
    """A digest's first 8 bytes as an int: half the memory of the bytes as a dict key. A
    match on it is confirmed on the whole digest."""
    return int.from_bytes(digest[:8], "little")


def match_index(target: zck.ChunkIndex, source: zck.ChunkIndex) -> SourceMatch:
    """SWUpdate's rule (libzck's zck_find_matching_chunks): a target chunk is in the source
    when a source chunk has the same uncompressed SHA-256 and the same length (first one wins)."""
    if not target.digests_uncompressed or not source.digests_uncompressed:
        raise SourceIndexError("both indexes need uncompressed digests (zck -u)")
    if target.digest_size != source.digest_size:
        raise SourceIndexError(f"digest sizes differ: target {target.digest_size}, source {source.digest_size}")
    where = _DigestTable(source)
    offsets = array("q", [NOT_FOUND]) * len(target)
    for i in range(len(target)):
        j = where.find(target.digest_uncompressed(i), target.lengths[i])
        if j is not None:
            offsets[i] = source.offsets[j]
    return SourceMatch(offsets)


class _DigestTable:
    """The source's chunks sorted by digest, 8 bytes each: the top bits of the digest, then the
    chunk number (a dict of the same would take about 100 bytes a chunk)."""

    INDEX_BITS = 20  # zck.Limits.max_chunks is 2**20

    def __init__(self, source: zck.ChunkIndex) -> None:
        if len(source) > 1 << self.INDEX_BITS:
            raise SourceIndexError(f"{len(source)} source chunks, more than {1 << self.INDEX_BITS}")
        self.source = source
        self.table = array("Q", sorted(self._prefix(source.digest_uncompressed(j)) | j for j in range(len(source))))

    def _prefix(self, digest: bytes) -> int:
        return _key(digest) >> self.INDEX_BITS << self.INDEX_BITS

    def find(self, digest: bytes, length: int) -> Optional[int]:
        """The first source chunk with this digest and length, else None."""
        prefix = self._prefix(digest)
        mask = (1 << self.INDEX_BITS) - 1
        k = bisect.bisect_left(self.table, prefix)
        while k < len(self.table) and self.table[k] & ~mask == prefix:
            j = self.table[k] & mask
            if self.source.lengths[j] == length and self.source.digest_uncompressed(j) == digest:
                return j
            k += 1
        return None


def match_fine(target: zck.ChunkIndex, f: BinaryIO, length: int, *, name: str = "source",
               step: int = FINE_STEP, on_progress: Progress = None) -> SourceMatch:
    """The `fine` profile: hash a chunk-sized window of the source at every `step` offset and
    keep the offsets whose SHA-256 a target chunk has. Memory: one read block plus one entry
    per distinct target digest, whatever the source size. The short last chunk is looked for
    only at its own offset."""
    size = target.uniform_length()
    if size is None or size % step:
        raise SourceIndexError(f"the target's chunks are not all one multiple of {step} bytes: not a fine profile")
    wanted: Dict[int, int] = {}  # digest key -> the first target chunk with it
    for i in range(len(target)):
        if target.lengths[i] == size:
            wanted.setdefault(_key(target.digest_uncompressed(i)), i)
    found = _scan_windows(target, f, length, size, step, wanted, name, on_progress)
    offsets = array("q", [NOT_FOUND]) * len(target)
    for i in range(len(target)):
        if target.lengths[i] == size:
            key = _key(target.digest_uncompressed(i))
            if key in found and target.digest_uncompressed(wanted[key]) == target.digest_uncompressed(i):
                offsets[i] = found[key]
    last = len(target) - 1
    if last >= 0 and target.lengths[last] != size:
        offsets[last] = _same_offset(target, last, f, length)
    return SourceMatch(offsets)


def _scan_windows(target: zck.ChunkIndex, f: BinaryIO, length: int, size: int, step: int, wanted: Dict[int, int],
                  name: str, on_progress: Progress) -> Dict[int, int]:
    """digest key -> the first source offset whose window has that target chunk's digest."""
    found: Dict[int, int] = {}
    zero = bytes(size)
    zero_digest = hashlib.sha256(zero).digest()
    sha256 = hashlib.sha256
    buf = b""
    base = 0  # source offset of buf[0]
    f.seek(0)
    for block in read_blocks(f, length, name):
        buf = buf + block
        view = memoryview(buf)
        end = len(buf) - size  # last window start inside buf
        pos = 0
        while pos <= end:
            window = view[pos:pos + size]
            digest = zero_digest if window == zero else sha256(window).digest()
            key = _key(digest)
            if key in wanted and key not in found and target.digest_uncompressed(wanted[key]) == digest:
                found[key] = base + pos
            pos += step
        view.release()
        buf = buf[pos:]
        base += pos
        if on_progress is not None:
            on_progress(base)
    return found


def _same_offset(target: zck.ChunkIndex, i: int, f: BinaryIO, length: int) -> int:
    offset, n = target.offsets[i], target.lengths[i]
    if offset + n > length:
        return NOT_FOUND
    f.seek(offset)
    data = f.read(n)
    return offset if hashlib.sha256(data).digest() == target.digest_uncompressed(i) else NOT_FOUND
