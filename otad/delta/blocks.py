"""Reading a source (a slot, an image file) in bounded blocks, and cut into chunks.

Owns the read loop every delta module shares: at most `length` bytes, one block in memory,
a short source or a read error as one SourceIndexError naming the byte reached. Where chunks
end is a chunker's (otad.delta.chunker); what is done with them is the caller's.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator, List, Optional, Protocol

from otad.errors import SourceIndexError

READ_BYTES = 1 << 20


class Chunker(Protocol):
    """Says where chunks end: `update` returns the lengths of those that ended in `data`."""

    def update(self, data: bytes) -> List[int]: ...

    def finish(self) -> Optional[int]: ...


def read_blocks(f: BinaryIO, length: int, name: str, block_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """`f`'s next `length` bytes in blocks of at most `block_bytes`."""
    done = 0
    while done < length:
        try:
            block = f.read(min(block_bytes, length - done))
        except OSError as exc:
            raise SourceIndexError(f"read error at byte {done}: {exc.strerror or exc}", name) from exc
        if not block:
            raise SourceIndexError(f"ends at byte {done}, expected {length}", name)
        done += len(block)
        yield block


def read_chunks(f: BinaryIO, length: int, chunker: Chunker, name: str) -> Iterator[bytes]:
    """`f`'s next `length` bytes as the chunks `chunker` cuts (each held whole: <= its max)."""
    pending = bytearray()
    for block in read_blocks(f, length, name):
        pos = 0
        for n in chunker.update(block):
            take = n - len(pending)
            pending += block[pos:pos + take]
            pos += take
            yield bytes(pending)
            pending = bytearray()
        pending += block[pos:]
    if chunker.finish():
        yield bytes(pending)
