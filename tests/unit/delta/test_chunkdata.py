"""Chunk data: decoded only after its signed digest matched; a bad chunk is one error naming it."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import zstandard

from otad.delta import zck
from otad.delta.chunkdata import ChunkDecoder
from otad.errors import ChunkDataError
from tests.delta_fixtures import DeltaFixture


def test_every_chunk_of_the_fixture_decodes_to_the_image(small: DeltaFixture) -> None:
    data, image = small.v2_zck.read_bytes(), small.v2.read_bytes()
    header = zck.parse_header(small.header_bytes)
    decoder = ChunkDecoder(header)
    for chunk in header.index:
        assert decoder.decode(chunk, data[chunk.start:chunk.end]) == image[chunk.offset:chunk.offset + chunk.length]


@pytest.fixture
def one(small: DeltaFixture):  # type: ignore[no-untyped-def]
    header = zck.parse_header(small.header_bytes)
    chunk = max(header.index, key=lambda c: c.comp_length)
    return ChunkDecoder(header), chunk, small.v2_zck.read_bytes()[chunk.start:chunk.end]


@pytest.mark.parametrize("how,what", [
    ("short", "bytes, the index says"),
    ("long", "bytes, the index says"),
    ("flipped", "checksum of the stored bytes is"),
])
def test_tampered_stored_bytes_fail_before_decoding(one, how: str, what: str) -> None:  # type: ignore[no-untyped-def]
    decoder, chunk, stored = one
    bad = {"short": stored[:-1], "long": stored + b"\0", "flipped": stored[:-5] + bytes([stored[-5] ^ 1]) + stored[-4:]}
    with pytest.raises(ChunkDataError, match=f"chunk {chunk.number}: .*{what}") as info:
        decoder.decode(chunk, bad[how])
    assert info.value.chunk == chunk.number and info.value.exit_code == 4


def signed(frame: bytes, length: int, udigest: bytes = b"") -> zck.ZckHeader:
    """A header that signs `frame` as chunk 0: the checks after the digest are reached."""
    entry = zck.ChunkEntry(hashlib.sha256(frame).digest(), udigest or bytes(32), len(frame), length)
    return zck.parse_header(zck.build_header([entry]))


def test_a_frame_declaring_another_size_is_refused_unread() -> None:
    frame = zstandard.ZstdCompressor().compress(bytes(5000))
    header = signed(frame, 4000)
    with pytest.raises(ChunkDataError, match="the zstd frame declares 5000 bytes, the index says 4000"):
        ChunkDecoder(header).decode(header.index[0], frame)


def test_a_frame_without_its_size_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(5000))
    header = signed(frame, 5000)
    with pytest.raises(ChunkDataError, match="declares no size"):
        ChunkDecoder(header).decode(header.index[0], frame)


def test_bytes_after_the_frame_and_a_cut_frame_are_refused() -> None:
    frame = zstandard.ZstdCompressor().compress(b"x" * 5000)
    header = signed(frame + b"\0\0", 5000, hashlib.sha256(b"x" * 5000).digest())
    with pytest.raises(ChunkDataError, match="2 bytes after the zstd frame"):
        ChunkDecoder(header).decode(header.index[0], frame + b"\0\0")
    header = signed(frame[:-3], 5000)
    with pytest.raises(ChunkDataError, match="cut short|zstd:"):
        ChunkDecoder(header).decode(header.index[0], frame[:-3])


def test_decoded_bytes_are_checked_against_the_uncompressed_digest() -> None:
    frame = zstandard.ZstdCompressor().compress(b"y" * 5000)
    header = signed(frame, 5000, hashlib.sha256(b"z" * 5000).digest())
    with pytest.raises(ChunkDataError, match="checksum of the decoded bytes"):
        ChunkDecoder(header).decode(header.index[0], frame)


def test_chunks_with_a_dictionary_decode_with_it(tmp_path: Path) -> None:
    text = b"".join(b"line %d of some text with common words\n" % i for i in range(20000))
    (tmp_path / "in").write_bytes(text)
    (tmp_path / "dict").write_bytes(text[:4000])
    subprocess.run(["zck", "-u", "-h", "sha256", "-D", str(tmp_path / "dict"), "-o", str(tmp_path / "d.zck"),
                    str(tmp_path / "in")], check=True)
    data = (tmp_path / "d.zck").read_bytes()
    header = zck.parse_header(data, exact=False)
    dict_chunk = header.index.dict_chunk
    assert dict_chunk is not None
    # libzck 1.2.3 never feeds the dict to the uncompressed hash: its digest is SHA-256 of nothing
    assert dict_chunk.digest_uncompressed == hashlib.sha256(b"").digest()
    with pytest.raises(ChunkDataError, match="dict: the header has a dict chunk"):
        ChunkDecoder(header)
    decoder = ChunkDecoder(header, data[dict_chunk.start:dict_chunk.end])
    out = b"".join(decoder.decode(c, data[c.start:c.end]) for c in header.index)
    assert out == text


def test_an_uncompressed_zck_is_checked_and_passed_through(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(bytes(range(256)) * 1000)
    subprocess.run(["zck", "-u", "-h", "sha256", "--compression-format=none", "-o", str(tmp_path / "n.zck"),
                    str(tmp_path / "in")], check=True)
    data = (tmp_path / "n.zck").read_bytes()
    header = zck.parse_header(data, exact=False)
    decoder = ChunkDecoder(header)
    assert b"".join(decoder.decode(c, data[c.start:c.end]) for c in header.index) == bytes(range(256)) * 1000
