"""A resumable artifact download that reads like a file: `read(n)` over DdiClient.open_artifact.

Owns byte counting, reconnecting with Range/If-Range, hashing every byte and checking the hash
before the last chunk goes out. What the bytes are (CPIO, images) is the install pipeline's;
whether to restart a whole install after RestartRequired, and what to persist, is the agent's.
"""

from __future__ import annotations

import hmac
import logging
import random
import time
from types import TracebackType
from typing import Any, Callable, List, Optional, Tuple, Type

from otad.errors import (Cancelled, Conflict, DownloadInterrupted, HashMismatch, RestartRequired, ServerError,
                         ServerUnavailable, SizeMismatch)
from otad.hashstate import ResumableHash, new_hash
from otad.hawkbit.ddi import Artifact, ArtifactResponse, DdiClient
from otad.httpget import BODY_ERRORS as _BODY_ERRORS
from otad.httpget import CHUNK_BYTES
from otad.httpget import body_reader as _body_reader
from otad.retry import ResumePolicy

log = logging.getLogger(__name__)

class ResumableDownload:
    """`read(n)` over an artifact, resuming after drops, short bodies and stalls.

    Every byte is hashed as it arrives; the strongest hash the artifact announces is checked
    before the last chunk is handed out, so a consumer never reads a complete but wrong file.
    `verify()` reads (and checks) whatever a consumer that stopped early left unread.
    Memory: one body chunk (<= `chunk_bytes`) plus what a single `read(n)` asks for.

    To continue after a reboot, pass `start_offset` and `prefix_hash`: a hashlib object already
    fed the first `start_offset` bytes, of an algorithm the artifact announces (or None: no
    verification), and `if_range`, the ETag seen before, if known.

    `head_bytes` asks for only that many bytes first (and 4 times as many each time the consumer
    reads past what was asked for), until the consumer says how far it will read (`upto`): a
    bundle whose last member is a delta's chunk data is read up to that member and no further,
    instead of the server pushing the rest of it into the socket buffers.
    """

    def __init__(self, client: DdiClient, artifact: Artifact, *, start_offset: int = 0,
                 prefix_hash: Optional[Any] = None, if_range: Optional[str] = None,
                 policy: ResumePolicy = ResumePolicy(),
                 on_progress: Optional[Callable[[int, Optional[int]], None]] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 rng: Optional[random.Random] = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 chunk_bytes: int = CHUNK_BYTES, head_bytes: Optional[int] = None) -> None:
        if not 0 <= start_offset <= artifact.size:
            raise ValueError(f"start_offset: expected 0..{artifact.size}, got {start_offset}")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes: expected >= 1, got {chunk_bytes}")
        self.artifact = artifact
        self.url = artifact.download_url
        self._client = client
        self._policy = policy
        self._on_progress = on_progress
        self._should_stop = should_stop
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._monotonic = monotonic
        self._chunk_bytes = chunk_bytes
        self._expected = self._expected_hash(start_offset, prefix_hash)
        self._hash: Optional[Any] = None if self._expected is None else (
            prefix_hash if start_offset else new_hash(self._expected[0]))
        self._hash_before_buf: Optional[Any] = None  # self._hash before the chunk now in the buffer
        self._received = start_offset  # bytes taken from the server (== next Range offset)
        self._delivered = start_offset  # bytes handed to the consumer by read()
        self._etag = if_range
        self._resp: Optional[ArtifactResponse] = None
        self._body: Optional[Callable[[], bytes]] = None
        self._buf = b""
        self._buf_pos = 0
        self._eof = False
        self._verified = False
        self._reopens = 0
        self._limit = head_bytes if not start_offset else None  # no request reaches past it (None: no limit)
        self._window = head_bytes or 0  # the size of the last part asked for; 4 times more if more is read
        self._window_end: Optional[int] = None  # where the open response ends, when it was asked to

    # the file-like side

    @property
    def position(self) -> int:
        """Bytes delivered by read() so far, counted from the start of the artifact."""
        return self._delivered

    @property
    def total(self) -> int:
        return self.artifact.size

    @property
    def etag(self) -> Optional[str]:
        """The server's ETag for the artifact (worth persisting for a resume after reboot)."""
        return self._etag

    @property
    def verified(self) -> bool:
        return self._verified

    def snapshot(self) -> Optional[Tuple[int, Any]]:
        """(position, the server's hash fed with exactly the bytes delivered so far) for a resume
        after a restart; the hash is None when none is announced. None: this hash cannot be saved."""
        if self._hash is None:
            return self._delivered, None
        if not isinstance(self._hash, ResumableHash):
            return None
        undelivered = len(self._buf) - self._buf_pos
        if undelivered == 0:
            return self._delivered, self._hash.copy()
        assert self._hash_before_buf is not None
        at = self._hash_before_buf.copy()
        at.update(self._buf[:self._buf_pos])
        return self._delivered, at

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all remaining for n < 0); fewer only at EOF, b"" after it."""
        want = self.artifact.size - self._delivered if n < 0 else n
        parts: List[bytes] = []
        while want > 0:
            if self._buf_pos >= len(self._buf):
                self._buf = b""  # let the spent chunk go before the next one arrives
                self._buf, self._buf_pos = self._next_chunk(), 0
                if not self._buf:
                    break
            part = self._buf[self._buf_pos:self._buf_pos + want]
            self._buf_pos += len(part)
            want -= len(part)
            parts.append(part)
        data = b"".join(parts)
        self._delivered += len(data)
        return data

    def upto(self, end: Optional[int]) -> None:
        """Ask the server for no more than the bytes before `end` (None: the whole artifact) from
        the next request on; a request open now is not cut."""
        if end is not None:
            self._window = max(self._window, end - self._received)
        self._limit = end

    def verify(self) -> None:
        """Read (and hash) whatever the consumer left, then check the hash; raise HashMismatch."""
        while self.read(self._chunk_bytes):
            pass

    def close(self) -> None:
        self._drop_response()

    def __enter__(self) -> "ResumableDownload":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # the network side

    def _next_chunk(self) -> bytes:
        """The next piece of the body (b"" at EOF, after the hash check), reconnecting as needed."""
        failures = 0
        stall_started = self._monotonic()
        while not self._eof:
            if self._should_stop is not None and self._should_stop():
                self._drop_response()
                raise Cancelled("download cancelled", self.url, self._received)
            try:
                chunk = self._receive()
            except ServerError as exc:
                if not isinstance(exc, (ServerUnavailable, Conflict)):
                    raise  # 401/403/404/410/...: retrying would only loop
                failures += 1
                self._wait(failures, stall_started, exc.retry_after_s, exc.what)
                continue
            if chunk:
                return chunk
        self._check_hash()
        return b""

    def _receive(self) -> bytes:
        """One chunk from the open body, opening it first; b"" when the file is complete."""
        if self._body is None:
            self._open()
            if self._eof:
                return b""
        assert self._body is not None
        try:
            chunk = self._body()
        except _BODY_ERRORS as exc:
            self._drop_response()
            raise ServerUnavailable(f"body broke off at byte {self._received} ({type(exc).__name__}: {exc})",
                                    self.url) from exc
        if not chunk:
            self._drop_response()
            if self._received == self.artifact.size:
                self._eof = True
                return b""
            if self._received == self._window_end:
                return b""  # the part asked for is complete: the next read asks for more
            # urllib3 1.26 may end a dropped body early without an error, and a proxy may cut
            # a body short with a matching Content-Length: only the byte count tells.
            raise ServerUnavailable(f"body ended at byte {self._received} of {self.artifact.size}", self.url)
        if self._received + len(chunk) > self.artifact.size:
            self._drop_response()
            raise SizeMismatch(f"server sent more than the announced {self.artifact.size} bytes", self.url,
                               self._received)
        self._received += len(chunk)
        if isinstance(self._hash, ResumableHash):
            self._hash_before_buf = self._hash.copy()
        if self._hash is not None:
            self._hash.update(chunk)  # the one hash the server announced: each extra one costs a pass
        if self._received == self.artifact.size:
            # Check before handing out the last chunk: a consumer that stops reading at the
            # exact end never holds an unverified file as complete.
            self._eof = True
            self._drop_response()
            self._check_hash()
        if self._on_progress is not None:
            self._on_progress(self._received, self.artifact.size)
        return chunk

    def _open(self) -> None:
        offset = self._received
        self._reopens += 1
        if self._limit is not None and offset >= self._limit:
            self._window *= 4
            self._limit = offset + self._window
        end = self._limit if self._limit is not None and offset < self._limit < self.artifact.size else None
        resp = self._client.open_artifact(self.artifact, offset=offset, end=end,
                                          if_range=self._etag if offset and _strong(self._etag) else None)
        if resp.status == 416:
            if resp.complete:
                self._eof = True
                return
            raise RestartRequired(f"server refused the range from byte {offset} (its size: "
                                  f"{resp.total_size})", self.url, offset)
        try:
            self._check_response(resp, offset)
        except BaseException:
            resp.close()
            raise
        self._resp = resp
        self._etag = resp.etag or self._etag
        self._window_end = end if resp.status == 206 else None
        self._body = _body_reader(resp.response, self._chunk_bytes)
        log.debug("%s: reading from byte %d (HTTP %d)", self.url, offset, resp.status)

    def _check_response(self, resp: ArtifactResponse, offset: int) -> None:
        if resp.status == 200 and offset > 0:
            raise RestartRequired(f"server cannot resume at byte {offset}: it sent the whole file",
                                  self.url, offset)
        if offset > 0 and self._etag and resp.etag and resp.etag != self._etag:
            raise RestartRequired(f"artifact changed on the server (ETag {self._etag} -> {resp.etag})",
                                  self.url, offset)
        # 206: Content-Range gives the file's size. 200: Content-Length is only the body's, and a
        # short one is a body cut short (resumed later); a longer one is another file.
        size = resp.total_size
        if size is not None and (size > self.artifact.size or (resp.status == 206 and size != self.artifact.size)):
            raise SizeMismatch(f"server has {size} bytes, the deployment announced {self.artifact.size}",
                               self.url, offset)

    def _wait(self, failures: int, stall_started: float, retry_after_s: Optional[float], why: str) -> None:
        p = self._policy
        stalled = self._monotonic() - stall_started
        if failures > p.max_attempts or self._reopens >= p.max_reopens or stalled >= p.max_stall_s:
            raise DownloadInterrupted(f"gave up at byte {self._received} of {self.artifact.size} after "
                                      f"{failures - 1} retries and {stalled:.0f} s without progress "
                                      f"({self._reopens} connections in all): {why}", self.url, self._received)
        delay = p.backoff.next(failures - 1, self._rng)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        delay = min(delay, max(0.0, p.max_stall_s - stalled))
        log.info("%s: %s; resuming at byte %d in %.1f s", self.url, why, self._received, delay)
        self._sleep(delay)

    def _check_hash(self) -> None:
        if self._verified or self._expected is None or self._hash is None:
            return
        algorithm, expected = self._expected
        got = self._hash.hexdigest()
        if not hmac.compare_digest(got, expected):
            raise HashMismatch(f"{algorithm} of the {self._received} bytes is {got}, expected {expected}",
                               self.url, self._received)
        self._verified = True

    def _expected_hash(self, start_offset: int, prefix_hash: Optional[Any]) -> Optional[Tuple[str, str]]:
        if start_offset == 0:
            if prefix_hash is not None:
                raise ValueError("prefix_hash: only with start_offset > 0")
            return self.artifact.strongest_hash()
        if prefix_hash is None:
            return None
        name = str(prefix_hash.name).lower()
        expected: Optional[str] = getattr(self.artifact, name, None) if name in ("sha256", "sha1", "md5") else None
        if expected is None:
            raise ValueError(f"prefix_hash: the artifact announces no {name} to check it against")
        return name, expected

    def _drop_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp, self._body = None, None


def _strong(etag: Optional[str]) -> bool:
    """If-Range takes only a strong validator; a weak one would always get the full file."""
    return bool(etag) and not str(etag).startswith("W/")
