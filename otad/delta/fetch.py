"""Fetching chunks by HTTP Range from one file (a .zck, or the .swu itself), never worse than a full read.

Owns the requests: multi-range requests of at most `max_ranges` ranges, their multipart bodies
(otad.delta.multipart), the fallbacks — single ranges after a 200 or an unreadable multipart
body, one sequential read after a 200 to a single range — the ETag check, rate limiting,
retries of dropped or short bodies (ResumePolicy, as downloads use it) and the byte and
request counts. HTTP itself (session, auth, TLS) is the opener's: the DDI client's, so chunk
requests carry the same credentials as the bundle download. Yields each wanted chunk's stored
bytes exactly once; checking them is otad.delta.chunkdata's.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple

from otad.delta.multipart import MultipartReader, boundary_of, parse_content_range
from otad.delta.plan import ByteRange
from otad.delta.zck import ChunkIndex
from otad.errors import (ArtifactChanged, Conflict, MalformedMultipart, RangeFetchError, ServerError,
                         ServerUnavailable)
from otad.retry import ResumePolicy

log = logging.getLogger(__name__)

MULTIPART, SINGLE, SEQUENTIAL = "multipart", "single", "sequential"
MAX_RANGES_CAP = 100  # Starlette (goosebit) answers 200 with the whole file above 100


class RangeResponse(Protocol):
    """An open HTTP response: `read()` gives the next piece of body (b"" at its end) and raises
    OSError or ServerUnavailable when the body breaks off."""

    status: int
    headers: Mapping[str, str]  # case-insensitive, as requests' are

    def read(self) -> bytes: ...

    def close(self) -> None: ...


# GET `url` with these extra headers; raises a ServerError for a status other than 2xx/416.
Opener = Callable[[str, Mapping[str, str]], RangeResponse]


@dataclass(frozen=True)
class FetchPolicy:
    """How chunks are requested."""

    max_ranges: int = 50
    multipart: bool = True  # False: single ranges from the start
    min_interval_s: float = 0.1  # at most 10 requests a second (hawkBit's DoS filter allows 200)
    resume: ResumePolicy = ResumePolicy()

    def __post_init__(self) -> None:
        if not 1 <= self.max_ranges <= MAX_RANGES_CAP:
            raise ValueError(f"max_ranges: expected 1..{MAX_RANGES_CAP}, got {self.max_ranges}")
        if not self.min_interval_s >= 0:
            raise ValueError(f"min_interval_s: expected >= 0, got {self.min_interval_s}")


@dataclass(frozen=True)
class FetchStats:
    """What fetching cost: requests sent, body bytes read (framing and wasted bytes included),
    chunk bytes delivered, and each fallback taken with its reason."""

    requests: int = 0
    body_bytes: int = 0
    payload_bytes: int = 0
    retries: int = 0
    mode: str = MULTIPART
    fallbacks: Tuple[str, ...] = ()


@dataclass
class _Wanted:
    """The chunks still to deliver, by their byte span in the served file."""

    spans: Dict[int, Tuple[int, int]]
    starts: List[Tuple[int, int, int]] = field(default_factory=list)  # (start, end, chunk), sorted

    def __post_init__(self) -> None:
        self.starts = sorted((s, e, c) for c, (s, e) in self.spans.items())

    def done(self, chunk: int) -> None:
        self.spans.pop(chunk, None)

    def after(self, offset: int) -> Optional[Tuple[int, int, int]]:
        """The first still-wanted chunk starting at or after `offset`."""
        k = bisect.bisect_left(self.starts, (offset, -1, -1))
        while k < len(self.starts):
            entry = self.starts[k]
            if entry[2] in self.spans:
                return entry
            k += 1
        return None


class _Collector:
    """Turns (offset, bytes) pieces into complete wanted chunks; bytes of nothing wanted are dropped."""

    def __init__(self, wanted: _Wanted) -> None:
        self.wanted = wanted
        self.chunk: Optional[Tuple[int, int, int]] = None  # (start, end, number) being filled
        self.buf = bytearray()

    def feed(self, offset: int, data: bytes) -> List[Tuple[int, bytes]]:
        out: List[Tuple[int, bytes]] = []
        pos = 0
        while pos < len(data):
            at = offset + pos
            if self.chunk is not None and at == self.chunk[0] + len(self.buf):
                take = data[pos:pos + self.chunk[1] - at]
                self.buf += take
                pos += len(take)
                if self.chunk[0] + len(self.buf) == self.chunk[1]:
                    out.append((self.chunk[2], bytes(self.buf)))
                    self.wanted.done(self.chunk[2])
                    self.reset()
                continue
            self.reset()
            nxt = self.wanted.after(at)
            if nxt is None or nxt[0] >= offset + len(data):
                break
            self.chunk, pos = nxt, nxt[0] - offset
        return out

    def reset(self) -> None:
        self.chunk, self.buf = None, bytearray()


class _Retry(Exception):
    """This attempt ended early (a drop, a short body, 5xx): go on with what is left."""


class RangeFetcher:
    """Fetches chunks of one file of `size` bytes at `url`; `fetch()` yields (chunk, bytes)."""

    def __init__(self, opener: Opener, url: str, size: int, *, etag: Optional[str] = None,
                 policy: FetchPolicy = FetchPolicy(), data_prefix: bytes = b"",
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None) -> None:
        self.url = url
        self.size = size
        self.etag = etag
        self.policy = policy
        self.stats = FetchStats(mode=MULTIPART if policy.multipart and policy.max_ranges > 1 else SINGLE)
        self._open_url = opener
        self._prefix = data_prefix
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng if rng is not None else random.Random()
        self._last_request: Optional[float] = None
        self._cap = policy.max_ranges  # halved after a 200 to a multi-range request

    def fetch(self, index: ChunkIndex, requests: Sequence[Sequence[ByteRange]],
              shift: int = 0) -> Iterator[Tuple[int, bytes]]:
        """Every chunk the requests cover, once each. `shift` moves .zck offsets to offsets in
        the served file (the zck body stored inside a .swu: member offset - header length)."""
        spans = {c: (index.starts[c] + shift, index.starts[c] + index.comp_lengths[c] + shift)
                 for q in requests for r in q for c in range(r.first, r.last + 1)}
        wanted = _Wanted(dict(spans))
        for request in requests:
            if self.stats.mode == SEQUENTIAL:
                break
            ranges = [ByteRange(r.start + shift, r.end + shift, r.first, r.last) for r in request]
            yield from self._request_until_done(ranges, wanted)
        if wanted.spans:
            yield from self._until_done(wanted, lambda: self._sequential(wanted))

    # the three modes

    def _request_until_done(self, ranges: List[ByteRange], wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        def left() -> List[ByteRange]:
            """The ranges still holding wanted chunks, each from its first wanted chunk on."""
            out = []
            for r in ranges:
                first = next((c for c in range(r.first, r.last + 1) if c in wanted.spans), None)
                if first is not None:
                    out.append(ByteRange(wanted.spans[first][0], r.end, first, r.last))
            return out

        def attempt() -> Iterator[Tuple[int, bytes]]:
            todo = left()
            if self.stats.mode == MULTIPART and len(todo) > 1:
                yield from self._multi(todo[:self._cap], wanted)
                return
            for r in todo:
                if self.stats.mode == SEQUENTIAL:
                    return
                yield from self._single(r, wanted)

        yield from self._until_done(wanted, attempt, lambda: bool(left()) and self.stats.mode != SEQUENTIAL)

    def _until_done(self, wanted: _Wanted, attempt: Callable[[], Iterator[Tuple[int, bytes]]],
                    more: Optional[Callable[[], bool]] = None) -> Iterator[Tuple[int, bytes]]:
        """Run `attempt` until nothing is left, waiting between failures like a download does:
        the count of failures starts again whenever a chunk arrives (or the mode changes)."""
        more = more or (lambda: bool(wanted.spans))
        failures, stalled_since = 0, self._monotonic()
        while more():
            before, fallbacks = len(wanted.spans), len(self.stats.fallbacks)
            failure: Optional[str] = None
            try:
                yield from attempt()
            except _Retry as exc:
                failure = str(exc)
            if len(wanted.spans) < before or len(self.stats.fallbacks) > fallbacks:
                failures, stalled_since = 0, self._monotonic()
                if failure is None:
                    continue
            failures += 1
            self._wait(failures, stalled_since, failure or "the answer held none of the wanted chunks")

    def _multi(self, ranges: List[ByteRange], wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        spec = ",".join(r.spec() for r in ranges)
        resp = self._get({"Range": f"bytes={spec}"})
        with _closing(resp):
            if resp.status == 200:
                # A server may cap the ranges (Starlette: 100, Apache: MaxRanges): try half as many.
                self._cap = len(ranges) // 2
                self._fall_back(MULTIPART if self._cap > 1 else SINGLE, f"HTTP 200 to {len(ranges)} ranges")
                return
            yield from self._read_206(resp, wanted)
        missing = sum(1 for r in ranges if any(c in wanted.spans for c in range(r.first, r.last + 1)))
        if missing and self.stats.mode == MULTIPART:
            self._fall_back(SINGLE, f"the multipart answer left out {missing} of {len(ranges)} ranges")

    def _single(self, r: ByteRange, wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        first = wanted.after(r.start)
        if first is None or first[0] >= r.end:
            return
        resp = self._get({"Range": f"bytes={first[0]}-{r.end - 1}"})
        with _closing(resp):
            if resp.status == 200:
                self._fall_back(SEQUENTIAL, "HTTP 200 to a single range: the server ignores Range")
                yield from self._read_body(resp, 0, self.size, wanted)
                return
            yield from self._read_206(resp, wanted)

    def _sequential(self, wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        first = wanted.after(0)
        if first is None:
            return
        resp = self._get({"Range": f"bytes={first[0]}-"} if first[0] else {})
        with _closing(resp):
            if resp.status == 200:
                yield from self._read_body(resp, 0, self.size, wanted)
            else:
                yield from self._read_206(resp, wanted)

    # responses

    def _read_206(self, resp: RangeResponse, wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        if resp.status != 206:
            raise RangeFetchError(f"unexpected HTTP {resp.status} to a Range request", self.url)
        boundary = boundary_of(resp.headers.get("Content-Type", ""))
        if boundary is None:
            part = parse_content_range(resp.headers.get("Content-Range", ""))
            if part is None:
                raise RangeFetchError(f"206 without a usable Content-Range: "
                                      f"{resp.headers.get('Content-Range')!r}", self.url)
            self._check_total(part.total)
            yield from self._read_body(resp, part.start, part.end, wanted)
            return
        reader = MultipartReader(self._counted(resp), boundary, total=self.size, data_prefix=self._prefix)
        collector = _Collector(wanted)
        try:
            for offset, data in reader.pieces():
                for item in collector.feed(offset, data):
                    yield self._deliver(item)
        except MalformedMultipart as exc:
            if reader.ended_early:
                raise _Retry(f"multipart body broke off: {exc.what}") from None
            self._fall_back(SINGLE, f"unreadable multipart body ({exc})")

    def _read_body(self, resp: RangeResponse, start: int, end: int, wanted: _Wanted) -> Iterator[Tuple[int, bytes]]:
        """A plain body holding bytes [start, end) of the file; stops once nothing more is wanted there."""
        collector, at, read = _Collector(wanted), start, self._counted(resp)
        while at < end:
            last = wanted.after(at)
            if collector.chunk is None and (last is None or last[0] >= end):
                return  # the rest of this body holds nothing wanted: close it early
            data = read()
            if not data:
                raise _Retry(f"body ended at byte {at}, expected {end}")
            if at + len(data) > end:
                raise RangeFetchError(f"the server sent more than bytes {start}-{end - 1}", self.url)
            for item in collector.feed(at, data):
                yield self._deliver(item)
            at += len(data)

    def _deliver(self, item: Tuple[int, bytes]) -> Tuple[int, bytes]:
        self.stats = replace(self.stats, payload_bytes=self.stats.payload_bytes + len(item[1]))
        return item

    def _counted(self, resp: RangeResponse) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                data = resp.read()
            except (OSError, ServerUnavailable) as exc:
                raise _Retry(f"body broke off ({exc})") from None
            self.stats = replace(self.stats, body_bytes=self.stats.body_bytes + len(data))
            return data
        return read

    # requests

    def _get(self, headers: Dict[str, str]) -> RangeResponse:
        self._pace()
        headers = {"Accept-Encoding": "identity", **headers}
        if "Range" in headers and self.etag and not self.etag.startswith("W/"):
            headers["If-Range"] = self.etag
        self.stats = replace(self.stats, requests=self.stats.requests + 1)
        try:
            resp = self._open_url(self.url, headers)
        except (ServerUnavailable, Conflict) as exc:
            raise _Retry(exc.what) from None
        except ServerError as exc:
            raise RangeFetchError(f"chunk request refused: {exc.what}", self.url) from exc
        try:
            self._check_etag(resp)
            if resp.status == 416:
                raise RangeFetchError(f"HTTP 416 to bytes {headers.get('Range')!r}: the file is not "
                                      f"{self.size} bytes", self.url)
            if resp.status not in (200, 206):
                raise RangeFetchError(f"unexpected HTTP {resp.status}", self.url)
        except BaseException:
            resp.close()
            raise
        log.debug("%s: %s -> HTTP %d", self.url, headers.get("Range", "whole file"), resp.status)
        return resp

    def _pace(self) -> None:
        now = self._monotonic()
        if self._last_request is not None:
            wait = self._last_request + self.policy.min_interval_s - now
            if wait > 0:
                self._sleep(wait)
                now += wait
        self._last_request = now

    def _check_etag(self, resp: RangeResponse) -> None:
        etag = resp.headers.get("ETag")
        if etag and self.etag and etag != self.etag:
            raise ArtifactChanged(f"the file changed on the server (ETag {self.etag} -> {etag})", self.url)
        self.etag = self.etag or etag
        if resp.status == 200:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) != self.size:
                raise ArtifactChanged(f"the server has {length} bytes, expected {self.size}", self.url)

    def _check_total(self, total: Optional[int]) -> None:
        if total is not None and total != self.size:
            raise ArtifactChanged(f"the server has {total} bytes, expected {self.size}", self.url)

    def _fall_back(self, mode: str, why: str) -> None:
        how = {MULTIPART: f"at most {self._cap} ranges a request", SINGLE: "single ranges",
               SEQUENTIAL: "one sequential read"}[mode]
        log.info("%s: %s; fetching by %s from now on", self.url, why, how)
        self.stats = replace(self.stats, mode=mode, fallbacks=self.stats.fallbacks + (why,))

    def _wait(self, failures: int, stalled_since: float, why: str) -> None:
        p = self.policy.resume
        stalled = self._monotonic() - stalled_since
        if failures > p.max_attempts or self.stats.requests >= p.max_reopens or stalled >= p.max_stall_s:
            raise RangeFetchError(f"gave up after {failures - 1} retries and {stalled:.0f} s without progress: "
                                  f"{why}", self.url)
        delay = min(p.backoff.next(failures - 1, self._rng), max(0.0, p.max_stall_s - stalled))
        log.info("%s: %s; retrying in %.1f s", self.url, why, delay)
        self.stats = replace(self.stats, retries=self.stats.retries + 1)
        self._sleep(delay)


class _closing:
    """`with` for a RangeResponse (a Protocol has no __enter__)."""

    def __init__(self, resp: RangeResponse) -> None:
        self.resp = resp

    def __enter__(self) -> RangeResponse:
        return self.resp

    def __exit__(self, *exc: object) -> None:
        self.resp.close()
