"""The plan of a delta install: which target chunks the source gives, which are fetched, in which requests.

Pure: a target chunk index and a SourceMatch in, a Plan out. Requests are cut the way
SWUpdate's delta handler cuts them (zchunk_range.c: adjacent missing chunks merged, a request
closed when its `max-ranges`-th range starts), so both fetch the same byte ranges; `gap`
optionally fetches small present runs too, for fewer ranges. Fetching and assembling are
otad.delta.fetch's and the installer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from otad.delta import zck
from otad.delta.srcindex import NOT_FOUND, SourceMatch


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of the .zck file: target chunks first..last, all fetched."""

    start: int
    end: int
    first: int
    last: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def spec(self) -> str:
        """The range as a Range header writes it: `start-last` (inclusive)."""
        return f"{self.start}-{self.end - 1}"


@dataclass(frozen=True, eq=False)
class Plan:
    """Per target chunk: its source offset, or NOT_FOUND (fetch it); `present` marks (non-zero
    byte) the chunks the target already holds in place: neither read, fetched nor written."""

    target: zck.ChunkIndex
    match: SourceMatch
    present: bytes = b""  # b"": none known

    def __post_init__(self) -> None:
        if len(self.match) != len(self.target):
            raise ValueError(f"{len(self.match)} matches for {len(self.target)} chunks")
        if self.present and len(self.present) != len(self.target):
            raise ValueError(f"{len(self.present)} presence marks for {len(self.target)} chunks")

    def in_target(self, i: int) -> bool:
        return bool(self.present) and bool(self.present[i])

    def fetched(self) -> List[int]:
        return [i for i, o in enumerate(self.match.offsets) if o == NOT_FOUND and not self.in_target(i)]

    @property
    def reused_bytes(self) -> int:
        """Uncompressed bytes taken from the source (SWUpdate: "Total bytes to be reused")."""
        return sum(self.target.lengths[i] for i, o in enumerate(self.match.offsets)
                   if o != NOT_FOUND and not self.in_target(i))

    @property
    def present_bytes(self) -> int:
        """Uncompressed bytes the target holds already at their place (not written again)."""
        return sum(n for i, n in enumerate(self.target.lengths) if self.in_target(i))

    @property
    def fetch_bytes(self) -> int:
        """Compressed bytes to fetch (SWUpdate: "Total bytes to be downloaded")."""
        return sum(self.target.comp_lengths[i] for i in self.fetched())

    def ranges(self, gap: int = 0) -> List[ByteRange]:
        """The fetched chunks as ranges: adjacent ones merged, and runs separated by at most
        `gap` bytes of present chunks merged too (those bytes are fetched as well)."""
        out: List[ByteRange] = []
        for i in self.fetched():
            start, end = self.target.starts[i], self.target.starts[i] + self.target.comp_lengths[i]
            if out and start - out[-1].end <= gap:
                out[-1] = ByteRange(out[-1].start, end, out[-1].first, i)
            else:
                out.append(ByteRange(start, end, i, i))
        return out

    def requests(self, max_ranges: int, gap: int = 0) -> List[Tuple[ByteRange, ...]]:
        """The ranges cut into requests of at most `max_ranges` ranges, as SWUpdate cuts them:
        a request ends as soon as its `max_ranges`-th range has its first chunk."""
        if max_ranges < 1:
            raise ValueError(f"max_ranges: expected >= 1, got {max_ranges}")
        requests: List[Tuple[ByteRange, ...]] = []
        current: List[ByteRange] = []
        for i in self.fetched():
            start, end = self.target.starts[i], self.target.starts[i] + self.target.comp_lengths[i]
            if current and start - current[-1].end <= gap:
                current[-1] = ByteRange(current[-1].start, end, current[-1].first, i)
                continue
            current.append(ByteRange(start, end, i, i))
            if len(current) >= max_ranges:
                requests.append(tuple(current))
                current = []
        if current:
            requests.append(tuple(current))
        return requests

    def summary(self, requests: Sequence[Tuple[ByteRange, ...]]) -> str:
        """One line for the log and the server: what comes from where."""
        return (f"reuse {_mb(self.reused_bytes)}, fetch {_mb(sum(r.length for q in requests for r in q))} "
                f"in {len(requests)} request{'s' if len(requests) != 1 else ''}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
