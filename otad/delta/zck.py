"""The zchunk header (zchunk_format.txt, as libzck 1.2.3 reads and writes it): parse and build.

Owns the bytes of a header — lead, preface, index, signatures — and the chunk index they
describe, kept as compact arrays (28 bytes a chunk) beside the header's own bytes, which hold the
digests (in memory, or left in a file: FileDigests, the only I/O here). Bytes in, frozen
dataclasses out. Every malformed input is one ZckFormatError naming the field and its byte offset.
Matching chunks, decoding their data and fetching them belong to the other delta modules.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
import weakref
from array import array
from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from otad.errors import ZckFormatError, ZckHeaderMismatch

ZCK_ID = b"\0ZCK1"
DETACHED_ID = b"\0ZHR1"  # a header stored without its body; hashed as if it were ZCK_ID

Buffer = Union[bytes, mmap.mmap]  # a header's bytes: in memory, or mapped (read in place)

HASH_SHA1, HASH_SHA256, HASH_SHA512, HASH_SHA512_128 = 0, 1, 2, 3
_HASHES = {HASH_SHA1: ("sha1", 20), HASH_SHA256: ("sha256", 32), HASH_SHA512: ("sha512", 64),
           HASH_SHA512_128: ("sha512", 16)}  # SHA-512/128 is SHA-512 cut to 16 bytes, not SHA-512/t
HASH_NAMES = {HASH_SHA1: "SHA-1", HASH_SHA256: "SHA-256", HASH_SHA512: "SHA-512",
              HASH_SHA512_128: "SHA-512/128"}

FLAG_STREAMS, FLAG_OPTIONAL, FLAG_UNCOMPRESSED = 1, 2, 4
COMP_NONE, COMP_ZSTD = 0, 2
COMP_NAMES = {COMP_NONE: "none", COMP_ZSTD: "zstd"}

MAX_COMPINT_BYTES = 10  # libzck's MAX_COMP_SIZE for a 64-bit size_t
CHUNK_MAX_BYTES = 10 << 20  # libzck's CHUNK_DEFAULT_MAX: no writer makes a bigger chunk
AUTO_CHUNK_MAX_BYTES = 128 << 10  # buzhash chunks end here at the latest


@dataclass(frozen=True)
class Limits:
    """What a header may claim before it is refused (memory is planned from these)."""

    max_header_bytes: int = 32 << 20  # a 1 GiB image in 16 KiB chunks has a 4.5 MB header
    max_chunks: int = 1 << 20
    max_chunk_bytes: int = CHUNK_MAX_BYTES

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_chunks", "max_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name}: expected >= 1, got {getattr(self, name)!r}")
        if self.max_chunk_bytes > 1 << 31:  # lengths are kept as 32-bit unsigned ints
            raise ValueError(f"Limits.max_chunk_bytes: expected <= 2**31, got {self.max_chunk_bytes}")


@dataclass(frozen=True)
class Chunk:
    """One data chunk. `start` is where its compressed bytes begin in the .zck file, `offset`
    where its bytes begin in the image; `digest_uncompressed` is b"" without flag 2."""

    number: int  # 0-based among data chunks (libzck numbers the dict 0 and this chunk number+1)
    start: int
    comp_length: int
    offset: int
    length: int
    digest: bytes
    digest_uncompressed: bytes

    @property
    def end(self) -> int:
        """One past the last compressed byte in the .zck file."""
        return self.start + self.comp_length


class DigestBlob:
    """Where an index's digests are: bytes in memory, read by `read(position, n)`."""

    def __init__(self, data: Buffer) -> None:
        self.data = data

    def read(self, pos: int, n: int) -> bytes:
        return self.data[pos:pos + n]


class FileDigests(DigestBlob):
    """The digests of a header kept in a file (its staged copy) and read through a small window:
    a 1 GiB image in 16 KiB chunks has 4 MB of digests that need not be in memory. The file is
    opened once; what was verified is what is read, whatever happens to its name later."""

    WINDOW = 8192

    def __init__(self, path: str, base: int = 0) -> None:
        super().__init__(b"")
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._close = weakref.finalize(self, os.close, self._fd)
        self._base = base
        self._lo = 0

    def read(self, pos: int, n: int) -> bytes:
        at = pos - self._lo
        if at < 0 or at + n > len(self.data):
            self.data, self._lo, at = os.pread(self._fd, max(self.WINDOW, n), self._base + pos), pos, 0
            if len(self.data) < n:
                raise ZckHeaderMismatch(f"the staged header ends at byte {pos + len(self.data)}", self.path)
        return self.data[at:at + n]

    def close(self) -> None:
        self._close()


@dataclass(frozen=True, eq=False)
class ChunkIndex:
    """The chunk table of a header: the dict entry apart, then the data chunks as arrays.

    `starts` are absolute offsets in the .zck file (header length included), `offsets` are
    offsets in the image. The digests are not copied: chunk i's stored digest (when `stored`)
    and then its uncompressed one (when `uncompressed`) are `digest_size` bytes each at
    `entries[i]` of `blob` (the header's own bytes), or at i * their size when `entries` is
    empty. About 28 bytes a chunk beside the blob, which may stay on disk (FileDigests).
    """

    hash_type: int
    digest_size: int
    dict_chunk: Optional[Chunk]  # None: no dictionary (length 0)
    comp_lengths: "array[int]" = field(repr=False)  # "I": a chunk is at most 10 MiB
    lengths: "array[int]" = field(repr=False)
    starts: "array[int]" = field(repr=False)
    offsets: "array[int]" = field(repr=False)
    entries: "array[int]" = field(repr=False)
    blob: DigestBlob = field(repr=False)
    stored: bool = True
    uncompressed: bool = True

    @classmethod
    def of_source(cls, lengths: Sequence[int], digests: "bytes | bytearray", hash_type: int = HASH_SHA256) -> "ChunkIndex":
        """The index of an uncompressed source, for matching (`matching_only`): chunk lengths and
        their concatenated digests (what `zck --compression-format=none -u` would write)."""
        size = _HASHES[hash_type][1]
        if len(digests) != size * len(lengths):
            raise ValueError(f"{len(lengths)} chunks need {size * len(lengths)} digest bytes, got {len(digests)}")
        offsets, at = array("Q", bytes(8 * len(lengths))), 0
        for i, n in enumerate(lengths):
            offsets[i] = at
            at += n
        return cls(hash_type, size, None, array("I"), array("I", lengths), array("Q"), offsets, array("I"),
                   DigestBlob(bytes(digests)), stored=False)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def matching_only(self) -> bool:
        """An index of a source, for matching: no compressed lengths, starts or digests."""
        return len(self.starts) != len(self.lengths)

    def __iter__(self) -> Iterator[Chunk]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Chunk:
        if not 0 <= i < len(self.lengths):
            raise IndexError(f"chunk {i} of {len(self.lengths)}")
        return Chunk(i, self.starts[i], self.comp_lengths[i], self.offsets[i], self.lengths[i],
                     self.digest(i), self.digest_uncompressed(i))

    def _at(self, i: int) -> int:
        if self.entries:
            return self.entries[i]
        return i * self.digest_size * (self.stored + self.uncompressed)

    def digest(self, i: int) -> bytes:
        return self.blob.read(self._at(i), self.digest_size) if self.stored else b""

    def digest_uncompressed(self, i: int) -> bytes:
        if not self.uncompressed:
            return b""
        return self.blob.read(self._at(i) + self.digest_size * self.stored, self.digest_size)

    @property
    def digests(self) -> bytes:
        """Every stored digest, concatenated (b"" for a source's index): for tests and tools."""
        return b"".join(self.digest(i) for i in range(len(self)))

    @property
    def digests_uncompressed(self) -> bytes:
        """Every uncompressed digest, concatenated (b"" without flag 2)."""
        return b"".join(self.digest_uncompressed(i) for i in range(len(self)))

    def on_file(self, path: str, base: int = 0) -> "ChunkIndex":
        """The same index reading its digests from `path` (the header's bytes from `base` on,
        as they were parsed) instead of from memory."""
        return replace(self, blob=FileDigests(path, base))

    @property
    def image_length(self) -> int:
        """Bytes of the image (the data chunks uncompressed; the dict is not part of it)."""
        return self.offsets[-1] + self.lengths[-1] if self.lengths else 0

    @property
    def data_length(self) -> int:
        """Bytes of the body: the compressed dict and chunks."""
        dict_bytes = self.dict_chunk.comp_length if self.dict_chunk else 0
        return dict_bytes + sum(self.comp_lengths)

    def uniform_length(self) -> Optional[int]:
        """The one length of every chunk but the last (a fixed-size profile), else None."""
        if not self.lengths:
            return None
        first, same = self.lengths[0], self.lengths.count(self.lengths[0])
        if same == len(self.lengths) or (same == len(self.lengths) - 1 and self.lengths[-1] < first):
            return first
        return None


@dataclass(frozen=True, eq=False)
class ZckHeader:
    """A parsed, checksum-verified zchunk header."""

    ident: bytes  # ZCK_ID or DETACHED_ID
    hash_type: int  # header and data checksum: HASH_SHA1 or HASH_SHA256
    lead_length: int
    header_length: int  # preface + index + signatures: what the lead calls "header size"
    header_digest: bytes
    data_digest: bytes  # all zeros when flag 2 is set (the format forbids checking it then)
    flags: int
    comp_type: int
    optional_elements: Tuple[Tuple[int, bytes], ...]
    index: ChunkIndex
    sha256: str  # of the header bytes exactly as given: what sw-description's sha256 names

    def on_file(self, path: str) -> "ZckHeader":
        """The same header, its digests read from `path`: a file holding exactly its bytes."""
        return replace(self, index=self.index.on_file(path))

    @property
    def length(self) -> int:
        """Lead + header: zck_read_header's "Header size", where the body begins."""
        return self.lead_length + self.header_length

    @property
    def has_uncompressed_digests(self) -> bool:
        return bool(self.flags & FLAG_UNCOMPRESSED)

    @property
    def file_length(self) -> int:
        """Bytes of the whole .zck file: header and body."""
        return self.length + self.index.data_length


@dataclass(frozen=True)
class Lead:
    """What the first bytes of a zchunk file say: enough to know how much header to read."""

    ident: bytes
    hash_type: int
    header_length: int
    digest_offset: int
    header_digest: bytes

    @property
    def length(self) -> int:
        """Bytes of the lead itself."""
        return self.digest_offset + len(self.header_digest)

    @property
    def total_length(self) -> int:
        """Lead + header: the bytes parse_header needs."""
        return self.length + self.header_length


# --- compressed integers ----------------------------------------------------------------

def encode_int(value: int) -> bytes:
    """A compressed integer: 7 bits a byte, least significant first, top bit set on the last."""
    if value < 0:
        raise ValueError(f"compressed integers are unsigned, got {value}")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value == 0:
            out.append(low | 0x80)
            return bytes(out)
        out.append(low)


class _Reader:
    """Reads fields of one header strictly; errors name the field and its offset."""

    def __init__(self, data: Buffer, name: str, pos: int = 0, end: Optional[int] = None) -> None:
        self.data = data
        self.name = name
        self.pos = pos
        self.end = len(data) if end is None else end

    def fail(self, what: str, field_name: str, offset: Optional[int] = None) -> ZckFormatError:
        return ZckFormatError(what, self.name, field_name, self.pos if offset is None else offset)

    def compint(self, field_name: str) -> int:
        start, value, shift = self.pos, 0, 0
        for count in range(1, MAX_COMPINT_BYTES + 1):
            if self.pos >= self.end:
                raise self.fail(f"truncated: the integer runs past byte {self.end}", field_name, start)
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte & 0x80:
                if byte == 0x80 and count > 1:
                    raise self.fail("non-canonical integer (a trailing zero byte)", field_name, start)
                if value >= 1 << 64:
                    raise self.fail("integer larger than 64 bits", field_name, start)
                return value
        raise self.fail(f"integer longer than {MAX_COMPINT_BYTES} bytes", field_name, start)

    def skip(self, n: int, field_name: str) -> None:
        if self.pos + n > self.end:
            raise self.fail(f"truncated: {n} bytes needed, {max(0, self.end - self.pos)} left", field_name)
        self.pos += n

    def bytes(self, n: int, field_name: str) -> bytes:
        if self.pos + n > self.end:
            raise self.fail(f"truncated: {n} bytes needed, {max(0, self.end - self.pos)} left", field_name)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


# --- parsing ------------------------------------------------------------------------------

def parse_lead(data: Buffer, name: str = "zchunk header") -> Lead:
    """The lead from the first bytes of a header or .zck file (at most 5 + 20 + 32 are needed)."""
    r = _Reader(bytes(data[:5 + 2 * MAX_COMPINT_BYTES + 32]), name)
    ident = r.bytes(5, "lead.id")
    if ident not in (ZCK_ID, DETACHED_ID):
        raise r.fail(f"expected {ZCK_ID!r} or {DETACHED_ID!r}, got {ident!r}: not a zchunk file", "lead.id", 0)
    at = r.pos
    hash_type = r.compint("lead.checksum_type")
    if hash_type not in (HASH_SHA1, HASH_SHA256):
        raise r.fail(f"expected 0 (SHA-1) or 1 (SHA-256), got {hash_type}", "lead.checksum_type", at)
    header_length = r.compint("lead.header_size")
    digest_offset = r.pos
    digest = r.bytes(_HASHES[hash_type][1], "lead.header_checksum")
    return Lead(ident, hash_type, header_length, digest_offset, digest)


def parse_header(data: Buffer, *, name: str = "zchunk header", exact: bool = True,
                 limits: Limits = Limits(), matching: bool = False) -> ZckHeader:
    """Parse and verify a header. `exact`: `data` is the header and nothing else (a bundle
    member); otherwise the header is the start of `data` (a .zck file's first bytes).
    `matching`: the header is a source's index, kept only for matching (ChunkIndex.matching_only)."""
    if not isinstance(data, (bytes, mmap.mmap)):
        data = bytes(data)  # a mapping is read in place: a 1 GiB image's header is 4.5 MB
    lead = parse_lead(data, name)
    total = lead.total_length
    if total > limits.max_header_bytes:
        raise ZckFormatError(f"{total} bytes, more than the limit of {limits.max_header_bytes}", name,
                             "lead.header_size", 5)
    if len(data) < total:
        raise ZckFormatError(f"truncated: the lead announces {total} bytes, got {len(data)}", name,
                             "lead.header_size", 5)
    if exact and len(data) > total:
        raise ZckFormatError(f"{len(data) - total} bytes after the {total}-byte header", name, "header", total)
    if len(data) > total:
        data = data[:total]  # the index keeps these bytes (its digests): not a whole file's body
    _check_checksum(data, lead, name)
    r = _Reader(data, name, lead.length, total)
    data_digest, flags, comp, optional, index_size = _parse_preface(r, lead.hash_type)
    index = _parse_index(r, index_size, flags, comp, total, limits, matching)
    _parse_signatures(r)
    if r.pos != total:
        raise r.fail(f"{total - r.pos} unused bytes after the signatures", "header")
    return ZckHeader(lead.ident, lead.hash_type, lead.length, lead.header_length, lead.header_digest,
                     data_digest, flags, comp, optional, index,
                     hashlib.sha256(data).hexdigest())


def _check_checksum(data: Buffer, lead: Lead, name: str) -> None:
    algorithm = _HASHES[lead.hash_type][0]
    h = hashlib.new(algorithm)
    view = memoryview(data)
    h.update(ZCK_ID)  # a detached header hashes as the file it came from
    h.update(view[5:lead.digest_offset])
    h.update(view[lead.length:lead.total_length])
    view.release()
    if not hmac.compare_digest(h.digest(), lead.header_digest):
        raise ZckFormatError(f"expected {h.hexdigest()}, got {lead.header_digest.hex()}", name,
                             "lead.header_checksum", lead.digest_offset)


def _parse_preface(r: _Reader, hash_type: int) -> Tuple[bytes, int, int, Tuple[Tuple[int, bytes], ...], int]:
    data_digest = r.bytes(_HASHES[hash_type][1], "preface.data_checksum")
    at = r.pos
    flags = r.compint("preface.flags")
    if flags & FLAG_STREAMS:
        raise r.fail("data streams (flag 0) are not supported, as in libzck", "preface.flags", at)
    if flags & ~(FLAG_OPTIONAL | FLAG_UNCOMPRESSED):
        raise r.fail(f"unknown flags {flags & ~(FLAG_OPTIONAL | FLAG_UNCOMPRESSED):#x} (known: 0x2, 0x4)",
                     "preface.flags", at)
    at = r.pos
    comp = r.compint("preface.compression_type")
    if comp not in COMP_NAMES:
        raise r.fail(f"expected 0 (none) or 2 (zstd), got {comp}", "preface.compression_type", at)
    optional: List[Tuple[int, bytes]] = []
    if flags & FLAG_OPTIONAL:
        at = r.pos
        count = r.compint("preface.optional_count")
        if count == 0:
            raise r.fail("flag 1 is set but there are no optional elements", "preface.optional_count", at)
        for i in range(count):
            ident = r.compint(f"preface.optional[{i}].id")
            size = r.compint(f"preface.optional[{i}].size")
            optional.append((ident, r.bytes(size, f"preface.optional[{i}].data")))
    index_size = r.compint("preface.index_size")
    return data_digest, flags, comp, tuple(optional), index_size


def _parse_index(r: _Reader, index_size: int, flags: int, comp: int, total: int, limits: Limits,
                 matching: bool = False) -> ChunkIndex:
    start = r.pos
    if start + index_size > total:
        raise r.fail(f"{index_size} bytes run past the header's end at byte {total}", "preface.index_size", start)
    end = start + index_size
    ix = _Reader(r.data, r.name, start, end)
    at = ix.pos
    hash_type = ix.compint("index.checksum_type")
    if hash_type not in _HASHES:
        raise ix.fail(f"expected 0..3 (SHA-1, SHA-256, SHA-512, SHA-512/128), got {hash_type}",
                      "index.checksum_type", at)
    at = ix.pos
    count = ix.compint("index.chunk_count")
    if count == 0:
        raise ix.fail("expected at least the dict entry, got 0", "index.chunk_count", at)
    if count > limits.max_chunks + 1:
        raise ix.fail(f"{count} chunks, more than the limit of {limits.max_chunks}", "index.chunk_count", at)
    size = _HASHES[hash_type][1]
    uncompressed = bool(flags & FLAG_UNCOMPRESSED)
    table = _Table(size, count - 1, matching)
    data_start = total
    for i in range(count):
        label = "index.dict" if i == 0 else f"index.chunk[{i - 1}]"
        if ix.pos >= end:
            raise ix.fail(f"the index ends after {i} of {count} entries", label)
        entry_at = ix.pos
        if i == 0:
            digest = ix.bytes(size, f"{label}.checksum")
            udigest = ix.bytes(size, f"{label}.uncompressed_checksum") if uncompressed else b""
        else:
            ix.skip(size * (1 + uncompressed), f"{label}.checksum")
        comp_length = ix.compint(f"{label}.length")
        length_at = ix.pos
        length = ix.compint(f"{label}.uncompressed_length")
        _check_lengths(ix, label, comp, comp_length, length, length_at, limits, dict_entry=i == 0)
        if i == 0:
            if length == 0 and (any(digest) or any(udigest)):
                raise ix.fail("expected all-zero checksums for an empty dict", f"{label}.checksum", entry_at)
            table.dict_chunk = Chunk(-1, data_start, comp_length, 0, length, digest, udigest) if length else None
            table.next_start = data_start + comp_length
        else:
            table.add(entry_at, comp_length, length)
    if ix.pos != end:
        raise ix.fail(f"{end - ix.pos} bytes left in the index after {count} entries", "index", ix.pos)
    r.pos = end
    return table.freeze(hash_type, DigestBlob(r.data), uncompressed)


def _check_lengths(ix: _Reader, label: str, comp: int, comp_length: int, length: int, at: int,
                   limits: Limits, *, dict_entry: bool) -> None:
    if length > limits.max_chunk_bytes:
        raise ix.fail(f"{length} bytes, more than the limit of {limits.max_chunk_bytes}",
                      f"{label}.uncompressed_length", at)
    if length == 0 and not dict_entry:
        raise ix.fail("an empty chunk (libzck never writes one)", f"{label}.uncompressed_length", at)
    if length == 0 and comp_length != 0:
        raise ix.fail(f"expected 0 for an empty dict, got {comp_length}", f"{label}.length", at)
    if comp == COMP_NONE and comp_length != length:
        raise ix.fail(f"expected {length} (the uncompressed length; the file is not compressed), "
                      f"got {comp_length}", f"{label}.length", at)
    if comp == COMP_ZSTD and length and not 0 < comp_length <= zstd_bound(length):
        raise ix.fail(f"expected 1..{zstd_bound(length)} for {length} bytes of zstd, got {comp_length}",
                      f"{label}.length", at)


def _parse_signatures(r: _Reader) -> None:
    at = r.pos
    count = r.compint("signatures.count")
    if count:
        raise r.fail(f"expected 0 signatures (no type is defined; libzck refuses any), got {count}",
                     "signatures.count", at)


class _Table:
    """Fills the arrays of a ChunkIndex entry by entry (sized once: `count` entries); `matching`
    keeps only what matching a source needs (lengths, offsets, digests): no starts or
    compressed lengths."""

    def __init__(self, digest_size: int, count: int, matching: bool = False) -> None:
        self.digest_size = digest_size
        self.matching = matching
        self.dict_chunk: Optional[Chunk] = None
        self.next_start = 0
        self.next_offset = 0
        self.n = 0
        self.comp_lengths = array("I") if matching else array("I", bytes(4 * count))
        self.starts = array("Q") if matching else array("Q", bytes(8 * count))
        self.lengths = array("I", bytes(4 * count))
        self.offsets = array("Q", bytes(8 * count))
        self.entries = array("I", bytes(4 * count))

    def add(self, entry_at: int, comp_length: int, length: int) -> None:
        i = self.n
        if not self.matching:
            self.starts[i] = self.next_start
            self.comp_lengths[i] = comp_length
        self.offsets[i] = self.next_offset
        self.lengths[i] = length
        self.entries[i] = entry_at
        self.next_start += comp_length
        self.next_offset += length
        self.n = i + 1

    def freeze(self, hash_type: int, blob: DigestBlob, uncompressed: bool) -> ChunkIndex:
        return ChunkIndex(hash_type, self.digest_size, self.dict_chunk, self.comp_lengths, self.lengths,
                          self.starts, self.offsets, self.entries, blob, stored=True, uncompressed=uncompressed)


def zstd_bound(n: int) -> int:
    """ZSTD_COMPRESSBOUND(n): the most a zstd frame of n input bytes can take."""
    return n + (n >> 8) + (((128 << 10) - n) >> 11 if n < 128 << 10 else 0)


# --- checks a delta install needs ------------------------------------------------------------

def verify_signed(data: Buffer, sha256_hex: str, *, name: str = "zchunk header",
                  limits: Limits = Limits()) -> ZckHeader:
    """The header of a bundle member, checked against the sha256 its signed sw-description
    carries (SWUpdate hashes the member when it copies it out) and then parsed strictly."""
    got = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(got, sha256_hex.lower()):
        raise ZckHeaderMismatch(f"sha256 is {got}, the signed sw-description says {sha256_hex}", name)
    return parse_header(data, name=name, exact=True, limits=limits)


def check_delta_usable(header: ZckHeader, name: str = "zchunk header") -> None:
    """Refuse a header SWUpdate's delta handler could not use either: it needs uncompressed
    SHA-256 digests (flag 2, `zck -u -h sha256`), zstd or no compression, and no dict."""
    if not header.has_uncompressed_digests:
        raise ZckFormatError("flag 2 (uncompressed checksums) is not set: make it with `zck -u`", name,
                             "preface.flags", header.lead_length + len(header.data_digest))
    if header.index.hash_type != HASH_SHA256:
        raise ZckFormatError(f"chunk checksums are {HASH_NAMES[header.index.hash_type]}, a delta needs SHA-256 "
                             "(`zck -h sha256`)", name, "index.checksum_type", header.length - header.header_length)
    if header.index.dict_chunk is not None:
        raise ZckFormatError("a zstd dictionary is set: SWUpdate cannot decode such chunks", name,
                             "index.dict", header.length - header.header_length)
    if len(header.index) == 0:
        raise ZckFormatError("no data chunks", name, "index.chunk_count", header.length - header.header_length)


# --- building -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkEntry:
    """One index entry to write: digests over the compressed and the uncompressed bytes."""

    digest: bytes
    digest_uncompressed: bytes
    comp_length: int
    length: int


def build_header(entries: Sequence[ChunkEntry], *, comp_type: int = COMP_ZSTD,
                 chunk_hash_type: int = HASH_SHA256, uncompressed_digests: bool = True,
                 dict_entry: Optional[ChunkEntry] = None, hash_type: int = HASH_SHA256,
                 data_digest: Optional[bytes] = None) -> bytes:
    """The header bytes libzck writes for this chunk table (byte-identical to `zck`'s)."""
    size = _HASHES[chunk_hash_type][1]
    empty = ChunkEntry(bytes(size), bytes(size) if uncompressed_digests else b"", 0, 0)
    index = bytearray(encode_int(chunk_hash_type) + encode_int(len(entries) + 1))
    for entry in (dict_entry or empty, *entries):
        if len(entry.digest) != size or len(entry.digest_uncompressed) != (size if uncompressed_digests else 0):
            raise ValueError(f"digest sizes {len(entry.digest)}/{len(entry.digest_uncompressed)} do not fit "
                             f"{HASH_NAMES[chunk_hash_type]}")
        index += entry.digest + entry.digest_uncompressed + encode_int(entry.comp_length) + encode_int(entry.length)
    flags = FLAG_UNCOMPRESSED if uncompressed_digests else 0
    full_size = _HASHES[hash_type][1]
    if data_digest is None or uncompressed_digests:
        data_digest = bytes(full_size)  # zeroed with flag 2, as the format requires
    preface = data_digest + encode_int(flags) + encode_int(comp_type) + encode_int(len(index))
    header = preface + bytes(index) + encode_int(0)
    lead_start = ZCK_ID + encode_int(hash_type) + encode_int(len(header))
    digest = hashlib.new(_HASHES[hash_type][0], lead_start + header).digest()
    return lead_start + digest + header
