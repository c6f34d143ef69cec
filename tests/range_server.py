"""A scriptable HTTP Range server for delta tests: the chunk servers otad meets, and how they misbehave.

`RangeServer` serves one file at `/file` with RFC 7233 ranges and multipart/byteranges bodies
in the dialects of the real servers, byte for byte:
  - "starlette": goosebit 0.2.12's FileResponse (Starlette 1.10): ranges sorted, overlapping
    and adjacent ones merged, a random 26-hex boundary, Content-Type and Content-Range per
    part, more than `max_ranges` (100) ranges -> 200 with the whole file;
  - "hawkbit": hawkBit >= 0.10 FileStreamingUtil (after #2921): THIS_STRING_SEPARATES_MULTIPART,
    no CRLF before the first boundary, no CRLF after the closing one, overlap -> 416;
  - "hawkbit-old": hawkBit < 0.10: CRLF before every boundary, Content-Range only and the data
    straight after it, no blank line.
Faults apply to the next requests in order (`script`): answer 200 to a ranged request, cut the
body after N bytes (dropping the connection), garble the multipart framing, change the file.
Every request is journalled with its Range header, status and body bytes. stdlib only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

DIALECTS = ("starlette", "hawkbit", "hawkbit-old")
HAWKBIT_BOUNDARY = "THIS_STRING_SEPARATES_MULTIPART"


@dataclass
class Misbehave:
    """What goes wrong with one request."""

    ignore_range: bool = False  # 200 and the whole file
    drop_after: Optional[int] = None  # send this many body bytes, then drop the connection
    garble: bool = False  # break the multipart framing (no CRLF after the part headers' boundary)
    new_data: Optional[bytes] = None  # the file changes before this request (new ETag)
    status: Optional[int] = None  # answer this status, empty body
    dialect: Optional[str] = None  # frame this multipart body as that server does


@dataclass
class Served:
    range: Optional[str]
    status: int
    body_bytes: int  # bytes actually sent
    ranges: int  # ranges asked for
    headers: Dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)  # when the answer began


class RangeServer:
    """Serves `data` at `url`; `script` holds the faults of the next requests, in order."""

    def __init__(self, data: bytes, dialect: str = "starlette", *, max_ranges: int = 100,
                 auth: Optional[str] = None, rate_bps: Optional[int] = None) -> None:
        assert dialect in DIALECTS, dialect
        self.data = data
        self.dialect = dialect
        self.max_ranges = max_ranges
        self.auth = auth  # required Authorization header value
        self.rate_bps = rate_bps  # a slow link: bodies are sent at about this many bytes a second
        self.script: List[Misbehave] = []
        self.journal: List[Served] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/file"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def etag(self) -> str:
        return '"%s"' % hashlib.sha1(self.data).hexdigest()

    @property
    def requests(self) -> int:
        return len(self.journal)

    @property
    def body_bytes(self) -> int:
        return sum(s.body_bytes for s in self.journal)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "RangeServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_fault(self) -> Misbehave:
        with self._lock:
            fault = self.script.pop(0) if self.script else Misbehave()
            if fault.new_data is not None:
                self.data = fault.new_data
            return fault


def parse_ranges(header: str, size: int) -> Optional[List[Tuple[int, int]]]:
    """`bytes=a-b,c-,-n` as [start, end) pairs in request order; None if unparsable."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(.+)", header)
    if match is None:
        return None
    out = []
    for part in match.group(1).split(","):
        m = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", part)
        if m is None or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
        else:
            start, end = max(0, size - int(m.group(2))), size
        out.append((start, end))
    return out


def multipart_body(data: bytes, ranges: List[Tuple[int, int]], dialect: str,
                   boundary: Optional[str] = None) -> Tuple[str, bytes]:
    """(Content-Type, body) as `dialect` writes these ranges (already sorted/merged as it does)."""
    size = len(data)
    if dialect == "starlette":
        boundary = boundary or secrets.token_hex(13)
        out = b"".join(b"--%s\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
                       % (boundary.encode(), a, b - 1, size) + data[a:b] + b"\r\n" for a, b in ranges)
        return f"multipart/byteranges; boundary={boundary}", out + b"--%s--" % boundary.encode()
    boundary = HAWKBIT_BOUNDARY.encode()
    parts = []
    for i, (a, b) in enumerate(ranges):
        if dialect == "hawkbit":
            lead = b"--" + boundary if i == 0 else b"\r\n--" + boundary
            parts.append(lead + b"\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
                         % (a, b - 1, size) + data[a:b])
        else:
            parts.append(b"\r\n--" + boundary + b"\r\nContent-Range: bytes %d-%d/%d\r\n" % (a, b - 1, size) + data[a:b])
    return f"multipart/byteranges; boundary={HAWKBIT_BOUNDARY}", b"".join(parts) + b"\r\n--" + boundary + b"--"


def _starlette_ranges(ranges: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    merged = [sorted(ranges)[0]]
    for a, b in sorted(ranges)[1:]:
        if a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: RangeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.owner.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    @property
    def owner(self) -> RangeServer:
        server = self.server
        assert isinstance(server, _Server)
        return server.owner

    def do_GET(self) -> None:
        srv = self.owner
        fault = srv.next_fault()
        data, etag = srv.data, srv.etag
        range_header = self.headers.get("Range")
        if srv.auth is not None and self.headers.get("Authorization") != srv.auth:
            self._send(401, {}, b"", range_header, 0, fault)
            return
        if fault.status is not None:
            self._send(fault.status, {}, b"", range_header, 0, fault)
            return
        ranges = parse_ranges(range_header, len(data)) if range_header else None
        if_range = self.headers.get("If-Range")
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Content-Type": "application/octet-stream"}
        if ranges is None or fault.ignore_range or (if_range is not None and if_range != etag) or \
                (len(ranges) > srv.max_ranges):
            self._send(200, headers, data, range_header, len(ranges or ()), fault)
            return
        if any(a >= len(data) or a >= b for a, b in ranges):
            self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", range_header, len(ranges), fault)
            return
        dialect = fault.dialect or srv.dialect
        if dialect == "starlette" and len(ranges) > 1:
            ranges = _starlette_ranges(ranges)
        elif dialect != "starlette":
            ordered = sorted(ranges)
            if any(ordered[i][1] > ordered[i + 1][0] for i in range(len(ordered) - 1)):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", range_header, len(ranges), fault)
                return
            ranges = ordered
        if len(ranges) == 1:  # also Starlette's, when its merging left one range
            a, b = ranges[0]
            headers["Content-Range"] = f"bytes {a}-{b - 1}/{len(data)}"
            self._send(206, headers, data[a:b], range_header, 1, fault)
            return
        content_type, body = multipart_body(data, ranges, dialect)
        if fault.garble:
            body = body.replace(b"\r\n\r\n", b"\r\nX", 1) if dialect != "hawkbit-old" else body.replace(
                b"--" + HAWKBIT_BOUNDARY.encode() + b"\r\n", b"--" + HAWKBIT_BOUNDARY.encode() + b"Z\r\n", 1)
        headers["Content-Type"] = content_type
        self._send(206, headers, body, range_header, len(parse_ranges(range_header, len(data)) or []), fault)

    def _send(self, status: int, headers: Dict[str, str], body: bytes, range_header: Optional[str],
              nranges: int, fault: Misbehave) -> None:
        # Journalled before the status line goes out: a client that fails on the headers may
        # look at the journal before this thread runs again.
        served = Served(range_header, status, 0, nranges, dict(self.headers.items()))
        self.owner.journal.append(served)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        view = memoryview(body)
        if fault.drop_after is not None:
            view = view[:fault.drop_after]
        rate = self.owner.rate_bps
        piece = max(1, rate // 50) if rate else 65536
        try:
            while served.body_bytes < len(view):
                served.body_bytes += self.connection.send(view[served.body_bytes:served.body_bytes + piece])
                if rate:
                    time.sleep(piece / rate)
        except OSError:
            self.close_connection = True
        if len(view) != len(body):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
