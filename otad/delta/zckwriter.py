"""Writing .zck files in pure Python: the chunks of an image, each its own zstd frame, behind a header.

Owns a build-host tool: cut an image with a chunker (libzck's buzhash for the `compatible`
profile, fixed 4 KiB-aligned chunks for `fine`), compress every chunk as libzck does (zstd
level 9, strategy btopt, content size in the frame), and write header + body, the body staged
in a temp file beside the output so memory stays one chunk. The result is what `zck -u -h
sha256` would write for those chunk ends (compressed bytes can differ only where the zstd
library version does). Where libzck is installed, otad.delta.libzck can write the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, List

import zstandard

from otad.delta import zck
from otad.durable import replacing
from otad.delta.blocks import READ_BYTES, Chunker, read_chunks
from otad.delta.chunker import BuzhashChunker, FixedChunker

LEVEL = 9  # libzck's default; with btopt "the only way to make the compression deterministic"
FINE_CHUNK_BYTES = 16 << 10


@dataclass(frozen=True)
class Written:
    """What was written: the header's length and digest, the file's length, the chunk count."""

    header_length: int
    header_sha256: str
    file_length: int
    chunks: int


def chunker_for(profile: str, chunk_bytes: int = FINE_CHUNK_BYTES) -> Chunker:
    if profile == "compatible":
        return BuzhashChunker()
    if profile == "fine":
        return FixedChunker(chunk_bytes)
    raise ValueError(f"profile: expected 'compatible' or 'fine', got {profile!r}")


def write_zck(src: BinaryIO, length: int, out_path: str, chunker: Chunker, *, name: str = "image") -> Written:
    """Write the .zck of `src`'s first `length` bytes to `out_path` (replaced atomically)."""
    params = zstandard.ZstdCompressionParameters(compression_level=LEVEL, strategy=zstandard.STRATEGY_BTOPT)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    directory = os.path.dirname(os.path.abspath(out_path))
    entries: List[zck.ChunkEntry] = []
    with tempfile.TemporaryFile(dir=directory) as body:
        for data in read_chunks(src, length, chunker, name):
            entries.append(_store(cctx, data, body))
        header = zck.build_header(entries)
        with replacing(out_path) as out:
            out.write(header)
            body.seek(0)
            shutil.copyfileobj(body, out, READ_BYTES)
            size = out.tell()
    return Written(len(header), hashlib.sha256(header).hexdigest(), size, len(entries))


def _store(cctx: zstandard.ZstdCompressor, data: bytes, body: BinaryIO) -> zck.ChunkEntry:
    frame = cctx.compress(data)
    body.write(frame)
    return zck.ChunkEntry(hashlib.sha256(frame).digest(), hashlib.sha256(data).digest(), len(frame), len(data))
