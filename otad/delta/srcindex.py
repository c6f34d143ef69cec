"""What a source (the booted slot, an image file) already holds of a target image, and where.

Owns reading a source once, with bounded memory, and matching its bytes to the target's chunk
digests, three ways: from the source's chunks as they come (a cached header's entries, or cut
here by libzck or the pure-Python chunker: the `compatible` profile, SWUpdate's exact rule), or
by hashing a fixed-size window at every 4 KiB offset (the `fine` profile), each looked up in the
target's digest table (TargetTable); nothing is kept per source chunk. The result is a
`SourceMatch`: a source offset per target chunk. Verifying those bytes again when they are
copied, and deciding what to fetch, belong to the assembler and the planner.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Tuple

from otad.delta import libzck, zck
from otad.delta.blocks import READ_BYTES, read_chunks
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
    lengths = array("I")
    digests = bytearray()
    for n, digest in source_chunks(f, length, name=name, use_libzck=use_libzck, on_progress=on_progress):
        lengths.append(n)
        digests += digest
    return zck.ChunkIndex.of_source(lengths, bytes(digests))


def source_chunks(f: BinaryIO, length: int, *, name: str = "source", use_libzck: Optional[bool] = None,
                  on_progress: Progress = None) -> Iterator[Tuple[int, bytes]]:
    """(length, SHA-256) of each `compatible` chunk of `f`'s first `length` bytes, in order, as
    `chunk_source` cuts them: nothing of them is kept here."""
    f.seek(0)
    if use_libzck is None:
        use_libzck = libzck.available()
    if use_libzck:
        return libzck.source_chunks(f, length, name=name, on_progress=on_progress)
    return _python_chunks(f, length, name, on_progress)


def _python_chunks(f: BinaryIO, length: int, name: str, on_progress: Progress) -> Iterator[Tuple[int, bytes]]:
    from otad.delta.chunker import BuzhashChunker  # its tables take 1.5 MB: only where it runs

    done = 0
    for data in read_chunks(f, length, BuzhashChunker(), name):
        done += len(data)
        yield len(data), hashlib.sha256(data).digest()
        if on_progress is not None:
            on_progress(done)


def _key(digest: bytes) -> int:
    """A digest's first 8 bytes as an int. A match on it is confirmed on the whole digest."""
    return int.from_bytes(digest[:8], "little")


class TargetTable:
    """The target's distinct uncompressed digests, for finding a source's bytes among them.

    An open-addressing hash table of 8-byte slots, at most half full: the top 43 bits of a
    digest's first 8 bytes, then 1 + the number of the first target chunk with that digest (0:
    an empty slot); in front of it a bitmap of 2**20 bits that most digests the target does
    not have stop at. 8 to 16 bytes a chunk plus 128 KiB, where a dict of the same took about
    100 bytes a chunk. A truncated key only finds candidates: `find` answers a chunk only when
    its whole digest is the one looked for. Chunks with a digest seen before are not entered:
    `first` maps them to the one that was.
    """

    INDEX_BITS = 21  # 1 + chunk number; zck.Limits.max_chunks is 2**20
    FILTER_BITS = 20

    def __init__(self, target: zck.ChunkIndex, only_length: Optional[int] = None) -> None:
        if len(target) >= (1 << self.INDEX_BITS) - 1:
            raise SourceIndexError(f"{len(target)} target chunks, more than {(1 << self.INDEX_BITS) - 2}")
        if not target.uncompressed:
            raise SourceIndexError("the target's index needs uncompressed digests (zck -u)")
        self.target = target
        size = 1 << max(4, (2 * len(target) - 1).bit_length())  # at most half full
        self.mask = size - 1
        self.slots = array("Q", bytes(8 * size))
        self.filter = bytearray(1 << (self.FILTER_BITS - 3))
        for i in range(len(target)):
            if only_length is None or target.lengths[i] == only_length:
                self._add(i, target.digest_uncompressed(i))

    def _add(self, i: int, digest: bytes) -> None:
        key = _key(digest)
        if self.find(digest, key) is not None:
            return
        slot = key & self.mask
        while self.slots[slot]:
            slot = (slot + 1) & self.mask
        self.slots[slot] = (key >> self.INDEX_BITS << self.INDEX_BITS) | (i + 1)
        bit = key >> (64 - self.FILTER_BITS)
        self.filter[bit >> 3] |= 1 << (bit & 7)

    def maybe(self, key: int) -> bool:
        """False: the target has no chunk with a digest of this key (the filter says so)."""
        bit = key >> (64 - self.FILTER_BITS)
        return bool(self.filter[bit >> 3] >> (bit & 7) & 1)

    def find(self, digest: bytes, key: Optional[int] = None) -> Optional[int]:
        """The first target chunk whose uncompressed digest is `digest` (whole), else None."""
        key = _key(digest) if key is None else key
        if not self.maybe(key):
            return None
        top, low = key >> self.INDEX_BITS, (1 << self.INDEX_BITS) - 1
        slot, slots = key & self.mask, self.slots
        entry = slots[slot]
        while entry:
            if entry >> self.INDEX_BITS == top:
                i = (entry & low) - 1
                if self.target.digest_uncompressed(i) == digest:
                    return i
            slot = (slot + 1) & self.mask
            entry = slots[slot]
        return None

    def spread(self, offsets: "array[int]") -> None:
        """Give every chunk that was not entered (a digest seen before) the offset of the one that was."""
        for i in range(len(self.target)):
            if offsets[i] == NOT_FOUND:
                first = self.find(self.target.digest_uncompressed(i))
                if first is not None and first != i and self.target.lengths[first] == self.target.lengths[i]:
                    offsets[i] = offsets[first]


def match_index(target: zck.ChunkIndex, source: zck.ChunkIndex) -> SourceMatch:
    """SWUpdate's rule (libzck's zck_find_matching_chunks) against a source's index: a target
    chunk is in the source when a source chunk has the same uncompressed SHA-256 and the same
    length (first one wins)."""
    if not source.uncompressed:
        raise SourceIndexError("both indexes need uncompressed digests (zck -u)")
    if target.digest_size != source.digest_size:
        raise SourceIndexError(f"digest sizes differ: target {target.digest_size}, source {source.digest_size}")
    return match_chunks(target, ((source.lengths[j], source.digest_uncompressed(j)) for j in range(len(source))))


def match_chunks(target: zck.ChunkIndex, chunks: Iterable[Tuple[int, bytes]]) -> SourceMatch:
    """SWUpdate's rule against a source's chunks as they come, (length, digest) in source order:
    only the target's table is held, never the source's index."""
    if not target.uncompressed:
        raise SourceIndexError("both indexes need uncompressed digests (zck -u)")
    table = TargetTable(target)
    offsets = array("q", [NOT_FOUND]) * len(target)
    at = 0
    for n, digest in chunks:
        key = _key(digest)
        if table.maybe(key):
            i = table.find(digest, key)
            if i is not None and offsets[i] == NOT_FOUND and target.lengths[i] == n:
                offsets[i] = at
        at += n
    table.spread(offsets)
    return SourceMatch(offsets)


def match_fine(target: zck.ChunkIndex, f: BinaryIO, length: int, *, name: str = "source",
               step: int = FINE_STEP, on_progress: Progress = None) -> SourceMatch:
    """The `fine` profile: hash a chunk-sized window of the source at every `step` offset and
    keep the offsets whose SHA-256 a target chunk has. Memory: one read block plus the target's
    table (TargetTable), whatever the source size. The short last chunk is looked for only at
    its own offset."""
    size = target.uniform_length()
    if size is None or size % step:
        raise SourceIndexError(f"the target's chunks are not all one multiple of {step} bytes: not a fine profile")
    table = TargetTable(target, size)
    offsets = array("q", [NOT_FOUND]) * len(target)
    _scan_windows(table, f, length, size, step, offsets, name, on_progress)
    last = len(target) - 1
    table.spread(offsets)
    if last >= 0 and target.lengths[last] != size:
        offsets[last] = _same_offset(target, last, f, length)
    return SourceMatch(offsets)


def _scan_windows(table: TargetTable, f: BinaryIO, length: int, size: int, step: int, offsets: "array[int]",
                  name: str, on_progress: Progress) -> None:
    """offsets[i] = the first source offset whose window has chunk i's digest (i: the first chunk with it)."""
    zero = bytes(size)
    zero_chunk = table.find(hashlib.sha256(zero).digest())  # free space: many windows, one chunk
    sha256, key_of, maybe, find = hashlib.sha256, _key, table.maybe, table.find
    # One buffer for the whole scan: the windows not yet hashed are moved to its front and the
    # next block read in behind them (a new bytes object a block cost 2 MB of heap churn).
    buf = bytearray(size + READ_BYTES)
    view = memoryview(buf)
    held = 0  # bytes in buf: from source offset `base` on
    base = 0
    f.seek(0)
    while base + held < length:
        got = _read_into(f, view[held:held + min(READ_BYTES, length - base - held)], base + held, length, name)
        held += got
        end = held - size  # last window start inside buf
        pos = 0
        while pos <= end:
            window = view[pos:pos + size]
            if window == zero:
                if zero_chunk is not None and offsets[zero_chunk] == NOT_FOUND:
                    offsets[zero_chunk] = base + pos
                pos += step
                continue
            digest = sha256(window).digest()
            key = key_of(digest)
            if maybe(key):
                i = find(digest, key)
                if i is not None and offsets[i] == NOT_FOUND:
                    offsets[i] = base + pos
            pos += step
        pos = min(pos, held)
        view[:held - pos] = view[pos:held]  # memoryview assignment moves overlapping bytes safely
        held -= pos
        base += pos
        if on_progress is not None:
            on_progress(base)
    view.release()


def _read_into(f: BinaryIO, into: memoryview, at: int, length: int, name: str) -> int:
    """Fill `into` from `f` (at source offset `at`); a short source or a read error as blocks.read_blocks says them."""
    done = 0
    while done < len(into):
        try:
            n = f.readinto(into[done:])  # type: ignore[attr-defined]
        except OSError as exc:
            raise SourceIndexError(f"read error at byte {at + done}: {exc.strerror or exc}", name) from exc
        if not n:
            raise SourceIndexError(f"ends at byte {at + done}, expected {length}", name)
        done += n
    return done


def _same_offset(target: zck.ChunkIndex, i: int, f: BinaryIO, length: int) -> int:
    offset, n = target.offsets[i], target.lengths[i]
    if offset + n > length:
        return NOT_FOUND
    f.seek(offset)
    data = f.read(n)
    return offset if hashlib.sha256(data).digest() == target.digest_uncompressed(i) else NOT_FOUND
