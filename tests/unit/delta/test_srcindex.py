"""Matching a source to a target: SWUpdate's rule against `zck_delta_size`, the fine scan against brute force."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

import pytest

from otad.delta import srcindex, zck, zckwriter
from otad.delta.chunker import FixedChunker
from otad.delta.plan import Plan
from otad.delta.srcindex import NOT_FOUND, match_fine, match_index
from otad.errors import SourceIndexError
from tests.delta_fixtures import DeltaFixture


def fine_header(image: Path, out: Path, size: int = 16384) -> zck.ZckHeader:
    with open(image, "rb") as f:
        zckwriter.write_zck(f, image.stat().st_size, str(out), FixedChunker(size))
    return zck.parse_header(out.read_bytes(), exact=False)


@pytest.fixture(scope="module")
def fine_v2(small: DeltaFixture, tmp_path_factory: pytest.TempPathFactory) -> zck.ZckHeader:
    return fine_header(small.v2, tmp_path_factory.mktemp("fine") / "v2.fine.zck")


def test_the_compatible_match_fetches_what_zck_delta_size_says(small: DeltaFixture, tmp_path: Path) -> None:
    subprocess.run(["zck", "-u", "-h", "sha256", "-o", str(tmp_path / "v1.zck"), str(small.v1)], check=True)
    oracle = subprocess.run(["zck_delta_size", str(tmp_path / "v1.zck"), str(small.v2_zck)], capture_output=True,
                            text=True, check=True).stdout
    download, matched = (int(n) for n in re.findall(r"(?:download|Matched) (\d+)", oracle))
    target = zck.parse_header(small.header_bytes)
    with open(small.v1, "rb") as f:
        source = srcindex.chunk_source(f, small.v1.stat().st_size)
    plan = Plan(target.index, match_index(target.index, source))
    assert target.length + plan.fetch_bytes == download
    assert plan.match.found() + 1 == matched  # zck_delta_size counts the dict entry
    assert 0 < len(plan.fetched()) < len(target.index)


def test_every_match_points_at_the_chunks_bytes(small: DeltaFixture) -> None:
    target = zck.parse_header(small.header_bytes).index
    with open(small.v1, "rb") as f:
        match = match_index(target, srcindex.chunk_source(f, small.v1.stat().st_size))
    v1 = small.v1.read_bytes()
    for i, offset in enumerate(match.offsets):
        if offset != NOT_FOUND:
            assert hashlib.sha256(v1[offset:offset + target.lengths[i]]).digest() == target.digest_uncompressed(i)


def test_a_match_needs_equal_length_and_the_first_source_chunk_wins() -> None:
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    source = zck.ChunkIndex.of_source([100, 200, 100], a + b + a)
    target = zck.ChunkIndex.of_source([100, 300, 50], a + b + a)
    assert list(match_index(target, source).offsets) == [0, NOT_FOUND, NOT_FOUND]


def test_matching_needs_uncompressed_digests(tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(bytes(range(256)) * 100)
    subprocess.run(["zck", "-h", "sha256", "-o", str(tmp_path / "x.zck"), str(src)], check=True)
    plain = zck.parse_header((tmp_path / "x.zck").read_bytes(), exact=False).index
    with pytest.raises(SourceIndexError, match="uncompressed digests"):
        match_index(plain, plain)


def window_digests(data: bytes, size: int, step: int = 4096) -> Set[bytes]:
    return {hashlib.sha256(data[o:o + size]).digest() for o in range(0, len(data) - size + 1, step)}


def test_the_fine_scan_finds_exactly_the_chunks_at_some_4k_offset(small: DeltaFixture, fine_v2: zck.ZckHeader) -> None:
    target = fine_v2.index
    v1 = small.v1.read_bytes()
    with open(small.v1, "rb") as f:
        match = match_fine(target, f, len(v1))
    present = window_digests(v1, target.uniform_length() or 0)
    for i, offset in enumerate(match.offsets[:-1]):
        assert (offset != NOT_FOUND) == (target.digest_uncompressed(i) in present), i
        if offset != NOT_FOUND:
            assert offset % 4096 == 0
            assert hashlib.sha256(v1[offset:offset + target.lengths[i]]).digest() == target.digest_uncompressed(i)
    assert match.found() > len(target) // 2


def test_the_fine_scan_finds_everything_in_an_identical_image(small: DeltaFixture, fine_v2: zck.ZckHeader) -> None:
    with open(small.v2, "rb") as f:
        match = match_fine(fine_v2.index, f, small.v2.stat().st_size)
    assert match.found() == len(fine_v2.index)


def test_fine_beats_compatible_on_the_rebuilt_image(small: DeltaFixture, fine_v2: zck.ZckHeader) -> None:
    """The point of the profile: after a rebuild moved blocks, fixed chunks matched at every
    4 KiB offset leave less to fetch than content-defined 32 KiB chunks."""
    compatible = zck.parse_header(small.header_bytes)
    with open(small.v1, "rb") as f:
        by_cdc = Plan(compatible.index, match_index(compatible.index, srcindex.chunk_source(f, small.v1.stat().st_size)))
        by_fine = Plan(fine_v2.index, match_fine(fine_v2.index, f, small.v1.stat().st_size))
    assert fine_v2.length + by_fine.fetch_bytes < compatible.length + by_cdc.fetch_bytes


def test_the_fine_scan_refuses_a_content_defined_target(small: DeltaFixture) -> None:
    with open(small.v1, "rb") as f, pytest.raises(SourceIndexError, match="not a fine profile"):
        match_fine(zck.parse_header(small.header_bytes).index, f, 1 << 20)


def test_a_short_source_is_one_error(small: DeltaFixture, fine_v2: zck.ZckHeader) -> None:
    with open(small.v1, "rb") as f, pytest.raises(SourceIndexError, match=r"ends at byte \d+, expected"):
        srcindex.chunk_source(f, small.v1.stat().st_size + 1, use_libzck=False, name="slot a")


# --- the target's table: what a dict of whole digests found, in 8 to 16 bytes a chunk -------------

def reference_match(target: zck.ChunkIndex, chunks: Sequence[Tuple[int, bytes]]) -> List[int]:
    """SWUpdate's rule with a plain dict of whole digests (what srcindex did before TargetTable)."""
    first: Dict[Tuple[bytes, int], int] = {}
    at = 0
    for n, digest in chunks:
        first.setdefault((digest, n), at)
        at += n
    return [first.get((target.digest_uncompressed(i), target.lengths[i]), NOT_FOUND) for i in range(len(target))]


def crafted(keys: Sequence[Tuple[int, int]]) -> List[bytes]:
    """Digests whose first 8 bytes are `key` and the rest `tail`: collisions in the truncated key on purpose."""
    return [key.to_bytes(8, "little") + tail.to_bytes(24, "little") for key, tail in keys]


def test_duplicates_and_truncated_key_collisions_match_as_a_dict_of_whole_digests() -> None:
    same_key = 0xDEADBEEF_12345678
    t = crafted([(same_key, 1), (same_key, 2), (7, 0), (same_key, 1), (7, 0), (same_key, 3), (9, 9)])
    target = zck.ChunkIndex.of_source([100, 100, 50, 100, 50, 100, 10], b"".join(t))
    s = crafted([(same_key, 3), (same_key, 4), (7, 0), (same_key, 1), (same_key, 1), (9, 8), (7, 0)])
    chunks = list(zip([100, 100, 50, 100, 100, 10, 50], s))
    got = list(srcindex.match_chunks(target, chunks).offsets)
    assert got == reference_match(target, chunks) == [250, NOT_FOUND, 200, 250, 200, 0, NOT_FOUND]
    table = srcindex.TargetTable(target)
    assert [table.find(d) for d in t] == [0, 1, 2, 0, 2, 5, 6]  # a duplicate finds the first chunk with it
    assert table.find(crafted([(same_key, 4)])[0]) is None  # its key is there, its digest is not
    assert table.find(crafted([(same_key + 1, 1)])[0]) is None


def test_the_table_finds_what_the_dict_found_on_the_fixture(small: DeltaFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    target = zck.parse_header(small.header_bytes).index
    with open(small.v1, "rb") as f:
        chunks = list(srcindex.source_chunks(f, small.v1.stat().st_size))
    want = reference_match(target, chunks)
    assert list(srcindex.match_chunks(target, chunks).offsets) == want and want.count(NOT_FOUND) < len(want)
    # The same with a key of one byte: nearly every lookup collides and is settled on the whole digest.
    monkeypatch.setattr(srcindex, "_key", lambda digest: digest[0])
    assert list(srcindex.match_chunks(target, chunks).offsets) == want


def test_the_fine_scan_is_the_same_when_truncated_keys_collide(small: DeltaFixture, fine_v2: zck.ZckHeader,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with open(small.v1, "rb") as f:
        want = list(match_fine(fine_v2.index, f, small.v1.stat().st_size).offsets)
        monkeypatch.setattr(srcindex, "_key", lambda digest: digest[0] << 56)
        assert list(match_fine(fine_v2.index, f, small.v1.stat().st_size).offsets) == want
    assert 0 < want.count(NOT_FOUND) < len(want)


def test_the_table_takes_a_few_bytes_a_chunk(fine_v2: zck.ZckHeader) -> None:
    table = srcindex.TargetTable(fine_v2.index)
    assert len(table.slots) < 4 * len(fine_v2.index) and table.slots.itemsize == 8
    assert len(table.filter) == 1 << 17
