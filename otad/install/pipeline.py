"""The byte path of one artifact: stored bytes → [decrypt] → [decompress] → sink.

Owns the readers stacked on a CPIO member: `HashingReader` (sha256 over the bytes as stored,
as SWUpdate checks them), AES-CBC decryption (swu/crypto.py), the bounded decompressors and
`stream_artifact`, which drives the stack in fixed-size chunks into a sink and checks the hash
at the end. Every stage is a
reader with `read(n)` that never returns more than `n` bytes, so memory stays flat whatever
the image size. Knows nothing of targets (see handlers/) or of the bundle order (installer).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from otad.errors import DecompressError, DecryptError, ImageHashMismatch, ImageTooLarge
from otad.hashstate import ResumableHash
from otad.swu.crypto import AesCbcReader, AesKey

DEFAULT_CHUNK = 1 << 20


class Reader(Protocol):
    def read(self, n: int) -> bytes: ...


class Sink(Protocol):
    """Where decoded bytes go. `capacity` is how many bytes it can take (None: no limit)."""

    capacity: Optional[int]

    def write(self, data: bytes) -> None: ...


class FdSink:
    """Writes every byte to an open fd: a spooled member, a file being installed, a tar member."""

    def __init__(self, fd: int, capacity: Optional[int]) -> None:
        self._fd = fd
        self.capacity = capacity

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


@dataclass(frozen=True)
class Decoding:
    """How the stored bytes of an artifact turn into what is written."""

    compressed: Optional[str] = None  # None, "zlib" (a gzip stream, as SWUpdate) or "zstd"
    zstd_max_window: int = 1 << 27
    encrypted: bool = False  # AES-CBC, decrypted before decompressing (producers compress first)
    key: Optional[AesKey] = None  # the device key; None with `encrypted` is refused
    ivt: Optional[str] = None  # the artifact's own IV (32 hex digits); else the key file's

    def aes_iv(self, name: str) -> bytes:
        """The IV to decrypt with; DecryptError when the device has no key (or no IV) for it."""
        if self.key is None:
            raise DecryptError("image is encrypted but no AES key is configured (install.aes_key_file or -K FILE)",
                               name)
        return self.key.iv_for(self.ivt, name)


@dataclass(frozen=True)
class ArtifactResult:
    name: str
    stored_bytes: int
    written_bytes: int
    sha256: str


@dataclass(frozen=True)
class StreamPosition:
    """Where decoding stands when all stored bytes read so far are decoded and written."""

    stored_sha256: Any  # the running hash over the stored bytes (hashstate.ResumableHash to be saved)
    stored_count: int
    written: int
    last_chunk: bytes  # the chunk written just before `written`


@dataclass(frozen=True)
class Checkpoints:
    """Call `save` about every `every_bytes` written, at points where decoding can be resumed."""

    every_bytes: int
    save: Callable[[StreamPosition], None]


class HashingReader:
    """Passes bytes through while hashing them; `on_bytes(n)` reports progress."""

    def __init__(self, source: Reader, on_bytes: Optional[Callable[[int], None]] = None,
                 sha256: Optional[Any] = None, count: int = 0) -> None:
        self._source = source
        self._on_bytes = on_bytes
        self.sha256 = sha256 if sha256 is not None else hashlib.sha256()
        self.count = count

    def read(self, n: int) -> bytes:
        data = self._source.read(n)
        if data:
            self.sha256.update(data)
            self.count += len(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return data

    def drain(self, chunk: int = DEFAULT_CHUNK) -> int:
        """Read to the end; returns how many bytes were left."""
        return _drain(self, chunk)


class GzipReader:
    """Bounded gzip ('zlib' in sw-description) decompression: read(n) never inflates more than n."""

    def __init__(self, source: Reader, name: str, chunk: int = DEFAULT_CHUNK) -> None:
        self._source = source
        self._name = name
        self._chunk = chunk
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed input not yet handed to the inflater

    def read(self, n: int) -> bytes:
        while not self._inflater.eof:
            if not self._pending:
                self._pending = self._source.read(self._chunk)
                if not self._pending:
                    raise DecompressError("gzip stream ends before its end marker (truncated)", self._name)
            try:
                out = self._inflater.decompress(self._pending, n)
            except zlib.error as exc:
                raise DecompressError(f"corrupt gzip stream: {exc}", self._name) from exc
            self._pending = self._inflater.unconsumed_tail
            if out:
                return out
        if self._inflater.unused_data or self._pending:
            raise DecompressError("data after the end of the gzip stream", self._name)
        return b""


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_BLOCK_MAX = 128 << 10  # RFC 8878: Block_Maximum_Size is at most 128 KiB


def _read_exact(source: Reader, n: int) -> bytes:
    """`n` bytes, or fewer only at EOF (a trickling source may return a few bytes per read)."""
    data = source.read(n)
    while 0 < len(data) < n:
        more = source.read(n - len(data))
        if not more:
            break
        data += more
    return data


class _ZstdFrame:
    """The bytes of one zstd frame (RFC 8878), read by walking its block headers.

    The decompressor reads through this and can never read past the frame's last byte, so
    between two frames nothing is buffered anywhere: every stored byte read so far has been
    decoded and handed out. That is the point where a download can be resumed later.
    """

    def __init__(self, source: Reader, name: str, magic: bytes) -> None:
        self._source = source
        self._name = name
        self.header = magic + self._frame_header()
        self._out = self.header  # bytes owed to the decompressor before the next element
        self._left = 0  # data bytes of the current block still to pass through
        self._last = False
        self._done = False

    def _frame_header(self) -> bytes:
        descriptor = self._exact(1, "frame header")
        fcs_flag, single, checksum_flag, dict_flag = descriptor[0] >> 6, descriptor[0] >> 5 & 1, \
            descriptor[0] >> 2 & 1, descriptor[0] & 3
        if descriptor[0] & 0x08:
            raise DecompressError("corrupt zstd stream: reserved bit set in a frame header", self._name)
        self._checksum = bool(checksum_flag)
        size = (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
        return descriptor + (self._exact(size, "frame header") if size else b"")

    def _exact(self, n: int, what: str) -> bytes:
        data = _read_exact(self._source, n)
        if len(data) < n:
            raise DecompressError(f"zstd stream ends inside a {what} (truncated)", self._name)
        return data

    def read(self, n: int) -> bytes:
        while not self._out and self._left == 0:
            if not self._next_element():
                return b""
        if self._out:
            data, self._out = self._out[:n], self._out[n:]
            return data
        data = self._source.read(min(n, self._left))
        if not data:
            raise DecompressError("zstd stream ends inside a block (truncated)", self._name)
        self._left -= len(data)
        return data

    def _next_element(self) -> bool:
        """Queue the next block header (or the checksum); False once the frame is complete."""
        if self._done:
            return False
        if self._last:
            self._done = True
            if self._checksum:
                self._out = self._exact(4, "frame checksum")
            return self._checksum
        head = self._exact(3, "block header")
        value = int.from_bytes(head, "little")
        self._last, kind, size = bool(value & 1), value >> 1 & 3, value >> 3
        if kind == 3 or size > ZSTD_BLOCK_MAX:
            raise DecompressError(f"corrupt zstd stream: block type {kind} of {size} bytes", self._name)
        self._out = head
        self._left = 1 if kind == 1 else size  # an RLE block stores one byte
        return True


class ZstdReader:
    """Bounded zstd decompression with a capped window (a frame may ask for gigabytes).

    Frames are decoded one by one (`_ZstdFrame`); `at_frame_boundary()` tells when the last
    frame was decoded completely and the next one not begun. python-zstandard's stream reader
    ends quietly on a truncated frame, so each frame's declared content size (zstd writes it
    for files) is checked against what came out.
    """

    def __init__(self, source: Reader, name: str, max_window: int, chunk: int = DEFAULT_CHUNK) -> None:
        import zstandard  # lazy: keeps `otad --help` fast

        self._zstd = zstandard
        self._source = source
        self._name = name
        self._max_window = max_window
        # Compressed input is read in zstd's recommended size (one block, ~128 KiB): a larger
        # read is only another buffer held while the decompressor works through it.
        self._read_size = min(chunk, zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE)
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=max_window)
        self._frame: Optional[Any] = None  # the stream reader over the current frame
        self._declared = 0
        self._output = 0
        self._held = b""  # one byte taken by at_frame_boundary() to look for the frame's end
        self._frames = 0
        if not self._open_frame():
            raise DecompressError("not a zstd stream: it is empty", name)

    def read(self, n: int) -> bytes:
        if self._held:
            data, self._held = self._held, b""
            return data + self._read_frame(n - 1) if n > 1 else data
        while self._frame is not None or self._open_frame():
            out = self._read_frame(n)
            if out:
                return out
            self._close_frame()
        return b""

    def at_frame_boundary(self) -> bool:
        """True when every byte read from the source so far has been decoded and returned."""
        if self._held:
            return False
        if self._frame is None:
            return True
        self._held = self._read_frame(1)
        if self._held:
            return False
        self._close_frame()
        return True

    def _read_frame(self, n: int) -> bytes:
        assert self._frame is not None, "read() and at_frame_boundary() read only inside an open frame"
        try:
            out: bytes = self._frame.read(n)
        except self._zstd.ZstdError as exc:
            raise DecompressError(self._describe(exc), self._name) from exc
        self._output += len(out)
        return out

    def _open_frame(self) -> bool:
        """Start the next frame (skipping skippable ones); False at the end of the stream."""
        while True:
            magic = _read_exact(self._source, 4)
            if not magic:
                return False
            if len(magic) == 4 and magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:
                self._skip(int.from_bytes(self._exact_or_fail(4), "little"))
                continue
            if magic != ZSTD_MAGIC:
                what = "not a zstd stream" if self._frames == 0 else "data after the last zstd frame"
                raise DecompressError(f"{what}: bad frame magic {magic.hex()}", self._name)
            frame = _ZstdFrame(self._source, self._name, magic)
            try:
                declared = self._zstd.get_frame_parameters(frame.header).content_size
            except self._zstd.ZstdError as exc:
                raise DecompressError(f"not a zstd stream: {exc}", self._name) from exc
            self._declared = 0 if declared == self._zstd.CONTENTSIZE_UNKNOWN else declared
            self._output = 0
            self._frames += 1
            # stream_reader only calls read(); it does not need a real IO object.
            self._frame = self._decompressor.stream_reader(frame, read_size=self._read_size,  # type: ignore[arg-type]
                                                           read_across_frames=False)
            return True

    def _close_frame(self) -> None:
        self._frame = None
        if self._output < self._declared:
            raise DecompressError(f"zstd stream ends after {self._output} of the {self._declared} bytes its frame "
                                  "declares (truncated)", self._name)

    def _exact_or_fail(self, n: int) -> bytes:
        data = _read_exact(self._source, n)
        if len(data) < n:
            raise DecompressError("zstd stream ends inside a skippable frame (truncated)", self._name)
        return data

    def _skip(self, size: int) -> None:
        while size:
            data = self._source.read(min(size, self._read_size))
            if not data:
                raise DecompressError("zstd stream ends inside a skippable frame (truncated)", self._name)
            size -= len(data)

    def _describe(self, exc: Exception) -> str:
        text = str(exc)
        if "too much memory" in text or "window" in text.lower():
            return (f"zstd frame needs a window larger than the configured "
                    f"{self._max_window >> 20} MiB ({text}); rebuild without --long or raise zstd_max_window_mib")
        return f"corrupt zstd stream: {text}"


def decoder_for(source: Reader, name: str, decoding: Decoding, chunk: int = DEFAULT_CHUNK) -> Reader:
    if decoding.compressed is None:
        return source
    if decoding.compressed == "zlib":
        return GzipReader(source, name, chunk)
    if decoding.compressed == "zstd":
        return ZstdReader(source, name, decoding.zstd_max_window, chunk)
    raise DecompressError(f"unknown compression {decoding.compressed!r} (expected zlib or zstd)", name)


def decrypter_for(source: Reader, name: str, decoding: Decoding, chunk: int = DEFAULT_CHUNK) -> Reader:
    """The plaintext of an encrypted artifact; `source` itself when it is not encrypted."""
    if not decoding.encrypted:
        return source
    iv = decoding.aes_iv(name)
    assert decoding.key is not None
    return AesCbcReader(source, decoding.key.key, iv, name, chunk)


def stream_artifact(
    member: Reader,
    name: str,
    expected_sha256: Optional[str],
    decoding: Decoding,
    sink: Sink,
    *,
    chunk: int = DEFAULT_CHUNK,
    on_bytes: Optional[Callable[[int], None]] = None,
    expected_size: Optional[int] = None,
    resume: Optional[StreamPosition] = None,
    checkpoints: Optional[Checkpoints] = None,
) -> ArtifactResult:
    """Decode `member` into `sink` chunk by chunk, then check the stored bytes' sha256.

    Stops with ImageTooLarge before the sink would take more than its capacity. The hash
    is only known at the end: a mismatch is raised after the sink was written, so callers
    must treat the target as garbage until this returns. `expected_size` is the decoded
    size sw-description declares (`decompressed-size`), checked when given. `resume` goes on
    from a position `checkpoints` handed out before (`member` and `sink` continue from there).
    """
    if resume is None:
        stored = HashingReader(member, on_bytes, ResumableHash("sha256") if checkpoints else None)
    else:
        stored = HashingReader(member, on_bytes, resume.stored_sha256, resume.stored_count)
    try:
        written = _decode_into(sink, stored, name, decoding, chunk, resume.written if resume else 0, checkpoints)
    except (DecryptError, DecompressError) as exc:
        if decoding.encrypted:
            _hash_outranks(stored, name, expected_sha256, chunk, exc)
        raise
    if expected_size is not None and written != expected_size:
        raise DecompressError(f"decoded {written} bytes, sw-description declares {expected_size}", name)
    digest = stored.sha256.hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise _mismatch(expected_sha256, digest, name)
    return ArtifactResult(name, stored.count, written, digest)


def resumable(decoding: Decoding) -> bool:
    """Whether decoding can stop and go on later: plain or zstd (at frame ends), not encrypted."""
    return not decoding.encrypted and decoding.compressed in (None, "zstd")


def _decode_into(sink: Sink, stored: HashingReader, name: str, decoding: Decoding, chunk: int, written: int,
                 checkpoints: Optional[Checkpoints]) -> int:
    """stored → [decrypt] → [decompress] → sink; returns the bytes written (`written` before)."""
    plain = decrypter_for(stored, name, decoding, chunk)
    decoded = decoder_for(plain, name, decoding, chunk)
    capacity = sink.capacity
    if checkpoints is not None and not resumable(decoding):
        checkpoints = None
    next_checkpoint = written + checkpoints.every_bytes if checkpoints else 0
    while True:
        data = decoded.read(chunk)
        if not data:
            break
        if capacity is not None and written + len(data) > capacity:
            raise ImageTooLarge(
                f"decoded image exceeds its target's {capacity} bytes (stopped after {written + len(data)})", name)
        sink.write(data)
        written += len(data)
        if checkpoints is not None and written >= next_checkpoint and _at_boundary(decoded):
            checkpoints.save(StreamPosition(stored.sha256, stored.count, written, data))
            next_checkpoint = written + checkpoints.every_bytes
        del data  # else two output chunks are alive while the next one is decoded
    # A decompressor stops at its end marker, possibly before its source ends. What is left
    # must be nothing; for AES, reading to the end is also what checks the padding.
    if _drain(plain, chunk):
        raise DecompressError("data after the end of the compressed stream", name)
    return written


def _at_boundary(decoded: Reader) -> bool:
    return decoded.at_frame_boundary() if isinstance(decoded, ZstdReader) else True


def _drain(reader: Reader, chunk: int) -> int:
    """Read to the end; returns how many bytes were left."""
    left = 0
    while True:
        data = reader.read(chunk)
        if not data:
            return left
        left += len(data)


def _hash_outranks(stored: HashingReader, name: str, expected: Optional[str], chunk: int, exc: Exception) -> None:
    """Report a tampered encrypted image as what it is, a hash mismatch. Reporting its padding
    or decompression error instead would make the device a padding oracle (errors travel to
    hawkBit) for anyone who can hand it a modified bundle."""
    stored.drain(chunk)
    digest = stored.sha256.hexdigest()
    if expected is not None and digest != expected.lower():
        raise _mismatch(expected, digest, name) from exc


def _mismatch(expected: str, digest: str, name: str) -> ImageHashMismatch:
    return ImageHashMismatch(f"sha256 mismatch: sw-description says {expected}, stored bytes hash to {digest}", name)
