"""Writing .zck files: the pure-Python writer and libzck's, judged by libzck's own tools.

`zck_read_header -f` verifies a whole file, `unzck` decodes it; a `compatible` file has zck's
chunk table; a `fine` one has fixed 4 KiB-aligned chunks whether Python or libzck wrote it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from otad.delta import libzck, zck, zckwriter
from otad.delta.chunker import FixedChunker
from otad.errors import SourceIndexError
from tests.delta_fixtures import DeltaFixture

needs_libzck = pytest.mark.skipif(not libzck.available(), reason="libzck1 not installed")


def verified_by_libzck(path: Path, image: Path) -> None:
    check = subprocess.run(["zck_read_header", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    subprocess.run(["unzck", "-c", str(path)], check=True, stdout=open(path.with_suffix(".out"), "wb"))
    assert hashlib.sha256(path.with_suffix(".out").read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()


def test_the_compatible_profile_writes_zcks_chunk_table(small: DeltaFixture, tmp_path: Path) -> None:
    out = tmp_path / "v2.zck"
    with open(small.v2, "rb") as f:
        written = zckwriter.write_zck(f, small.v2.stat().st_size, str(out), zckwriter.chunker_for("compatible"))
    verified_by_libzck(out, small.v2)
    ours, theirs = zck.parse_header(out.read_bytes(), exact=False), zck.parse_header(small.header_bytes)
    assert list(ours.index.lengths) == list(theirs.index.lengths)
    assert ours.index.digests_uncompressed == theirs.index.digests_uncompressed
    assert written.chunks == len(theirs.index) and written.file_length == out.stat().st_size
    assert written.header_length == ours.length
    # python-zstandard's libzstd may differ from Debian's by version: compressed bytes are
    # equal where the versions agree (most chunks), and every one decodes to the same bytes.
    same = sum(a == b for a, b in zip(ours.index.digests[::32], theirs.index.digests[::32]))
    assert same > len(theirs.index) // 2


@pytest.mark.parametrize("size", [16384])
def test_the_fine_profile_writes_fixed_aligned_chunks(small: DeltaFixture, tmp_path: Path, size: int) -> None:
    out = tmp_path / "fine.zck"
    with open(small.v2, "rb") as f:
        zckwriter.write_zck(f, small.v2.stat().st_size, str(out), FixedChunker(size))
    verified_by_libzck(out, small.v2)
    header = zck.parse_header(out.read_bytes(), exact=False)
    assert header.index.uniform_length() == size
    assert all(o % size == 0 for o in header.index.offsets)
    zck.check_delta_usable(header)


@needs_libzck
def test_libzck_writes_the_fine_profile_with_the_same_chunks(small: DeltaFixture, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "py.zck", tmp_path / "libzck.zck"
    size = small.v2.stat().st_size
    with open(small.v2, "rb") as f:
        zckwriter.write_zck(f, size, str(ours), FixedChunker(16384))
    with open(small.v2, "rb") as f, open(theirs, "wb") as out:
        libzck.write_zck(f, size, out, 16384, tmpdir=str(tmp_path))
    verified_by_libzck(theirs, small.v2)
    a, b = zck.parse_header(ours.read_bytes(), exact=False), zck.parse_header(theirs.read_bytes(), exact=False)
    assert list(a.index.lengths) == list(b.index.lengths) and a.index.digests_uncompressed == b.index.digests_uncompressed
    assert list(tmp_path.glob("zcktemp*")) == []


def test_a_short_source_is_one_error_and_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(bytes(1000))
    with open(src, "rb") as f, pytest.raises(SourceIndexError, match="short.bin: ends at byte 1000, expected 5000"):
        zckwriter.write_zck(f, 5000, str(tmp_path / "out.zck"), FixedChunker(4096), name="short.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.bin"]


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="profile"):
        zckwriter.chunker_for("tiny")
