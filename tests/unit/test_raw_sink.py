"""RawSink: what it writes, and when it asks the kernel to write back (otad/install/handlers/raw.py).

The write-back calls are observed by wrapping os.posix_fadvise and os.fdatasync (the kernel's
effect is not visible to a test); the bytes are read from the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest

from otad.install.handlers import raw
from otad.install.handlers.raw import RawSink

MIB = 1 << 20


@pytest.fixture
def calls(monkeypatch) -> List[Tuple[str, int, int]]:
    seen: List[Tuple[str, int, int]] = []
    real_fadvise, real_fdatasync = os.posix_fadvise, os.fdatasync

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        seen.append(("writeback", offset, offset + length))
        real_fadvise(fd, offset, length, advice)

    def fdatasync(fd: int) -> None:
        seen.append(("sync", os.lseek(fd, 0, os.SEEK_CUR), 0))
        real_fdatasync(fd)

    monkeypatch.setattr(raw.os, "posix_fadvise", fadvise)
    monkeypatch.setattr(raw.os, "fdatasync", fdatasync)
    return seen


def _sink(path: Path, size: int, start: int, **kw) -> Tuple[int, RawSink]:
    path.write_bytes(b"\0" * size)
    fd = os.open(path, os.O_WRONLY)
    os.lseek(fd, start, os.SEEK_SET)
    return fd, RawSink(fd, size - start, **kw)


def test_write_back_starts_behind_the_writer_over_exactly_the_written_bytes(tmp_path, calls) -> None:
    fd, sink = _sink(tmp_path / "slot", 12 * MIB, start=MIB, sync_every=8 * MIB, writeback_every=2 * MIB)
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(10):
        sink.write(block)
    os.close(fd)
    assert (tmp_path / "slot").read_bytes()[MIB:11 * MIB] == block * 10
    assert calls == [("writeback", 1 * MIB, 3 * MIB), ("writeback", 3 * MIB, 5 * MIB),
                     ("writeback", 5 * MIB, 7 * MIB), ("sync", 9 * MIB, 0), ("writeback", 9 * MIB, 11 * MIB)]


def test_skipped_bytes_are_never_in_a_write_back_range(tmp_path, calls) -> None:
    fd, sink = _sink(tmp_path / "slot", 8 * MIB, start=0, writeback_every=MIB)
    sink.write(b"a" * (MIB // 2))
    sink.skip(MIB)  # the pending half MiB goes out before the position moves
    sink.skip(MIB)  # nothing pending: no call
    sink.write(b"b" * MIB)
    sink.sync()
    os.close(fd)
    data = (tmp_path / "slot").read_bytes()
    assert data[:MIB // 2] == b"a" * (MIB // 2) and data[MIB // 2:5 * MIB // 2] == b"\0" * (2 * MIB)
    assert data[5 * MIB // 2:7 * MIB // 2] == b"b" * MIB
    assert sink.written == 3 * MIB // 2 and sink.skipped == 2 * MIB
    assert calls == [("writeback", 0, MIB // 2), ("writeback", 5 * MIB // 2, 7 * MIB // 2),
                     ("sync", 7 * MIB // 2, 0)]
