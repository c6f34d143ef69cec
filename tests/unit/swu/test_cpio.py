"""otad.swu.cpio: round trips, GNU cpio as the oracle, stream sources, and every bad input."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
import threading
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from otad.errors import BundleFormatError
from otad.swu.cpio import (
    CRC,
    CpioHeader,
    NEWC,
    TRAILER,
    CpioReader,
    CpioWriter,
    byte_sum,
    name_problem,
)

_no_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def needs_gnu_cpio(test: Callable[..., None]) -> Callable[..., None]:
    """An oracle test: GNU cpio writes or reads the other side."""
    marked: Callable[..., None] = pytest.mark.oracle(_no_cpio(test))
    return marked

SIZES = {"empty": 0, "one": 1, "three": 3, "four": 4, "five": 5, "big.img": (1 << 20) + 3}


# --- building archives --------------------------------------------------------------------


def header(
    name: bytes,
    size: int,
    *,
    magic: bytes = b"070701",
    namesize: Optional[int] = None,
    chksum: int = 0,
    fields: Optional[Dict[int, bytes]] = None,
) -> bytes:
    """A 110-byte header; `fields` replaces raw field text by index (0 = c_ino)."""
    numbers = [1, 0o100644, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, chksum]
    if namesize is not None:
        numbers[11] = namesize
    text = [b"%08X" % n for n in numbers]
    for index, raw in (fields or {}).items():
        text[index] = raw
    return magic + b"".join(text)


def entry(name: bytes, data: bytes = b"", *, at: int = 0, **kw: object) -> bytes:
    """Header, name, NUL, padding, data, padding, for an entry that starts at offset `at`."""
    head = header(name, len(data), **kw) + name + b"\0"  # type: ignore[arg-type]
    head += bytes(-(at + len(head)) % 4)
    return head + data + bytes(-(at + len(head) + len(data)) % 4)


def archive(*members: Tuple[bytes, bytes], trailer: bool = True, magic: bytes = b"070701") -> bytes:
    out = b""
    for name, data in members:
        chksum = sum(data) if magic == b"070702" else 0
        out += entry(name, data, at=len(out), magic=magic, chksum=chksum)
    if trailer:
        out += entry(TRAILER.encode(), at=len(out), magic=magic)
    return out


def written(members: List[Tuple[str, bytes]], fmt: str) -> bytes:
    out = io.BytesIO()
    with CpioWriter(out, fmt) as writer:
        for name, data in members:
            writer.add(name, data)
    return out.getvalue()


def gnu_cpio(tmp_path: Path, fmt: str, files: Dict[str, bytes]) -> bytes:
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    listing = "".join(f"{name}\n" for name in files).encode()
    command = ["cpio", "-o", "-H", fmt, "--quiet"]
    return subprocess.run(command, input=listing, cwd=src, capture_output=True, check=True).stdout


def sized_files() -> Dict[str, bytes]:
    rng = random.Random(7)
    return {name: rng.randbytes(size) for name, size in SIZES.items()}


class Trickle:
    """A pipe-like source: every read returns 1..7 bytes."""

    def __init__(self, data: bytes, seed: int = 1) -> None:
        self._data = io.BytesIO(data)
        self._rng = random.Random(seed)

    def read(self, n: int) -> bytes:
        return self._data.read(min(n, self._rng.randint(1, 7)))


class Bounded:
    """A stream that fails if anything reads past `end` (where a pipe would block)."""

    def __init__(self, data: bytes, end: int) -> None:
        self._data = io.BytesIO(data)
        self._end = end

    def read(self, n: int) -> bytes:
        if self._data.tell() + n > self._end:
            raise AssertionError(f"read({n}) at {self._data.tell()} passes {self._end}")
        return self._data.read(n)


def members_of(source: object, chunk: int = 1 << 16, **kw: object) -> List[Tuple[str, bytes]]:
    reader = CpioReader(source, **kw)  # type: ignore[arg-type]
    return [(m.name, b"".join(m.chunks(chunk))) for m in reader]


def drain(data: bytes, **kw: object) -> None:
    for member in CpioReader(io.BytesIO(data), **kw):  # type: ignore[arg-type]
        member.skip()


# --- round trips and the GNU cpio oracle ---------------------------------------------------


@pytest.mark.parametrize("fmt", [NEWC, CRC])
def test_writer_output_reads_back_identically(fmt: str) -> None:
    members = [(name, data) for name, data in sized_files().items()]
    data = written(members, fmt)
    assert len(data) % 512 == 0
    assert members_of(io.BytesIO(data)) == members


@pytest.mark.parametrize("fmt", [NEWC, CRC])
def test_writer_output_reads_back_from_a_trickling_pipe(fmt: str) -> None:
    members = [("sw-description", b"software = {};\n"), ("a", b"x" * 1001), ("b", b"")]
    assert members_of(Trickle(written(members, fmt)), chunk=5) == members


@pytest.mark.parametrize("fmt,magic", [("newc", NEWC), ("crc", CRC)])
@needs_gnu_cpio
def test_gnu_cpio_archive_reads_back_identically(
    tmp_path: Path, fmt: str, magic: str) -> None:
    files = sized_files()
    data = gnu_cpio(tmp_path, fmt, files)
    reader = CpioReader(io.BytesIO(data))
    seen = {}
    for member in reader:
        assert member.header.magic == magic
        if magic == CRC:
            assert member.header.checksum == sum(files[member.name]) & 0xFFFFFFFF
        seen[member.name] = b"".join(member.chunks(4096))
    assert seen == files
    assert len(data) - 512 < reader.bytes_read <= len(data)


@pytest.mark.parametrize("fmt", ["newc", "crc"])
@needs_gnu_cpio
def test_gnu_cpio_archive_reads_back_from_a_trickling_pipe(
    tmp_path: Path, fmt: str) -> None:
    files = {name: data for name, data in sized_files().items() if len(data) < 100}
    data = gnu_cpio(tmp_path, fmt, files)
    assert dict(members_of(Trickle(data, seed=3), chunk=3)) == files


@pytest.mark.parametrize("fmt,flag", [(NEWC, "newc"), (CRC, "crc")])
@needs_gnu_cpio
def test_gnu_cpio_extracts_writer_output(
    tmp_path: Path, fmt: str, flag: str) -> None:
    files = sized_files()
    (tmp_path / "x.cpio").write_bytes(written(list(files.items()), fmt))
    out = tmp_path / "out"
    out.mkdir()
    with open(tmp_path / "x.cpio", "rb") as archive_file:
        subprocess.run(
            ["cpio", "-i", "-H", flag, "--quiet", "--no-absolute-filenames"],
            stdin=archive_file, cwd=out, check=True, capture_output=True,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@needs_gnu_cpio
def test_gnu_cpio_finds_writer_crc_sums_correct(tmp_path: Path) -> None:
    (tmp_path / "x.cpio").write_bytes(written(list(sized_files().items()), CRC))
    with open(tmp_path / "x.cpio", "rb") as archive_file:
        done = subprocess.run(
            ["cpio", "-i", "--only-verify-crc"], stdin=archive_file, cwd=tmp_path,
            capture_output=True,
        )
    assert done.returncode == 0 and b"checksum error" not in done.stderr


def test_writer_headers_look_like_gnu_cpio() -> None:
    data = written([("a", b"abc"), ("b", b"")], CRC)
    assert data[:110] == b"070702" + b"".join(
        b"%08X" % n for n in (1, 0o100644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 2, 0x126)
    )
    second = data.index(b"070702", 1)
    assert data[second + 6 : second + 14] == b"00000002"
    trailer = data.index(b"070702", second + 1)
    assert data[trailer:].rstrip(b"\0") == (
        b"070702" + b"0" * 32 + b"00000001" + b"0" * 48 + b"0000000B" + b"0" * 8 + b"TRAILER!!!"
    )


def test_reader_stops_at_the_trailer_without_reading_the_tail_padding() -> None:
    data = written([("a", b"abc")], NEWC)
    end = data.index(TRAILER.encode()) + len(TRAILER) + 1
    end += -end % 4
    reader = CpioReader(Bounded(data, end))
    assert [m.name for m in reader] == ["a"]
    assert reader.bytes_read == end
    assert list(reader) == []


def test_reader_does_not_block_on_a_pipe_that_stays_open_after_the_trailer() -> None:
    data = written([("a", b"abc" * 1000)], CRC)
    end = data.index(TRAILER.encode()) + 14  # name, NUL and 3 bytes of padding
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data[:end])
    result: List[object] = []
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:

        def read_all_members() -> None:
            try:
                result.extend(m.name for m in CpioReader(pipe))
            except Exception as exc:  # reported through `result`
                result.append(exc)

        worker = threading.Thread(target=read_all_members)
        worker.start()
        worker.join(timeout=10)
        blocked = worker.is_alive()
        os.close(write_fd)
        worker.join()
    assert not blocked
    assert result == ["a"]


def test_reader_accepts_duplicate_member_names() -> None:
    assert members_of(io.BytesIO(archive((b"a", b"1"), (b"a", b"2")))) == [("a", b"1"), ("a", b"2")]


def test_reader_accepts_lowercase_hex() -> None:
    data = archive((b"a", b"x" * 26)).replace(b"0000001A", b"0000001a")
    assert members_of(io.BytesIO(data)) == [("a", b"x" * 26)]


def test_reader_ignores_the_newc_checksum_field() -> None:
    data = entry(b"a", b"abc", chksum=0xDEAD) + entry(b"TRAILER!!!", at=116)
    assert members_of(io.BytesIO(data)) == [("a", b"abc")]


def test_reader_reports_header_fields_and_offsets() -> None:
    data = archive((b"first", b"12345"), (b"second", b""), magic=b"070702")
    first, second = list(_headers(data))
    assert (first.name, first.size, first.mode, first.magic, first.checksum, first.offset) == (
        "first", 5, 0o100644, CRC, sum(b"12345"), 0,
    )
    assert second.offset == 124


def _headers(data: bytes) -> List[CpioHeader]:
    return [m.header for m in CpioReader(io.BytesIO(data))]


def test_member_read_returns_short_only_at_its_end() -> None:
    member = next(iter(CpioReader(Trickle(archive((b"a", bytes(range(10))))))))
    assert member.read(4) == bytes(range(4))
    assert member.remaining == 6
    assert member.read(100) == bytes(range(4, 10))
    assert member.read(1) == b""


def test_member_read_all_returns_data_within_the_limit() -> None:
    member = next(iter(CpioReader(io.BytesIO(archive((b"a", b"abcd"))))))
    assert member.read_all(limit=4) == b"abcd"


def test_member_left_behind_reads_nothing_once_the_reader_moved_on() -> None:
    reader = CpioReader(io.BytesIO(archive((b"a", b"abcd"), (b"b", b"efgh"))))
    first = next(reader)
    second = next(reader)
    assert first.read(10) == b""
    assert second.read(10) == b"efgh"


def test_reader_keeps_failing_after_an_error() -> None:
    reader = CpioReader(io.BytesIO(archive((b"a", b"abcd"), trailer=False)))
    next(reader)
    for _ in range(2):
        with pytest.raises(BundleFormatError, match="truncated"):
            next(reader)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 511, 4096, (1 << 20) + 3])
def test_byte_sum_equals_the_plain_sum(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert byte_sum(data) == sum(data)
    assert byte_sum(b"\xff" * size) == 255 * size


def test_reader_allows_a_name_of_254_bytes_and_refuses_255() -> None:
    assert members_of(io.BytesIO(archive((b"n" * 254, b"")))) == [("n" * 254, b"")]
    with pytest.raises(BundleFormatError, match="c_namesize 256: expected 1..255"):
        drain(archive((b"n" * 255, b"")))


def test_reader_names_its_source_in_errors() -> None:
    with pytest.raises(BundleFormatError, match=r"^update.swu@0x0: bad magic"):
        drain(b"x" * 200, source_name="update.swu")


# --- the bad-input table --------------------------------------------------------------------


def _crc_flipped(tmp_path: Path) -> Tuple[bytes, str]:
    payload = bytes(range(200))
    data = bytearray(gnu_cpio(tmp_path, "crc", {"payload": payload}))
    at = 120  # 110-byte header + "payload\0", padded to 4
    assert data[at : at + 200] == payload
    data[at] ^= 0x01
    good = sum(payload)
    return bytes(data), f"header says 0x{good:08x}, data sums to 0x{good + 1:08x}"


def field(index: int, text: bytes) -> bytes:
    return header(b"a", 0, fields={index: text}) + b"a\0" + bytes(64)


def named(name: bytes) -> bytes:
    return archive((name, b"x"))


ONE = archive((b"a", b"0123456789"))  # name ends at 112: no name padding; data pad at 122
TWO = archive((b"ab", b"0123456789"))  # name ends at 113: 3 bytes of name padding
BAD_INPUTS = {
    "odc_magic": (b"070707" + ONE[6:], "bad magic '070707' (odc cpio is not supported)"),
    "garbage_magic": (b"hello, world" * 20, "bad magic 'hello,'"),
    "gzip_magic": (b"\x1f\x8b\x08\x00" + bytes(200), "(gzip is not supported)"),
    "empty_archive": (b"", "bundle@0x0: truncated: archive ends before the 'TRAILER!!!'"),
    "truncated_magic": (b"0707", "bundle@0x0: truncated header: archive ends after 4 of 110"),
    "truncated_header": (ONE[:50], "bundle@0x0: truncated header: archive ends after 50 of 110"),
    "truncated_name": (ONE[:111], "bundle@0x0: truncated name: archive ends after 1 of 2 bytes"),
    "truncated_name_padding": (
        TWO[:114], "bundle@0x0: truncated padding: archive ends at 0x72, 3 zero bytes expected"
    ),
    "truncated_data": (
        ONE[:118], "member 'a' @0x0: truncated data: archive ends at 0x76 with 4 of 10 data bytes"
    ),
    "truncated_data_padding": (ONE[:123], "member 'a' @0x0: truncated padding"),
    "eof_without_trailer": (
        archive((b"a", b"0123456789"), trailer=False),
        "bundle@0x7c: truncated: archive ends before the 'TRAILER!!!' trailer",
    ),
    "filesize_plus_sign": (field(6, b"+1234567"), "c_filesize: expected 8 hex digits, got '+1234567'"),
    "filesize_space": (field(6, b" 1234567"), "c_filesize: expected 8 hex digits, got ' 1234567'"),
    "filesize_0x": (field(6, b"0x123456"), "c_filesize: expected 8 hex digits, got '0x123456'"),
    "namesize_not_hex": (field(11, b"0000000g"), "c_namesize: expected 8 hex digits, got '0000000g'"),
    "chksum_underscore": (field(12, b"0000_000"), "c_chksum: expected 8 hex digits, got '0000_000'"),
    "huge_size_little_data": (
        header(b"a", 0, fields={6: b"FFFFFFFF"}) + b"a\0" + b"tiny",
        "member 'a' @0x0: truncated data: archive ends at 0x74 with 4294967291 of 4294967295",
    ),
    "namesize_0": (header(b"", 0, namesize=0) + bytes(16), "c_namesize 0: expected 1..255"),
    "namesize_300": (header(b"a", 0, namesize=300) + bytes(400), "c_namesize 300: expected 1..255"),
    "name_without_nul": (
        header(b"abcd", 0, namesize=4) + b"abcd" + bytes(16), "name 'abcd' is not NUL-terminated"
    ),
    "nul_inside_name": (entry(b"ab\0cd") + ONE, "name 'ab\\x00cd' contains a NUL byte"),
    "nonzero_name_padding": (
        TWO[:113] + b"\0\x07\0" + TWO[116:],
        "bundle@0x0: nonzero padding at 0x71: expected 3 zero bytes, got '\\x00\\x07\\x00'",
    ),
    "nonzero_data_padding": (
        ONE[:122] + b"\0\x01" + ONE[124:],
        "member 'a' @0x0: nonzero padding at 0x7a: expected 2 zero bytes, got '\\x00\\x01'",
    ),
    "name_dotdot_path": (named(b"../etc/passwd"), "member name '../etc/passwd': expected a flat"),
    "name_absolute": (named(b"/etc/passwd"), "member name '/etc/passwd': expected a flat file name"),
    "name_with_slash": (named(b"a/b"), "member name 'a/b': expected a flat file name, got a '/'"),
    "name_dotdot": (named(b".."), "member name '..': expected a file name without '..'"),
    "name_dot": (named(b"."), "member name '.': expected a file name, got '.'"),
    "name_with_dotdot_inside": (named(b"a..b"), "member name 'a..b': expected a file name without"),
    "name_empty": (named(b""), "bundle@0x0: member name '': expected a file name, got an empty one"),
    "name_control_char": (named(b"a\x1bb"), "member name 'a\\x1bb': expected printable characters"),
    "name_newline": (named(b"a\nb"), "member name 'a\\nb': expected printable characters"),
    "name_not_utf8": (named(b"a\xffb"), "name b'a\\xffb' is not valid UTF-8"),
    "trailer_with_data": (
        entry(b"TRAILER!!!", b"abcd"), "bundle@0x0: trailer has c_filesize 4: expected 0"
    ),
    "crc_empty_member_with_checksum": (
        entry(b"a", magic=b"070702", chksum=5) + entry(b"TRAILER!!!", at=112, magic=b"070702"),
        "member 'a' @0x0: checksum mismatch: header says 0x00000005, data sums to 0x00000000",
    ),
}


@pytest.mark.parametrize("data,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_reader_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BundleFormatError, match=re.escape(message)):
        drain(data)


@pytest.mark.parametrize("data,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_reader_rejects_the_same_from_a_trickling_pipe(data: bytes, message: str) -> None:
    with pytest.raises(BundleFormatError, match=re.escape(message)):
        for member in CpioReader(Trickle(data)):
            member.skip()


@needs_gnu_cpio
def test_reader_rejects_crc_archive_with_a_flipped_data_byte(tmp_path: Path) -> None:
    data, sums = _crc_flipped(tmp_path)
    reader = CpioReader(io.BytesIO(data))
    member = next(reader)
    expected = f"member 'payload' @0x0: checksum mismatch: {sums}"
    with pytest.raises(BundleFormatError, match=re.escape(expected)):
        member.read_all(limit=1000)
    with pytest.raises(BundleFormatError, match="checksum mismatch"):
        next(reader)


@needs_gnu_cpio
def test_reader_rejects_a_flipped_crc_byte_even_when_the_member_is_skipped(tmp_path: Path) -> None:
    data, sums = _crc_flipped(tmp_path)
    with pytest.raises(BundleFormatError, match=re.escape(sums)):
        list(CpioReader(io.BytesIO(data)))


def test_reader_refuses_read_all_over_the_limit_before_reading() -> None:
    member = next(iter(CpioReader(io.BytesIO(archive((b"sw-description", b"x" * 5000))))))
    expected = "member 'sw-description' @0x0: member is 5000 bytes, more than the 4096 allowed"
    with pytest.raises(BundleFormatError, match=re.escape(expected)):
        member.read_all(limit=4096)
    assert member.remaining == 5000


class Recording(io.BytesIO):
    """A BytesIO that remembers the largest read it was asked for."""

    largest = 0

    def read(self, n: Optional[int] = -1) -> bytes:
        self.largest = max(self.largest, n if n is not None else -1)
        return super().read(n)


def test_reader_does_not_allocate_a_huge_declared_size() -> None:
    source = Recording(header(b"a", 0, fields={6: b"FFFFFFFF"}) + b"a\0" + bytes(3 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(BundleFormatError, match="truncated data"):
            for member in CpioReader(source):
                member.skip()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.largest <= 1 << 20
    assert peak < 4 << 20


# --- the writer's own refusals ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\x00b", TRAILER, "n" * 255, "\udcff"])
def test_writer_refuses_a_name_the_format_cannot_hold(name: str) -> None:
    with pytest.raises(ValueError, match="member name"):
        CpioWriter(io.BytesIO()).add(name, b"")


@pytest.mark.parametrize("name", ["", "a/b", "/etc/passwd", "../etc/passwd", "..", ".", "a\tb"])
def test_writer_writes_a_hostile_name_that_the_reader_refuses(name: str) -> None:
    data = written([("sw-description", b"x"), (name, b"y")], NEWC)
    with pytest.raises(BundleFormatError, match=re.escape(f"member name {name!r}: expected")):
        drain(data)


def test_name_problem_accepts_ordinary_bundle_names() -> None:
    for name in ["sw-description", "sw-description.sig", "rootfs.ext4.zst", "boot_v1.2.img", "é"]:
        assert name_problem(name) == ""


def test_writer_refuses_crc_stream_from_an_unseekable_source_without_checksum() -> None:
    with pytest.raises(ValueError, match="pass checksum="):
        CpioWriter(io.BytesIO(), CRC).add_stream("a", 3, Trickle(b"abc"))


def test_writer_streams_crc_members_with_a_given_or_computed_checksum() -> None:
    out = io.BytesIO()
    with CpioWriter(out, CRC) as writer:
        writer.add_stream("given", 3, Trickle(b"abcdef"), checksum=sum(b"abc"))
        writer.add_stream("computed", 5, io.BytesIO(b"hello"))
        writer.add_stream("plain", 2, io.BytesIO(b"xyz"), checksum=sum(b"xy"))
    assert members_of(io.BytesIO(out.getvalue())) == [
        ("given", b"abc"), ("computed", b"hello"), ("plain", b"xy"),
    ]


def test_writer_refuses_a_wrong_given_checksum() -> None:
    with pytest.raises(ValueError, match="checksum 0x00000001 given, data sums to 0x00000126"):
        CpioWriter(io.BytesIO(), CRC).add_stream("a", 3, io.BytesIO(b"abc"), checksum=1)


def test_writer_refuses_a_source_shorter_than_the_size() -> None:
    with pytest.raises(ValueError, match="source ended after 3 of 10 bytes"):
        CpioWriter(io.BytesIO()).add_stream("a", 10, io.BytesIO(b"abc"))


def test_writer_leaves_out_the_trailer_when_the_block_fails() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with CpioWriter(out) as writer:
            writer.add("a", b"abc")
            raise RuntimeError("build failed")
    assert TRAILER.encode() not in out.getvalue()
    with pytest.raises(BundleFormatError, match="truncated"):
        drain(out.getvalue())
