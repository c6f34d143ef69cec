"""The zchunk header parser: what `zck_read_header` reads, byte for byte; every malformed field named.

Headers come from Debian's `zck` (the fixture's, and small ones made here) and are compared
with `zck_read_header -c`. Malformed headers are assembled field by field and re-checksummed,
so each case reaches the check it is about; hypothesis throws mutated and random bytes at it.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otad.delta import zck
from otad.delta.zck import ZCK_ID, ChunkEntry, Limits, encode_int, parse_header
from otad.errors import ZckFormatError, ZckHeaderMismatch
from tests.delta_fixtures import DeltaFixture, header_size, read_header_table


# --- against the real tools ---------------------------------------------------------------

def test_the_fixture_header_reads_as_zck_read_header_shows_it(small: DeltaFixture) -> None:
    header = parse_header(small.header_bytes)
    table = read_header_table(small.v2_zck)
    assert header.length == header_size(small.v2_zck) == len(small.header_bytes)
    assert table[0]["size"] == "0" and header.index.dict_chunk is None  # row 0 is the (empty) dict
    assert len(header.index) == len(table) - 1
    for chunk, row in zip(header.index, table[1:]):
        assert (chunk.digest.hex(), chunk.digest_uncompressed.hex(), chunk.start, chunk.comp_length, chunk.length) \
            == (row["checksum"], row["uncompressed"], int(row["start"]), int(row["comp"]), int(row["size"]))
    assert header.index.image_length == small.v2.stat().st_size
    assert header.file_length == small.v2_zck.stat().st_size
    assert header.sha256 == hashlib.sha256(small.header_bytes).hexdigest()
    assert (header.flags, header.comp_type, header.index.hash_type) == (zck.FLAG_UNCOMPRESSED, zck.COMP_ZSTD,
                                                                       zck.HASH_SHA256)
    assert not any(header.data_digest)  # zeroed with -u, as the format requires


def test_the_header_is_found_at_the_start_of_a_whole_zck_file(small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with pytest.raises(ZckFormatError, match=r"header: \d+ bytes after the \d+-byte header"):
        parse_header(data)
    assert parse_header(data, exact=False).length == len(small.header_bytes)


def test_build_header_writes_what_zck_writes(small: DeltaFixture) -> None:
    header = parse_header(small.header_bytes)
    entries = [ChunkEntry(c.digest, c.digest_uncompressed, c.comp_length, c.length) for c in header.index]
    assert zck.build_header(entries) == small.header_bytes


def zck_file(tmp_path: Path, data: bytes, *args: str) -> bytes:
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    subprocess.run(["zck", *args, "-o", str(tmp_path / "out.zck"), str(src)], check=True, capture_output=True)
    return (tmp_path / "out.zck").read_bytes()


def test_zck_without_u_has_no_uncompressed_digests_and_is_no_delta(tmp_path: Path) -> None:
    data = zck_file(tmp_path, bytes(range(256)) * 400, "-h", "sha256")
    header = parse_header(data, exact=False)
    assert not header.has_uncompressed_digests and header.index.digests_uncompressed == b""
    with pytest.raises(ZckFormatError, match=r"preface.flags: flag 2 .* `zck -u`"):
        zck.check_delta_usable(header)


def test_the_default_sha512_128_chunk_hash_is_read_but_is_no_delta(tmp_path: Path) -> None:
    data = zck_file(tmp_path, bytes(range(256)) * 400)
    header = parse_header(data, exact=False)
    assert header.index.hash_type == zck.HASH_SHA512_128 and header.index.digest_size == 16
    chunk = header.index[0]
    assert chunk.digest == hashlib.sha512(data[chunk.start:chunk.end]).digest()[:16]
    with pytest.raises(ZckFormatError, match="flag 2"):
        zck.check_delta_usable(header)


def test_a_sha512_header_with_u_is_refused_for_a_delta(tmp_path: Path) -> None:
    header = parse_header(zck_file(tmp_path, bytes(range(256)) * 400, "-u", "-h", "sha512"), exact=False)
    with pytest.raises(ZckFormatError, match=r"index.checksum_type: chunk checksums are SHA-512, a delta needs SHA-256"):
        zck.check_delta_usable(header)


def test_a_dictionary_is_read_but_refused_for_a_delta(tmp_path: Path) -> None:
    (tmp_path / "dict").write_bytes(b"common words of the data " * 50)
    data = zck_file(tmp_path, b"common words of the data " * 4000, "-u", "-h", "sha256", "-D", str(tmp_path / "dict"))
    header = parse_header(data, exact=False)
    assert header.index.dict_chunk is not None and header.index.dict_chunk.length == 25 * 50
    assert header.index[0].start == header.length + header.index.dict_chunk.comp_length
    with pytest.raises(ZckFormatError, match="a zstd dictionary is set"):
        zck.check_delta_usable(header)


def test_an_uncompressed_zck_has_equal_digests_not_zeros_as_the_format_text_says(tmp_path: Path) -> None:
    # zchunk_format.txt: the compressed checksum "must be set to 0s" for a chunk stored
    # uncompressed; libzck 1.2.3 writes the uncompressed digest there. The tool wins.
    header = parse_header(zck_file(tmp_path, bytes(range(256)) * 400, "-u", "-h", "sha256",
                                   "--compression-format=none"), exact=False)
    assert header.comp_type == zck.COMP_NONE
    assert all(c.digest == c.digest_uncompressed and c.comp_length == c.length for c in header.index)


def test_a_detached_header_is_checksummed_as_the_file_it_came_from(small: DeltaFixture) -> None:
    detached = zck.DETACHED_ID + small.header_bytes[5:]
    header = parse_header(detached)
    assert header.ident == zck.DETACHED_ID and len(header.index) == len(parse_header(small.header_bytes).index)


# --- the signed header -----------------------------------------------------------------------

def test_verify_signed_checks_the_member_sha256_before_reading_it(small: DeltaFixture) -> None:
    data = small.header_bytes
    assert zck.verify_signed(data, hashlib.sha256(data).hexdigest().upper()).length == len(data)
    with pytest.raises(ZckHeaderMismatch, match=r"rootfs.ext4: sha256 is [0-9a-f]{64}, the signed sw-description "
                                                 r"says 0{64}") as info:
        zck.verify_signed(data, "0" * 64, name="rootfs.ext4")
    assert info.value.exit_code == 4  # a verification failure, like an image hash
    garbage = b"not a header"
    with pytest.raises(ZckHeaderMismatch):  # never parsed: a wrong hash is the one error
        zck.verify_signed(garbage, "0" * 64)
    with pytest.raises(ZckFormatError):  # signed garbage is still garbage
        zck.verify_signed(garbage, hashlib.sha256(garbage).hexdigest())


# --- malformed, field by field ------------------------------------------------------------------

D32 = bytes(range(32))


def entry(comp: int = 10, length: int = 100, digest: bytes = D32, udigest: Optional[bytes] = D32) -> bytes:
    return digest + (udigest or b"") + encode_int(comp) + encode_int(length)


def index(entries: Sequence[bytes], *, hash_type: int = 1, count: Optional[int] = None,
          dict_entry: Optional[bytes] = None) -> bytes:
    dict_entry = bytes(64) + encode_int(0) + encode_int(0) if dict_entry is None else dict_entry
    return encode_int(hash_type) + encode_int(len(entries) + 1 if count is None else count) + dict_entry + b"".join(entries)


@dataclass(frozen=True)
class Built:
    """An assembled header and where its fields start."""

    data: bytes
    flags: int
    comp: int
    optional: int
    index_size: int
    index: int
    sigs: int


def assemble(idx: bytes, *, flags: int = 4, comp: int = 2, index_size: Optional[int] = None,
             optional: bytes = b"", sigs: bytes = b"\x80", tail: bytes = b"", hash_type: int = 1) -> Built:
    """A header around `idx`, checksummed like libzck does."""
    digest_size = 32 if hash_type == 1 else 20
    size_field = encode_int(len(idx) if index_size is None else index_size)
    preface = bytes(digest_size) + encode_int(flags) + encode_int(comp) + optional + size_field
    header = preface + idx + sigs + tail
    lead = ZCK_ID + encode_int(hash_type) + encode_int(len(header))
    algorithm = "sha256" if hash_type == 1 else "sha1"
    data = lead + hashlib.new(algorithm, lead + header).digest() + header
    at = len(lead) + digest_size + digest_size
    return Built(data, at, at + 1, at + 2, at + 2 + len(optional), at + 2 + len(optional) + len(size_field),
                 len(data) - len(sigs) - len(tail))


ONE = index([entry()])
E0 = 2 + 66  # an index's first data entry, after checksum type, count and the empty dict entry


def case(data: bytes, field: str, offset: int, what: str) -> Tuple[bytes, str, int, str]:
    return data, field, offset, what


def _bad() -> Dict[str, Tuple[bytes, str, int, str]]:
    ok = assemble(ONE)
    cases = {
        "not zchunk": case(b"\0ZCK2" + bytes(60), "lead.id", 0, "not a zchunk file"),
        "empty": case(b"", "lead.id", 0, "truncated"),
        "header checksum type": case(ZCK_ID + encode_int(2) + bytes(60), "lead.checksum_type", 5, "got 2"),
        "header size cut short": case(ZCK_ID + b"\x81\x05", "lead.header_size", 6, "truncated"),
        "header size 11 bytes long": case(ZCK_ID + b"\x81" + b"\x01" * 10 + b"\x81", "lead.header_size", 6,
                                          "longer than 10"),
        "header size over 64 bits": case(ZCK_ID + b"\x81" + b"\x7f" * 9 + b"\x83", "lead.header_size", 6,
                                         "larger than 64"),
        "non-canonical header size": case(ZCK_ID + b"\x81\x05\x80" + bytes(60), "lead.header_size", 6,
                                          "non-canonical"),
        "truncated header": case(ok.data[:-1], "lead.header_size", 5, "truncated: the lead announces"),
        "trailing bytes": case(ok.data + b"x", "header", len(ok.data), "1 bytes after"),
        "bad checksum": case(ok.data[:-1] + b"\x81", "lead.header_checksum", 8, "expected"),
    }
    b = assemble(ONE, flags=5)
    cases["streams flag"] = case(b.data, "preface.flags", b.flags, "data streams")
    b = assemble(ONE, flags=12)
    cases["unknown flag"] = case(b.data, "preface.flags", b.flags, "unknown flags 0x8")
    b = assemble(ONE, comp=1)
    cases["compression gzip"] = case(b.data, "preface.compression_type", b.comp, "got 1")
    b = assemble(ONE, flags=6, optional=b"\x80")
    cases["optional flag, no elements"] = case(b.data, "preface.optional_count", b.optional, "no optional elements")
    b = assemble(ONE, flags=6, optional=b"\x81\x81" + encode_int(10000))
    cases["optional element past the end"] = case(b.data, "preface.optional[0].data", b.optional + 4,
                                                  "truncated: 10000 bytes needed")
    b = assemble(ONE, index_size=500)
    cases["index size past the end"] = case(b.data, "preface.index_size", b.index, "run past the header's end")
    b = assemble(index([entry()], hash_type=7))
    cases["chunk checksum type"] = case(b.data, "index.checksum_type", b.index, "got 7")
    b = assemble(index([], count=0, dict_entry=b""))
    cases["no entries at all"] = case(b.data, "index.chunk_count", b.index + 1, "expected at least the dict entry")
    b = assemble(index([entry()], count=3))
    cases["count above the entries"] = case(b.data, "index.chunk[1]", b.index + E0 + 66,
                                            "the index ends after 2 of 3")
    b = assemble(index([entry(), entry()], count=2))
    cases["count below the entries"] = case(b.data, "index", b.index + E0 + 66, "66 bytes left in the index")
    b = assemble(index([entry(comp=0, length=0)]))
    cases["empty data chunk"] = case(b.data, "index.chunk[0].uncompressed_length", b.index + E0 + 65, "an empty chunk")
    b = assemble(index([entry(comp=200, length=100)]))
    cases["more than zstd can make of it"] = case(b.data, "index.chunk[0].length", b.index + E0 + 66,
                                                  "expected 1..163 for 100 bytes of zstd, got 200")
    b = assemble(ONE, comp=0)
    cases["uncompressed file, lengths differ"] = case(b.data, "index.chunk[0].length", b.index + E0 + 65,
                                                      "expected 100 (the uncompressed length")
    b = assemble(index([entry()], dict_entry=bytes(64) + b"\x85\x80"))
    cases["empty dict with a length"] = case(b.data, "index.dict.length", b.index + 2 + 65,
                                             "expected 0 for an empty dict, got 5")
    b = assemble(index([entry()], dict_entry=D32 * 2 + b"\x80\x80"))
    cases["empty dict with a checksum"] = case(b.data, "index.dict.checksum", b.index + 2, "all-zero checksums")
    b = assemble(ONE, sigs=b"\x81\x81\x81x")
    cases["a signature"] = case(b.data, "signatures.count", b.sigs, "expected 0 signatures")
    b = assemble(ONE, tail=b"\0\0")
    cases["unused bytes"] = case(b.data, "header", b.sigs + 1, "2 unused bytes")
    b = assemble(index([entry(comp=10, length=100)[:-1] + b"\x64\x80"]))
    cases["non-canonical length"] = case(b.data, "index.chunk[0].uncompressed_length", b.index + E0 + 65,
                                         "non-canonical")
    return cases


BAD = _bad()


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_malformed_field_is_one_error_naming_field_and_offset(name: str) -> None:
    data, field, offset, what = BAD[name]
    with pytest.raises(ZckFormatError) as info:
        parse_header(data, name="rootfs.ext4")
    err = info.value
    assert (err.field, err.offset) == (field, offset), str(err)
    assert what in err.what
    assert str(err).startswith(f"rootfs.ext4@{offset:#x}: {field}: ")


def test_limits_bound_chunk_count_chunk_size_and_header_size() -> None:
    data = assemble(index([entry(), entry(), entry()])).data
    parse_header(data, limits=Limits(max_chunks=3))
    with pytest.raises(ZckFormatError, match="4 chunks, more than the limit of 2"):
        parse_header(data, limits=Limits(max_chunks=2))
    with pytest.raises(ZckFormatError, match="index.chunk.0..uncompressed_length: 100 bytes, more than the limit of 99"):
        parse_header(data, limits=Limits(max_chunk_bytes=99))
    with pytest.raises(ZckFormatError, match=f"{len(data)} bytes, more than the limit of 100"):
        parse_header(data, limits=Limits(max_header_bytes=100))


def test_compressed_integers_are_libzcks_little_endian_top_bit_last() -> None:
    assert encode_int(0) == b"\x80" and encode_int(127) == b"\xff" and encode_int(128) == b"\x00\x81"
    assert encode_int(104764) == bytes([0x3c, 0x32, 0x86])


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_compressed_integers_round_trip(value: int) -> None:
    data = assemble(index([entry(comp=1 + value % 1000, length=1 + value % 1000 + 200)])).data
    assert parse_header(data).index.lengths[0] == 1 + value % 1000 + 200
    from otad.delta.zck import _Reader
    assert _Reader(encode_int(value), "x").compint("f") == value


# --- fuzzing: whatever comes in, one ZckFormatError or a header ---------------------------------

SMALL_HEADER = assemble(index([entry(comp=10, length=100), entry(comp=20, length=300, digest=D32[::-1])])).data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_give_one_format_error(data: bytes) -> None:
    try:
        parse_header(data)
    except ZckFormatError:
        pass


def _resign(data: bytes) -> bytes:
    """Re-checksum a mutated header so the mutation reaches the structure checks."""
    lead = zck.parse_lead(data)
    body = data[lead.length:]
    start = ZCK_ID + encode_int(lead.hash_type) + encode_int(len(body))
    return start + hashlib.sha256(start + body).digest() + body


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(SMALL_HEADER) - 1), st.integers(0, 255)),
                min_size=1, max_size=4),
       st.integers(min_value=-8, max_value=8), st.booleans())
def test_mutated_headers_are_parsed_or_refused_with_one_format_error(flips: List[Tuple[int, int]], cut: int,
                                                                    resign: bool) -> None:
    data = bytearray(SMALL_HEADER)
    lead_length = zck.parse_lead(SMALL_HEADER).length
    for at, value in flips:
        if not resign or at >= lead_length:
            data[at] = value
    data = data[:len(data) + cut] if cut < 0 else data + bytes(cut)
    mutated = bytes(data)
    if resign:
        mutated = _resign(mutated)
    try:
        header = parse_header(mutated)
    except ZckFormatError as exc:
        assert 0 <= exc.offset <= len(mutated) and exc.field
        return
    assert header.length == len(mutated)
    assert sum(header.index.lengths) == header.index.image_length


def test_digests_read_from_the_staged_file_are_the_parsed_ones(small: DeltaFixture, tmp_path: Path) -> None:
    header = parse_header(small.header_bytes)
    staged = tmp_path / "staged.zckhdr"
    staged.write_bytes(small.header_bytes)
    on_file = header.on_file(str(staged))
    assert isinstance(on_file.index.blob, zck.FileDigests) and len(on_file.index) == len(header.index)
    assert on_file.index.digests == header.index.digests and len(header.index.digests) == 32 * len(header.index)
    assert on_file.index.digests_uncompressed == header.index.digests_uncompressed
    assert [c for c in on_file.index] == [c for c in header.index]
    staged.write_bytes(small.header_bytes[:100])  # the same inode, cut short behind its back
    with pytest.raises(ZckHeaderMismatch, match="the staged header ends at byte"):
        on_file.index.digest_uncompressed(0)  # outside the window last read


def test_uniform_length_without_a_copy_of_the_lengths() -> None:
    def index(lengths: Sequence[int]) -> zck.ChunkIndex:
        return zck.ChunkIndex.of_source(lengths, bytes(32 * len(lengths)))
    assert index([16, 16, 16]).uniform_length() == 16 and index([16, 16, 5]).uniform_length() == 16
    assert index([16, 5, 16]).uniform_length() is None and index([16, 16, 17]).uniform_length() is None
    assert index([7]).uniform_length() == 7 and index([]).uniform_length() is None
