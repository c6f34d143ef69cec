"""multipart/byteranges bodies, read incrementally, in the two dialects chunk servers write.

RFC 2046/9110 (hawkBit >= 0.10, Starlette/goosebit, Apache, nginx): `--B CRLF`, part headers,
a blank line, the data, `CRLF --B`, ... `CRLF --B--`. hawkBit < 0.10 (FileStreamingUtil before
#2921): `CRLF --B CRLF Content-Range: ... CRLF` and the data straight after, no blank line.
The data length always comes from Content-Range, never from searching the boundary, so data
that contains the boundary is read correctly. Which dialect a part is in is decided from the
bytes after Content-Range (a blank line, another header line, or data: optionally the bytes
every part is known to start with, the zstd magic for zchunk chunks). Yields (file offset,
bytes) pieces; which chunks they belong to is the fetcher's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from otad.errors import MalformedMultipart

MAX_LINE = 1024  # a part header line; a boundary line
MAX_HEADERS = 16
MAX_PREAMBLE = 1024
MAX_EPILOGUE = 4096

_CONTENT_RANGE = re.compile(rb"bytes[ \t]+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)", re.I)
_HEADER = re.compile(rb"[!#-'*+.0-9A-Z^-z|~-]+:[ \t]*[\x20-\x7e\t]*")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([!#-\'*+.0-9A-Z^-z|~-]{1,70}))', re.I)

RFC, OLD_HAWKBIT = "rfc", "hawkbit<0.10"


def boundary_of(content_type: str) -> Optional[bytes]:
    """The boundary of a `multipart/byteranges` Content-Type, else None."""
    if not content_type.strip().lower().startswith("multipart/byteranges"):
        return None
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    return (match.group(1) or match.group(2)).encode("ascii")


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # exclusive
    total: Optional[int]


def parse_content_range(value: str) -> Optional[ContentRange]:
    """`bytes a-b/total` (total may be `*`) as [a, b+1); None when it is not that."""
    match = _CONTENT_RANGE.fullmatch(value.strip().encode("latin-1", "replace"))
    if match is None or int(match.group(1)) > int(match.group(2)):
        return None
    total = None if match.group(3) == b"*" else int(match.group(3))
    if total is not None and int(match.group(2)) >= total:
        return None
    return ContentRange(int(match.group(1)), int(match.group(2)) + 1, total)


class _Stream:
    """A buffer over read() (which returns b"" at the end); counts what it consumed. Taking
    moves a position: a 1 MiB read is not copied again for every 64 KiB piece."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read
        self._buf = b""
        self._pos = 0
        self.consumed = 0
        self.eof = False

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def fill(self, n: int) -> bool:
        """Make at least `n` bytes available; False if the body ends first."""
        while self._available() < n and not self.eof:
            more = self._read()
            if not more:
                self.eof = True
            self._buf, self._pos = self._buf[self._pos:] + more, 0
        return self._available() >= n

    def peek(self, n: int) -> bytes:
        self.fill(n)
        return self._buf[self._pos:self._pos + n]

    def take(self, n: int) -> bytes:
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        self.consumed += len(out)
        return out

    def piece(self, most: int) -> bytes:
        """Up to `most` bytes (at least one unless the body ended)."""
        if not self._available():
            self.fill(1)
        return self.take(min(most, self._available()))

    def line(self) -> Optional[bytes]:
        """The next line without its CRLF (MAX_LINE at most); None if no CRLF comes in time."""
        while True:
            at = self._buf.find(b"\r\n", self._pos, self._pos + MAX_LINE + 2)
            if at >= 0:
                line = self.take(at - self._pos)
                self.take(2)
                return line
            if self._available() >= MAX_LINE + 2 or not self.fill(self._available() + 1):
                return None


class MultipartReader:
    """Reads one multipart/byteranges body; `pieces()` yields (file offset, bytes).

    `total` is the file's size when known (every Content-Range must agree); `data_prefix`,
    when every part's data is known to start with it, settles the dialect of a part whose
    next line could be either a header or data.
    """

    def __init__(self, read: Callable[[], bytes], boundary: bytes, *, total: Optional[int] = None,
                 data_prefix: bytes = b"", piece_bytes: int = 1 << 16) -> None:
        self._s = _Stream(read)
        self._dash = b"--" + boundary
        self._total = total
        self._prefix = data_prefix
        self._piece = piece_bytes
        self.dialects: List[str] = []  # one per part read
        self.parts: List[ContentRange] = []

    @property
    def body_bytes(self) -> int:
        return self._s.consumed

    @property
    def ended_early(self) -> bool:
        """Whether the body ran out (a dropped connection) rather than being malformed."""
        return self._s.eof

    def pieces(self) -> Iterator[Tuple[int, bytes]]:
        self._preamble()
        while True:
            part = self._headers()
            self.parts.append(part)
            at = part.start
            while at < part.end:
                data = self._s.piece(min(self._piece, part.end - at))
                if not data:
                    raise self._fail(f"the body ends inside the part for bytes {part.start}-{part.end - 1}, "
                                     f"{part.end - at} bytes short")
                yield at, data
                at += len(data)
            if self._after_part():
                return

    def _fail(self, what: str) -> MalformedMultipart:
        return MalformedMultipart(what, self._s.consumed)

    def _preamble(self) -> None:
        """Skip to the first `--B` line (RFC allows a preamble; old hawkBit starts with CRLF)."""
        skipped = 0
        while skipped <= MAX_PREAMBLE:
            start = self._s.consumed
            line = self._s.line()
            if line is None:
                break
            if line.rstrip(b" \t") == self._dash:
                return
            skipped += self._s.consumed - start
        raise self._fail(f"no boundary line {self._dash.decode('latin-1')!r} at the start")

    def _headers(self) -> ContentRange:
        found: Optional[ContentRange] = None
        for _ in range(MAX_HEADERS):
            line = self._s.line()
            if line is None:
                raise self._fail("a part header line is cut short or longer than 1024 bytes")
            if not _HEADER.fullmatch(line):
                raise self._fail(f"expected a part header line, got {line[:60]!r}")
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-range":
                found = self._content_range(value.decode("latin-1"))
            dialect = self._what_follows(found is not None)
            if dialect == RFC:
                self._s.take(2)  # the blank line
            if dialect is not None:
                self.dialects.append(dialect)
                return self._need(found)
        raise self._fail(f"more than {MAX_HEADERS} part header lines")

    def _what_follows(self, have_range: bool) -> Optional[str]:
        """After a header line: RFC (a blank line, then data), OLD_HAWKBIT (data at once, only
        after Content-Range) or None (another header line)."""
        if len(self._s.peek(2)) < 2:  # a part always has more after its headers: data, then CRLF--B
            raise self._fail("the body ends after a part header line")
        if self._prefix and have_range:
            head = self._s.peek(2 + len(self._prefix))
            if head.startswith(self._prefix):
                return OLD_HAWKBIT
            if head == b"\r\n" + self._prefix:
                return RFC
        elif self._s.peek(2) == b"\r\n":
            return RFC
        if self._header_next():
            return None
        if have_range and not self._prefix:
            return OLD_HAWKBIT
        raise self._fail(f"expected a header line, a blank line or the part data, got {self._s.peek(16)!r}")

    def _header_next(self) -> bool:
        """Whether the next bytes read as one more header line."""
        head = self._s.peek(MAX_LINE + 2)
        end = head.find(b"\r\n")
        return end > 0 and _HEADER.fullmatch(head[:end]) is not None

    def _need(self, found: Optional[ContentRange]) -> ContentRange:
        if found is None:
            raise self._fail("a part without Content-Range")
        return found

    def _content_range(self, value: str) -> ContentRange:
        part = parse_content_range(value)
        if part is None:
            raise self._fail(f"Content-Range: expected 'bytes FIRST-LAST/TOTAL', got {value.strip()[:80]!r}")
        if self._total is not None and part.total not in (None, self._total):
            raise self._fail(f"Content-Range {value.strip()!r}: the file has {self._total} bytes")
        return part

    def _after_part(self) -> bool:
        """Read `CRLF --B` and what follows; True after the closing delimiter."""
        delimiter = b"\r\n" + self._dash
        if self._s.peek(len(delimiter)) != delimiter:
            raise self._fail(f"expected {delimiter.decode('latin-1')!r} after the part data, got "
                             f"{self._s.peek(len(delimiter))[:40]!r}")
        self._s.take(len(delimiter))
        if self._s.peek(2) == b"--":
            self._s.take(2)
            self._epilogue()
            return True
        line = self._s.line()  # transport padding (spaces) up to the CRLF
        if line is None or line.strip(b" \t"):
            raise self._fail("expected CRLF after a boundary")
        return False

    def _epilogue(self) -> None:
        """Drop what follows the closing delimiter (CRLF, an epilogue), a little at most."""
        drained = 0
        while drained < MAX_EPILOGUE:
            more = self._s.piece(MAX_EPILOGUE - drained)
            if not more:
                return
            drained += len(more)
