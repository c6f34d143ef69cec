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
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from otad.errors import DecompressError, DecryptError, ImageHashMismatch, ImageTooLarge
from otad.swu.crypto import AesCbcReader, AesKey

DEFAULT_CHUNK = 1 << 20


class Reader(Protocol):
    def read(self, n: int) -> bytes: ...


class Sink(Protocol):
    """Where decoded bytes go. `capacity` is how many bytes it can take (None: no limit)."""

    capacity: Optional[int]

    def write(self, data: bytes) -> None: ...


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


class HashingReader:
    """Passes bytes through while hashing them; `on_bytes(n)` reports progress."""

    def __init__(self, source: Reader, on_bytes: Optional[Callable[[int], None]] = None) -> None:
        self._source = source
        self._on_bytes = on_bytes
        self.sha256 = hashlib.sha256()
        self.count = 0

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
        left = 0
        while True:
            data = self.read(chunk)
            if not data:
                return left
            left += len(data)


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


class _Prefixed:
    """A reader that first returns `head`, then continues from `source`."""

    def __init__(self, head: bytes, source: Reader) -> None:
        self._head = head
        self._source = source

    def read(self, n: int) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._source.read(n)


ZSTD_MAX_FRAME_HEADER = 18


def _read_at_least(source: Reader, n: int, chunk: int) -> bytes:
    """Read until `n` bytes or EOF (a trickling source may return a few bytes per read)."""
    data = source.read(chunk)
    while 0 < len(data) < n:
        more = source.read(chunk)
        if not more:
            break
        data += more
    return data


class ZstdReader:
    """Bounded zstd decompression with a capped window (a frame may ask for gigabytes).

    python-zstandard's stream reader ends quietly on a truncated frame, so the first frame's
    declared content size (zstd writes it for files) is checked against what came out.
    """

    def __init__(self, source: Reader, name: str, max_window: int, chunk: int = DEFAULT_CHUNK) -> None:
        import zstandard  # lazy: keeps `otad --help` fast

        self._name = name
        self._max_window = max_window
        self._error = zstandard.ZstdError
        # Compressed input is read in zstd's recommended size (one block, ~128 KiB): a larger
        # read is only another buffer held while the decompressor works through it.
        read_size = min(chunk, zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE)
        head = _read_at_least(source, ZSTD_MAX_FRAME_HEADER, read_size)
        try:
            declared = zstandard.get_frame_parameters(head).content_size
        except zstandard.ZstdError as exc:
            raise DecompressError(f"not a zstd stream: {exc}", name) from exc
        self._min_output = 0 if declared == zstandard.CONTENTSIZE_UNKNOWN else declared
        decompressor = zstandard.ZstdDecompressor(max_window_size=max_window)
        # stream_reader only calls read(); it does not need a real IO object.
        self._reader: Any = decompressor.stream_reader(_Prefixed(head, source), read_size=read_size,  # type: ignore[arg-type]
                                                       read_across_frames=True)
        self._output = 0

    def read(self, n: int) -> bytes:
        try:
            out: bytes = self._reader.read(n)
        except self._error as exc:
            raise DecompressError(self._describe(exc), self._name) from exc
        self._output += len(out)
        if not out and self._output < self._min_output:
            raise DecompressError(
                f"zstd stream ends after {self._output} of the {self._min_output} bytes its frame declares (truncated)",
                self._name)
        return out

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
) -> ArtifactResult:
    """Decode `member` into `sink` chunk by chunk, then check the stored bytes' sha256.

    Stops with ImageTooLarge before the sink would take more than its capacity. The hash
    is only known at the end: a mismatch is raised after the sink was written, so callers
    must treat the target as garbage until this returns. `expected_size` is the decoded
    size sw-description declares (`decompressed-size`), checked when given.
    """
    stored = HashingReader(member, on_bytes)
    try:
        written = _decode_into(sink, stored, name, decoding, chunk)
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


def _decode_into(sink: Sink, stored: HashingReader, name: str, decoding: Decoding, chunk: int) -> int:
    """stored → [decrypt] → [decompress] → sink; returns the bytes written."""
    plain = decrypter_for(stored, name, decoding, chunk)
    decoded = decoder_for(plain, name, decoding, chunk)
    written = 0
    capacity = sink.capacity
    while True:
        data = decoded.read(chunk)
        if not data:
            break
        if capacity is not None and written + len(data) > capacity:
            raise ImageTooLarge(
                f"decoded image exceeds its target's {capacity} bytes (stopped after {written + len(data)})", name)
        sink.write(data)
        written += len(data)
        del data  # else two output chunks are alive while the next one is decoded
    # A decompressor stops at its end marker, possibly before its source ends. What is left
    # must be nothing; for AES, reading to the end is also what checks the padding.
    if _drain(plain, chunk):
        raise DecompressError("data after the end of the compressed stream", name)
    return written


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
