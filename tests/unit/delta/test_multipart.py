"""multipart/byteranges: the bodies hawkBit (both versions) and Starlette write, read piece by piece.

The bodies come from tests/range_server.py's writers, which copy FileStreamingUtil.java and
Starlette's FileResponse byte for byte; Starlette's own generator is used too where it is
importable (goosebit's venv), and the real goosebit is read in test_fetch_goosebit.py.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
from typing import Callable, List, Optional, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from otad.delta.multipart import OLD_HAWKBIT, RFC, MultipartReader, boundary_of, parse_content_range
from otad.errors import MalformedMultipart
from tests.goosebit import require_goosebit
from tests.range_server import DIALECTS, HAWKBIT_BOUNDARY, multipart_body

DATA = os.urandom(50_000)
ZSTD = b"\x28\xb5\x2f\xfd"


def reader_over(body: bytes, step: int = 4096) -> Callable[[], bytes]:
    f = io.BytesIO(body)
    return lambda: f.read(step)


def read_all(body: bytes, content_type: str, step: int = 4096, total: Optional[int] = len(DATA),
             prefix: bytes = b"") -> Tuple[List[Tuple[int, bytes]], MultipartReader]:
    boundary = boundary_of(content_type)
    assert boundary is not None
    reader = MultipartReader(reader_over(body, step), boundary, total=total, data_prefix=prefix)
    return list(reader.pieces()), reader


def joined(pieces: List[Tuple[int, bytes]]) -> List[Tuple[int, bytes]]:
    """Consecutive pieces merged: (offset, bytes) per part."""
    out: List[Tuple[int, bytes]] = []
    for offset, data in pieces:
        if out and out[-1][0] + len(out[-1][1]) == offset:
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            out.append((offset, data))
    return out


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_each_dialect_is_read_exactly_at_any_read_size(dialect: str, step: int) -> None:
    ranges = [(0, 10), (100, 5000), (20_000, 20_001), (49_000, 50_000)]
    content_type, body = multipart_body(DATA, ranges, dialect)
    pieces, reader = read_all(body, content_type, step)
    assert joined(pieces) == [(a, DATA[a:b]) for a, b in ranges]
    assert reader.dialects == [OLD_HAWKBIT if dialect == "hawkbit-old" else RFC] * 4
    assert reader.body_bytes == len(body)


STARLETTE_BODY = """
import sys
from starlette.responses import FileResponse
data = sys.stdin.buffer.read()
ranges = [(5, 10), (300, 4000), (4000, 4100)]
length, header = FileResponse.generate_multipart(None, ranges, "0123456789abcdef0123456789", len(data),
                                                 "application/octet-stream")
body = b"".join(header(a, b) + data[a:b] + b"\\r\\n" for a, b in ranges) + b"--0123456789abcdef0123456789--"
assert len(body) == length
sys.stdout.buffer.write(body)
"""


def test_starlettes_own_generator_is_read() -> None:
    """Starlette 1.10 (goosebit's) writes the body; its claimed length is checked there."""
    python = require_goosebit()
    body = subprocess.run([str(python), "-c", STARLETTE_BODY], input=DATA, capture_output=True, check=True).stdout
    pieces, reader = read_all(body, "multipart/byteranges; boundary=0123456789abcdef0123456789")
    assert joined(pieces) == [(5, DATA[5:10]), (300, DATA[300:4100])] and reader.body_bytes == len(body)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_data_holding_the_boundary_and_header_lines_is_read_by_length(dialect: str) -> None:
    boundary = HAWKBIT_BOUNDARY if dialect != "starlette" else "0123456789abcdef0123456789"
    nasty = b"x" + (b"\r\n--" + boundary.encode() + b"\r\nContent-Range: bytes 0-1/2\r\n\r\n") * 50
    data = nasty + DATA[:1000]
    content_type, body = multipart_body(data, [(0, 400), (500, len(data))], dialect, boundary)
    pieces, _ = read_all(body, content_type, total=len(data))
    assert joined(pieces) == [(0, data[:400]), (500, data[500:])]


def test_old_hawkbit_data_that_starts_like_a_blank_line_needs_the_prefix_hint() -> None:
    data = b"\r\n" + ZSTD + DATA[:3000]
    content_type, body = multipart_body(data, [(0, 100), (200, 300)], "hawkbit-old")
    with pytest.raises(MalformedMultipart):
        read_all(body, content_type, total=len(data))  # read as RFC: two bytes off, the delimiter check fails
    data = ZSTD + b"\r\n" + DATA[:3000]
    content_type, body = multipart_body(data, [(0, 100), (200, 300)], "hawkbit-old")
    body = body.replace(b"/3006\r\n" + data[200:204], b"/3006\r\n" + ZSTD, 1)
    data = data[:200] + ZSTD + data[204:]
    pieces, reader = read_all(body, content_type, total=len(data), prefix=ZSTD)
    assert joined(pieces) == [(0, data[:100]), (200, data[200:300])] and reader.dialects == [OLD_HAWKBIT] * 2


def test_a_preamble_and_an_epilogue_are_skipped() -> None:
    content_type, body = multipart_body(DATA, [(0, 10), (20, 30)], "starlette")
    pieces, _ = read_all(b"this is the preamble\r\n" + body + b"\r\nepilogue\r\n", content_type)
    assert joined(pieces) == [(0, DATA[:10]), (20, DATA[20:30])]


def test_a_cut_body_is_malformed_and_ended_early() -> None:
    content_type, body = multipart_body(DATA, [(0, 1000), (2000, 3000)], "hawkbit")
    boundary = boundary_of(content_type) or b""
    reader = MultipartReader(reader_over(body[:1500]), boundary, total=len(DATA))
    got = []
    with pytest.raises(MalformedMultipart, match="ends inside the part for bytes 2000-2999"):
        for piece in reader.pieces():
            got.append(piece)
    assert reader.ended_early and joined(got)[0] == (0, DATA[:1000])


def _garble(body: bytes, old: bytes, new: bytes) -> bytes:
    assert old in body
    return body.replace(old, new, 1)


@pytest.mark.parametrize("name,change,what", [
    ("no boundary at all", lambda b: b"garbage\r\n" * 200, "no boundary line"),
    ("bad Content-Range", lambda b: _garble(b, b"bytes 0-9/", b"bytes 9-0/"), "Content-Range: expected"),
    ("another file's size", lambda b: _garble(b, b"/50000", b"/50001"), "the file has 50000 bytes"),
    ("no CRLF after the data", lambda b: _garble(b, DATA[:10] + b"\r\n", DATA[:10] + b"XX"), "after the part data"),
    ("no Content-Range", lambda b: _garble(b, b"Content-Range", b"Content-Rangy"), "without Content-Range"),
    ("a binary header line", lambda b: _garble(b, b"Content-Type: application", b"Content-Type\x01 application"),
     "expected a part header line"),
    ("a header line too long", lambda b: _garble(b, b"Content-Type: a", b"Content-Type: " + b"a" * 2000),
     "cut short or longer than 1024"),
])
def test_malformed_bodies_are_one_error_with_the_offset(name: str, change: Callable[[bytes], bytes],
                                                        what: str) -> None:
    content_type, body = multipart_body(DATA, [(0, 10), (20, 30)], "starlette")
    bad = change(body)
    with pytest.raises(MalformedMultipart, match=what) as info:
        read_all(bad, content_type)
    assert 0 <= info.value.offset <= len(bad)


def test_too_many_header_lines() -> None:
    content_type, body = multipart_body(DATA, [(0, 10), (20, 30)], "starlette")
    bad = body.replace(b"Content-Type:", b"X-A: 1\r\n" * 20 + b"Content-Type:", 1)
    with pytest.raises(MalformedMultipart, match="more than 16 part header lines"):
        read_all(bad, content_type)


def test_boundaries_and_content_ranges_are_parsed_strictly() -> None:
    assert boundary_of("multipart/byteranges; boundary=3d6b6a416f9b5") == b"3d6b6a416f9b5"
    assert boundary_of('Multipart/Byteranges; boundary="a b c"') == b"a b c"
    assert boundary_of("application/octet-stream") is None
    assert boundary_of("multipart/byteranges") is None
    assert parse_content_range("bytes 0-9/10") is not None
    assert parse_content_range("bytes 5-9/*").total is None  # type: ignore[union-attr]
    for bad in ("bytes 9-5/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1", "bytes */10"):
        assert parse_content_range(bad) is None


@settings(max_examples=150, deadline=None)
@example(spans=[(0, 99), (0, 663)], dialect="hawkbit", step=162)  # cut inside the blank line after a header
@given(st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 3000)), min_size=1, max_size=12),
       st.sampled_from(DIALECTS), st.integers(1, 5000))
def test_any_ranges_in_any_dialect_come_back_exactly(spans: List[Tuple[int, int]], dialect: str, step: int) -> None:
    ranges, at = [], 0
    for start, length in sorted(spans):
        start = max(start, at)
        end = min(start + length, len(DATA))
        if start < end:
            ranges.append((start, end))
            at = end + 1  # disjoint, as the planner asks for them
    if not ranges:
        return
    content_type, body = multipart_body(DATA, ranges, dialect)
    pieces, _ = read_all(body, content_type, step)
    assert joined(pieces) == joined([(a, DATA[a:b]) for a, b in ranges])
    rng = random.Random(step)
    cut = rng.randrange(len(body))
    reader = MultipartReader(reader_over(body[:cut], step), boundary_of(content_type) or b"", total=len(DATA))
    try:
        for offset, data in reader.pieces():
            assert DATA[offset:offset + len(data)] == data
    except MalformedMultipart:
        pass
