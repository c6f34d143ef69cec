"""otad.durable.replacing: the one streaming durable write (state files, bundles, installed files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from otad.durable import atomic_write, replacing


def test_the_old_content_stays_until_the_with_ends(tmp_path: Path) -> None:
    path = tmp_path / "bundle.swu"
    path.write_bytes(b"old")
    with replacing(path) as f:
        for _ in range(4):
            f.write(b"x" * 4096)
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"x" * 16384
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.swu"]


def test_an_error_in_the_with_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(path) as f:
            f.write(b"half")
            raise RuntimeError("hash mismatch")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_replaced_file_keeps_its_mode_unless_one_is_given(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with replacing(path, 0o640) as f:
        f.write(b"newer")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_bytes() == b"newer"


def test_a_named_temp_is_written_beside_and_renamed(tmp_path: Path) -> None:
    """SWUpdate's atomic-install writes `path.tmp`: the files handler names it so."""
    path = tmp_path / "app.conf"
    with replacing(path, 0o600, temp=str(path) + ".tmp") as f:
        f.write(b"a = 1\n")
        assert os.path.exists(str(path) + ".tmp") and not path.exists()
    assert path.read_bytes() == b"a = 1\n" and not os.path.exists(str(path) + ".tmp")
