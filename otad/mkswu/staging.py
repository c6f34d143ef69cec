"""Staging the artifacts: each one compressed → encrypted → hashed, in bounded chunks.

Compression as swugenerator's tools write it (gzip -9 -n; zstd level 3, here in frames that an
interrupted download can resume at), AES-CBC with a fresh IV per artifact, and the size,
sha256 and crc sum of the bytes as stored. Staged files wait next to the output, not in /tmp.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Iterator, List, Optional, Protocol, Sequence

from otad.errors import ConfigError, OtadError
from otad.mkswu.inputs import chunks, open_source

log = logging.getLogger(__name__)

ZLIB_LEVEL = 9  # swugenerator runs `gzip -9 -n`
ZSTD_LEVEL = 3  # swugenerator runs the zstd CLI, whose default level is 3
ZSTD_FRAME_MIB = 4  # frames this large cost ~0.1 % of size at level 3 (window 2 MiB) and make resume points
_MAX_MEMBER = 0xFFFFFFFF  # c_filesize is 32 bits


@dataclass(frozen=True)
class Job:
    """One member to store: what it is made from and how."""

    member: str
    source: str
    compression: Optional[str]  # applied by mkswu (None with --no-compress)
    encrypted: bool
    delta: bool = False  # the member is the zchunk header of the artifact (otad.mkswu.delta)

    def how(self) -> str:
        if self.delta:
            return "zchunk header"
        return ", ".join([self.compression or "not compressed"] + (["encrypted"] if self.encrypted else []))


@dataclass(frozen=True)
class StoredArtifact:
    """One member as stored in the bundle."""

    member: str
    source: str  # the artifact file
    path: str  # what is copied into the bundle: a staged file, or `source` itself
    size: int
    sha256: str
    checksum: int  # the crc format's byte sum
    compression: Optional[str]
    ivt: Optional[str]
    plain_size: int  # bytes before encryption: properties.decrypted-size
    source_size: int  # bytes of the artifact: properties.decompressed-size
    offset: int = 0  # where the member's bytes begin in `path`
    how: str = ""  # what the member is, when it is not the artifact as stored (a zchunk header)


class Digest:
    """Size, sha256 and crc sum of the bytes as stored; writes them through to `out` if given."""

    def __init__(self, out: Optional[IO[bytes]] = None) -> None:
        from otad.swu.cpio import byte_sum

        self._byte_sum: Callable[[bytes], int] = byte_sum
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.sum = 0

    def update(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        self.sum += self._byte_sum(data)

    def feed(self, chunks: Iterator[bytes]) -> "Digest":
        for chunk in chunks:
            self.update(chunk)
        return self

class _Stage(Protocol):
    def update(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    """SWUpdate's "zlib" is a gzip stream; zlib writes its header with mtime 0 and no name."""

    def __init__(self) -> None:
        self._obj = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Zstd:
    """zstd frames with their content size and a checksum, as the zstd CLI writes one. With
    `frame_bytes`, a new frame starts every that many input bytes: otad can resume an
    interrupted download at a frame's end (SWUpdate and `zstd -d` read the frames as one)."""

    def __init__(self, size: int, frame_bytes: int = 0) -> None:
        import zstandard

        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self._frame_bytes = frame_bytes or max(size, 1)
        self._left = size  # input bytes still to come, as pledged
        self._open()

    def _open(self) -> None:
        self._in_frame = min(self._frame_bytes, self._left)
        self._left -= self._in_frame
        self._obj = self._compressor.compressobj(size=self._in_frame)

    def update(self, data: bytes) -> bytes:
        out = []
        while len(data) > self._in_frame and self._left > 0:
            out.append(self._obj.compress(data[:self._in_frame]) + self._obj.flush())
            data = data[self._in_frame:]
            self._open()
        self._in_frame -= len(data)
        out.append(self._obj.compress(data))
        return b"".join(out)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Encrypt:
    """AES-CBC with PKCS#7 padding, as `openssl enc -aes-256-cbc -K … -iv … -nosalt`."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        from cryptography.hazmat.primitives import padding as sym_padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._padder = sym_padding.PKCS7(128).padder()
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self.plain_size = 0

    def update(self, data: bytes) -> bytes:
        self.plain_size += len(data)
        return self._cipher.update(self._padder.update(data))

    def finish(self) -> bytes:
        return self._cipher.update(self._padder.finalize()) + self._cipher.finalize()


def _through(stages: Sequence[_Stage], data: bytes) -> bytes:
    for stage in stages:
        data = stage.update(data)
    return data


def _drain(stages: Sequence[_Stage]) -> bytes:
    data = b""
    for stage in stages:
        data = stage.update(data) + stage.finish()
    return data


def store(job: Job, key: Optional[bytes], staging: str, zstd_frame_bytes: int = 0) -> StoredArtifact:
    """Process one artifact into the staging directory (or hash it where it is, if stored as is)."""
    iv = os.urandom(16) if job.encrypted else None
    with open_source(job.source) as src:
        source_size = os.fstat(src.fileno()).st_size
        stages: List[_Stage] = []
        if job.compression:
            stages.append(_Gzip() if job.compression == "zlib" else _Zstd(source_size, zstd_frame_bytes))
        encrypt = _Encrypt(key, iv) if key is not None and iv is not None else None
        stages += [encrypt] if encrypt else []
        path = os.path.join(staging, job.member) if stages else job.source
        digest = _pipe(src, job.source, stages, path) if stages else Digest().feed(chunks(src, job.source))
    if digest.size > _MAX_MEMBER:
        raise ConfigError(f"{job.member} would be {digest.size} bytes; a cpio member holds at most {_MAX_MEMBER}",
                          job.source)
    log.info("%s: %d bytes from %s (%s)", job.member, digest.size, job.source, job.how())
    return StoredArtifact(job.member, job.source, path, digest.size, digest.sha256.hexdigest(),
                          digest.sum & 0xFFFFFFFF, job.compression, iv.hex() if iv else None,
                          encrypt.plain_size if encrypt else digest.size, source_size)


def _pipe(src: IO[bytes], source: str, stages: Sequence[_Stage], staged: str) -> Digest:
    import zstandard

    try:
        with open(staged, "xb") as out:
            digest = Digest(out)
            for chunk in chunks(src, source):
                digest.update(_through(stages, chunk))
            digest.update(_drain(stages))
            return digest
    except OSError as exc:
        raise OtadError(f"cannot write: {exc.strerror}", staged) from exc
    except zstandard.ZstdError as exc:  # the pledged size no longer matches
        raise ConfigError(f"changed while being compressed: {exc}", source) from exc


@contextlib.contextmanager
def staging_dir(output: str) -> Iterator[str]:
    """Processed artifacts wait next to the output (the same disk), not in /tmp (often RAM)."""
    directory = os.path.dirname(output)
    try:
        staging = tempfile.TemporaryDirectory(prefix=f".{os.path.basename(output)}.mkswu-", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot create a staging directory next to the output: {exc.strerror}",
                          directory) from exc
    with staging as path:
        yield path
