"""The byte path: decompression is bounded, hashes are over stored bytes, errors name the image."""

from __future__ import annotations

import gzip
import io
import os
import resource
import zlib
from typing import List, Optional

import pytest
import zstandard

from otad.errors import DecompressError, ImageHashMismatch, ImageTooLarge
from otad.install.pipeline import Decoding, GzipReader, ZstdReader, stream_artifact
from tests.bundles import gz, sha256, zst


class ListSink:
    def __init__(self, capacity: Optional[int] = None) -> None:
        self.capacity = capacity
        self.chunks: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Trickle:
    """A source that returns at most `step` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._f = io.BytesIO(data)
        self._step = step

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._step))


PAYLOAD = os.urandom(100_000) + bytes(300_000) + b"tail"


@pytest.mark.parametrize("compressed,encode", [(None, lambda d: d), ("zlib", gz), ("zstd", zst)])
def test_stream_artifact_writes_decoded_bytes_and_hashes_stored_bytes(compressed, encode) -> None:
    stored = encode(PAYLOAD)
    sink = ListSink()
    result = stream_artifact(io.BytesIO(stored), "img", sha256(stored), Decoding(compressed), sink, chunk=4096)
    assert sink.data == PAYLOAD
    assert result.sha256 == sha256(stored)
    assert (result.stored_bytes, result.written_bytes) == (len(stored), len(PAYLOAD))
    assert max(len(c) for c in sink.chunks) <= 4096


@pytest.mark.parametrize("compressed,encode", [("zlib", gz), ("zstd", zst)])
def test_stream_artifact_handles_a_source_that_trickles(compressed, encode) -> None:
    stored = encode(PAYLOAD)
    sink = ListSink()
    stream_artifact(Trickle(stored, 5), "img", sha256(stored), Decoding(compressed), sink, chunk=1000)
    assert sink.data == PAYLOAD


def test_hash_mismatch_names_image_and_both_hashes() -> None:
    with pytest.raises(ImageHashMismatch, match=r"image 'rootfs.img': sha256 mismatch: sw-description says 0{64}"):
        stream_artifact(io.BytesIO(b"data"), "rootfs.img", "0" * 64, Decoding(), ListSink())


def test_gzip_bomb_stops_at_target_capacity_without_inflating_everything() -> None:
    bomb = gz(bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB
    sink = ListSink(capacity=1 << 20)
    with pytest.raises(ImageTooLarge, match=r"image 'bomb': decoded image exceeds its target's 1048576 bytes"):
        stream_artifact(io.BytesIO(bomb), "bomb", None, Decoding("zlib"), sink, chunk=64 << 10)
    assert len(sink.data) <= 1 << 20


def test_zstd_bomb_output_is_bounded_per_read() -> None:
    bomb = zst(bytes(256 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader = ZstdReader(io.BytesIO(bomb), "bomb", max_window=8 << 20, chunk=64 << 10)
    total = 0
    while True:
        data = reader.read(1 << 20)
        assert len(data) <= 1 << 20
        if not data:
            break
        total += len(data)
    assert total == 256 << 20
    # peak RSS grew by far less than the 256 MiB the frame expands to (ru_maxrss is KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10


def test_zstd_frame_needing_a_larger_window_than_allowed_is_refused_clearly() -> None:
    data = os.urandom(1 << 20) * 3
    stored = zst(data, compression_params=zstandard.ZstdCompressionParameters.from_level(19, window_log=22))
    with pytest.raises(DecompressError, match=r"window larger than the configured 1 MiB"):
        stream_artifact(io.BytesIO(stored), "big", None, Decoding("zstd", zstd_max_window=1 << 20), ListSink())


def test_truncated_gzip_is_an_error_not_a_short_image() -> None:
    stored = gz(PAYLOAD)[:-20]
    with pytest.raises(DecompressError, match=r"image 'img': gzip stream ends before its end marker"):
        stream_artifact(io.BytesIO(stored), "img", None, Decoding("zlib"), ListSink())


def test_truncated_zstd_is_an_error_not_a_short_image() -> None:
    stored = zst(PAYLOAD)[:-10]
    with pytest.raises(DecompressError, match=r"image 'img': zstd stream ends inside a block \(truncated\)"):
        stream_artifact(io.BytesIO(stored), "img", None, Decoding("zstd"), ListSink())


def frames(*parts: bytes, checksum: bool = True) -> bytes:
    return b"".join(zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(p) for p in parts)


@pytest.mark.parametrize("checksum", [True, False])
def test_zstd_cut_anywhere_is_refused_never_a_short_image(checksum) -> None:
    stored = frames(PAYLOAD[:150_000], PAYLOAD[150_000:], checksum=checksum)
    for cut in sorted({1, 3, 4, 5, 6, 8, 20, len(stored) // 2, len(stored) - 4, len(stored) - 1,
                       *range(0, len(stored), 997)} - {0}):
        with pytest.raises(DecompressError, match=r"image 'img': .*(truncated|not a zstd|after the last)"):
            stream_artifact(io.BytesIO(stored[:cut]), "img", None, Decoding("zstd"), ListSink())


def test_zstd_frames_and_skippable_frames_decode_as_one_image() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"notes"
    parts = [PAYLOAD[:1000], PAYLOAD[1000:300_000], b"", PAYLOAD[300_000:]]
    stored = frames(parts[0]) + skippable + frames(*parts[1:])
    sink = ListSink()
    stream_artifact(io.BytesIO(stored), "img", sha256(stored), Decoding("zstd"), sink)
    assert sink.data == PAYLOAD


def test_zstd_frame_boundaries_are_seen_exactly_between_frames() -> None:
    parts = [PAYLOAD[:200_000], PAYLOAD[200_000:]]
    stored = frames(*parts)
    first_end = len(frames(parts[0]))
    source = io.BytesIO(stored)
    reader = ZstdReader(source, "img", max_window=8 << 20, chunk=64 << 10)
    out = b""
    seen = []
    while True:
        if reader.at_frame_boundary():
            seen.append((source.tell(), len(out)))
        data = reader.read(64 << 10)
        if not data:
            break
        out += data
    assert out == PAYLOAD
    assert seen == [(first_end, 200_000), (len(stored), len(PAYLOAD))]


def test_zstd_block_header_with_the_reserved_type_is_refused() -> None:
    header = frames(b"x" * 100)[:6]  # magic, descriptor, content size
    with pytest.raises(DecompressError, match="block type 3"):
        stream_artifact(io.BytesIO(header + bytes([0b111, 0, 0])), "img", None, Decoding("zstd"), ListSink())


@pytest.mark.parametrize("compressed,encode", [("zlib", gz), ("zstd", zst)])
def test_trailing_garbage_after_the_compressed_stream_is_refused(compressed, encode) -> None:
    with pytest.raises(DecompressError, match=r"image 'img': "):
        stream_artifact(io.BytesIO(encode(b"abc") + b"junk"), "img", None, Decoding(compressed), ListSink())


@pytest.mark.parametrize("compressed", ["zlib", "zstd"])
def test_data_that_is_not_compressed_is_refused(compressed) -> None:
    with pytest.raises(DecompressError, match=r"image 'img': (corrupt gzip|not a zstd)"):
        stream_artifact(io.BytesIO(b"plain text, not compressed" * 10), "img", None, Decoding(compressed), ListSink())


def test_zlib_header_stream_is_refused_like_swupdate_which_expects_gzip() -> None:
    with pytest.raises(DecompressError, match="corrupt gzip stream"):
        stream_artifact(io.BytesIO(zlib.compress(b"abc")), "img", None, Decoding("zlib"), ListSink())


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(DecompressError, match=r"unknown compression 'xz'"):
        stream_artifact(io.BytesIO(b""), "img", None, Decoding("xz"), ListSink())


def test_declared_decompressed_size_is_checked() -> None:
    with pytest.raises(DecompressError, match=r"decoded 3 bytes, sw-description declares 4"):
        stream_artifact(io.BytesIO(gz(b"abc")), "img", None, Decoding("zlib"), ListSink(), expected_size=4)


def test_gzip_reader_never_returns_more_than_asked() -> None:
    reader = GzipReader(io.BytesIO(gzip.compress(bytes(10 << 20))), "z", chunk=1 << 16)
    sizes = []
    while True:
        data = reader.read(12345)
        if not data:
            break
        sizes.append(len(data))
    assert max(sizes) <= 12345 and sum(sizes) == 10 << 20
