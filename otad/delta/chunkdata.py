"""Chunk data: check one chunk's stored bytes against its signed digests and decode them.

Owns the order of checks that makes fetched bytes safe to write: length, SHA-256 of the stored
(compressed) bytes, one zstd frame decoded with output capped at the chunk's length (and the
window capped), length again, SHA-256 of the decoded bytes. A zstd dictionary (the index's
dict chunk) is decoded the same way first. Where the bytes come from is the fetcher's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Optional

import zstandard

from otad.delta import zck
from otad.errors import ChunkDataError

MIN_WINDOW = 1 << 10


class ChunkDecoder:
    """Decodes the chunks of one header; `decode` raises ChunkDataError on any mismatch."""

    def __init__(self, header: zck.ZckHeader, dict_data: Optional[bytes] = None) -> None:
        self.header = header
        self._name = {zck.HASH_SHA1: "sha1", zck.HASH_SHA256: "sha256", zck.HASH_SHA512: "sha512",
                      zck.HASH_SHA512_128: "sha512"}[header.index.hash_type]
        self._size = header.index.digest_size
        self._dict: Optional[zstandard.ZstdCompressionDict] = None
        dict_chunk = header.index.dict_chunk
        if dict_chunk is not None:
            if dict_data is None:
                raise ChunkDataError("the header has a dict chunk: its bytes are needed first", -1, "dict")
            # libzck writes SHA-256 of nothing as the dict's uncompressed digest (the format calls
            # that field useless): only the stored bytes' digest is checked for the dict.
            unchecked = zck.Chunk(dict_chunk.number, dict_chunk.start, dict_chunk.comp_length, 0,
                                  dict_chunk.length, dict_chunk.digest, b"")
            self._dict = zstandard.ZstdCompressionDict(self._decode(unchecked, dict_data, None, "dict"))

    def decode(self, chunk: zck.Chunk, data: bytes) -> bytes:
        """The uncompressed bytes of `chunk`, from its stored bytes `data`."""
        return self._decode(chunk, data, self._dict, f"chunk {chunk.number}")

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self._name, data).digest()[:self._size]

    def _decode(self, chunk: zck.Chunk, data: bytes, zdict: Optional[zstandard.ZstdCompressionDict],
                where: str) -> bytes:
        if len(data) != chunk.comp_length:
            raise ChunkDataError(f"{len(data)} bytes, the index says {chunk.comp_length}", chunk.number, where)
        if not hmac.compare_digest(self.digest(data), chunk.digest):
            raise ChunkDataError(f"checksum of the stored bytes is {self.digest(data).hex()}, the signed "
                                 f"header says {chunk.digest.hex()}", chunk.number, where)
        out = data if self.header.comp_type == zck.COMP_NONE else self._unzstd(chunk, data, zdict, where)
        if chunk.digest_uncompressed and not hmac.compare_digest(self.digest(out), chunk.digest_uncompressed):
            raise ChunkDataError(f"checksum of the decoded bytes is {self.digest(out).hex()}, the signed header "
                                 f"says {chunk.digest_uncompressed.hex()}", chunk.number, where)
        return out

    def _unzstd(self, chunk: zck.Chunk, data: bytes, zdict: Optional[zstandard.ZstdCompressionDict],
                where: str) -> bytes:
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise ChunkDataError(f"not a zstd frame: {exc}", chunk.number, where) from exc
        if declared != chunk.length:  # libzck's frames always declare it: this bounds the output
            said = "no size" if declared == -1 else f"{declared} bytes"
            raise ChunkDataError(f"the zstd frame declares {said}, the index says {chunk.length}",
                                 chunk.number, where)
        window = max(MIN_WINDOW, 1 << max(chunk.length - 1, 1).bit_length())
        dobj = zstandard.ZstdDecompressor(dict_data=zdict, max_window_size=window).decompressobj()
        try:
            out = dobj.decompress(data)
        except zstandard.ZstdError as exc:
            raise ChunkDataError(f"zstd: {exc}", chunk.number, where) from exc
        if not dobj.eof:
            raise ChunkDataError("the zstd frame is cut short", chunk.number, where)
        if dobj.unused_data:
            raise ChunkDataError(f"{len(dobj.unused_data)} bytes after the zstd frame", chunk.number, where)
        if len(out) != chunk.length:
            raise ChunkDataError(f"decodes to {len(out)} bytes, the index says {chunk.length}", chunk.number, where)
        return out
