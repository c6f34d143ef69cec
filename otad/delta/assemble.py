"""Assembling a delta image in target order, every chunk checked before it is handed on.

Owns the decision per chunk at the moment it is needed: one the target already holds in place
(found by `find_present` before the first write) is skipped; one the source holds is read there
and hashed again, and fetched after all if its bytes changed since the plan (never an abort);
one that is fetched comes from a `ChunkFeed` and is checked and decoded by the ChunkDecoder
(tampered data fails closed). Feeds: `RangeFeed` (HTTP Range, through a RangeFetcher) and
`StreamFeed` (the .zck body read in order, e.g. from the bundle being streamed). Writing the
chunks, journalling and where the files are open are the caller's (otad.install.delta).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Optional, Protocol, Sequence, Tuple

from otad.delta import zck
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.fetch import RangeFetcher
from otad.delta.plan import ByteRange, Plan
from otad.delta.srcindex import NOT_FOUND
from otad.errors import RangeFetchError

log = logging.getLogger(__name__)

TARGET, SOURCE, FETCHED, REFETCHED = "target", "source", "fetched", "refetched"
MAX_PENDING_BYTES = 8 << 20  # chunks that arrive before their turn, held until it comes
SKIP_BYTES = 1 << 20


class ChunkFeed(Protocol):
    """The stored (compressed) bytes of chunks that are fetched."""

    def get(self, number: int) -> bytes:
        """A planned chunk; called in ascending order."""

    def again(self, number: int) -> bytes:
        """A chunk the plan took from the source, whose source bytes turned out wrong."""


@dataclass(frozen=True)
class Placed:
    """Chunk `number` at `offset` of the image: its bytes, or None when the target holds them."""

    number: int
    offset: int
    length: int
    data: Optional[bytes]
    origin: str


@dataclass
class AssemblyStats:
    """Chunks and uncompressed bytes by where they came from."""

    chunks: Dict[str, int] = field(default_factory=lambda: {TARGET: 0, SOURCE: 0, FETCHED: 0, REFETCHED: 0})
    bytes: Dict[str, int] = field(default_factory=lambda: {TARGET: 0, SOURCE: 0, FETCHED: 0, REFETCHED: 0})

    def add(self, placed: Placed) -> None:
        self.chunks[placed.origin] += 1
        self.bytes[placed.origin] += placed.length


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def find_present(index: zck.ChunkIndex, candidates: Iterable[int], pread: Callable[[int, int], bytes],
                 on_bytes: Optional[Callable[[int], None]] = None) -> bytearray:
    """1 for each candidate chunk that `pread(length, offset)` of the target already returns:
    written by an earlier, interrupted install, or left in place by the version before."""
    present = bytearray(len(index))
    for i in candidates:
        n = index.lengths[i]
        data = pread(n, index.offsets[i])
        if len(data) == n and hmac.compare_digest(sha256(data), index.digest_uncompressed(i)):
            present[i] = 1
        if on_bytes is not None:
            on_bytes(n)
    return present


class Assembler:
    """Iterating gives every chunk of the image, in order, as a checked `Placed`."""

    def __init__(self, header: zck.ZckHeader, plan: Plan, source_pread: Callable[[int, int], bytes],
                 feed: ChunkFeed, *, start: int = 0, name: str = "delta image") -> None:
        self.header = header
        self.plan = plan
        self.stats = AssemblyStats()
        self._pread = source_pread
        self._feed = feed
        self._decoder = ChunkDecoder(header)
        self._start = start
        self._name = name

    def __iter__(self) -> Iterator[Placed]:
        index, offsets = self.header.index, self.plan.match.offsets
        for i in range(self._start, len(index)):
            if self.plan.in_target(i):
                placed = Placed(i, index.offsets[i], index.lengths[i], None, TARGET)
            elif offsets[i] != NOT_FOUND:
                placed = self._from_source(i, offsets[i])
            else:
                placed = Placed(i, index.offsets[i], index.lengths[i], self._decode(i, self._feed.get(i)), FETCHED)
            self.stats.add(placed)
            yield placed

    def _from_source(self, i: int, at: int) -> Placed:
        index = self.header.index
        n = index.lengths[i]
        try:
            data = self._pread(n, at)
        except OSError as exc:
            log.warning("%s: chunk %d: source read at %d failed (%s): fetching it", self._name, i, at, exc)
            data = b""
        if len(data) == n and hmac.compare_digest(sha256(data), index.digest_uncompressed(i)):
            return Placed(i, index.offsets[i], n, data, SOURCE)
        log.info("%s: chunk %d changed in the source since it was indexed (%d bytes at %d): fetching it",
                 self._name, i, n, at)
        return Placed(i, index.offsets[i], n, self._decode(i, self._feed.again(i)), REFETCHED)

    def _decode(self, i: int, stored: bytes) -> bytes:
        return self._decoder.decode(self.header.index[i], stored)


class RangeFeed:
    """Planned chunks through one RangeFetcher pass over `requests`; others one range each."""

    def __init__(self, fetcher: RangeFetcher, index: zck.ChunkIndex, requests: Sequence[Tuple[ByteRange, ...]],
                 shift: int = 0) -> None:
        self.fetcher = fetcher
        self._index = index
        self._shift = shift
        self._chunks = fetcher.fetch(index, requests, shift)
        self._pending: Dict[int, bytes] = {}
        self._pending_bytes = 0

    def get(self, number: int) -> bytes:
        if number in self._pending:
            data = self._pending.pop(number)
            self._pending_bytes -= len(data)
            return data
        for got, data in self._chunks:
            if got == number:
                return data
            self._pending[got] = data
            self._pending_bytes += len(data)
            if self._pending_bytes > MAX_PENDING_BYTES:
                raise RangeFetchError(f"chunks arrive out of order: more than {MAX_PENDING_BYTES} bytes came "
                                      f"before chunk {number}", self.fetcher.url)
        raise RangeFetchError(f"chunk {number} was planned but never arrived", self.fetcher.url)

    def again(self, number: int) -> bytes:
        start = self._index.starts[number]
        one = ByteRange(start, start + self._index.comp_lengths[number], number, number)
        for got, data in self.fetcher.fetch(self._index, [(one,)], self._shift):
            if got == number:
                return data
        raise RangeFetchError(f"chunk {number} was asked for but never arrived", self.fetcher.url)

    def close(self) -> None:
        self._chunks.close()  # type: ignore[attr-defined]  # a generator: its open response is closed


class StreamFeed:
    """Chunks taken in order from a stream that holds the .zck from byte `base` on (a body
    member of the bundle being read: base = the header's length). Nothing can be read twice:
    a chunk is taken when its turn comes, whether planned or not."""

    def __init__(self, read: Callable[[int], bytes], index: zck.ChunkIndex, base: int, name: str) -> None:
        self._read = read
        self._index = index
        self._pos = base
        self._name = name
        self.bytes_read = 0

    def get(self, number: int) -> bytes:
        start, n = self._index.starts[number], self._index.comp_lengths[number]
        if start < self._pos:
            raise RangeFetchError(f"chunk {number} at byte {start} was passed already (at {self._pos})", self._name)
        while self._pos < start:
            self._take(min(SKIP_BYTES, start - self._pos))
        return self._take(n)

    again = get

    def _take(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            data = self._read(min(left, SKIP_BYTES))
            if not data:
                raise RangeFetchError(f"the stream ends at byte {self._pos}, {left} bytes short", self._name)
            parts.append(data)
            left -= len(data)
            self._pos += len(data)
            self.bytes_read += len(data)
        return b"".join(parts)


def source_reader(fd: int) -> Callable[[int, int], bytes]:
    """pread on `fd` as (length, offset) -> bytes."""
    return lambda n, at: os.pread(fd, n, at)
