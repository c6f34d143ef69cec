"""libzck through ctypes: its temp file kept sparse, its errors ours, its absence handled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest

from otad.delta import libzck, srcindex
from otad.errors import SourceIndexError
from tests.delta_fixtures import DeltaFixture

pytestmark = pytest.mark.skipif(not libzck.available(), reason="libzck1 not installed")


def temp_files() -> List[int]:
    """Bytes on disk of libzck's (unlinked) temp files open in this process."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "zcktemp" in os.readlink(f"/proc/self/fd/{fd}"):
                out.append(os.fstat(int(fd)).st_blocks * 512)
        except OSError:
            pass
    return out


def test_libzck_1_2_3s_temp_copy_of_the_source_stays_small(small: DeltaFixture, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """libzck < 1.3.0 has no ZCK_NO_WRITE and copies the source to $TMPDIR (RAM on a Pi);
    otad truncates that file as it goes, so it holds at most TRUNCATE_EVERY + a block."""
    monkeypatch.setattr(libzck, "TRUNCATE_EVERY", 2 << 20)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    seen: List[int] = []
    with open(small.v1, "rb") as f:
        libzck.index_source(f, small.v1.stat().st_size, on_progress=lambda n: seen.extend(temp_files()))
    assert seen and max(seen) <= (2 << 20) + (1 << 20) + 65536, max(seen)
    assert temp_files() == []  # closed with the context


def test_a_short_source_is_one_error(small: DeltaFixture) -> None:
    with open(small.v1, "rb") as f, pytest.raises(SourceIndexError, match=r"slot b: ends at byte \d+, expected"):
        libzck.index_source(f, small.v1.stat().st_size + 10, name="slot b")


def test_without_libzck_the_pure_python_chunker_is_used(small: DeltaFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libzck, "_LIB", libzck._Lib.__new__(libzck._Lib))
    libzck._LIB.lib = None  # type: ignore[union-attr]
    assert not libzck.available()
    with pytest.raises(SourceIndexError, match="libzck cannot be loaded"):
        libzck.index_source(open(small.v1, "rb"), 100)
    calls: List[int] = []
    with open(small.v1, "rb") as f:
        index = srcindex.chunk_source(f, 1 << 20, on_progress=calls.append)
    assert calls[-1] == 1 << 20 and calls == sorted(calls) and sum(index.lengths) == 1 << 20


def test_short_lived_contexts_cut_what_one_context_cuts(small: DeltaFixture) -> None:
    """A libzck context lives for SEGMENT_BYTES of source (its index is all in C memory); the next
    starts where the last finished chunk ended, and the chunks are the same."""
    size = small.v1.stat().st_size
    with open(small.v1, "rb") as f:
        one = list(libzck.source_chunks(f, size, segment_bytes=1 << 40))
        many = list(libzck.source_chunks(f, size, segment_bytes=1 << 20))
    assert len(one) > 3 * (size >> 20) // 2 and many == one and sum(n for n, _ in one) == size
