"""Saved hash states: the same digest as hashlib after a save and a restore at any point."""

from __future__ import annotations

import hashlib
import os

import pytest

from otad import hashstate
from otad.hashstate import HashStateError, ResumableHash, new_hash

pytestmark = pytest.mark.skipif(not hashstate.available(), reason="libcrypto cannot be loaded")

DATA = os.urandom(200_000)


@pytest.mark.parametrize("name", ["sha256", "sha1"])
@pytest.mark.parametrize("cut", [0, 1, 63, 64, 65, 100_001, len(DATA)])
def test_a_restored_state_goes_on_to_hashlibs_digest(name, cut) -> None:
    first = ResumableHash(name)
    first.update(DATA[:cut])
    saved, count = first.state(), first.count
    again = ResumableHash(name, saved, count)
    again.update(DATA[cut:])
    assert again.hexdigest() == hashlib.new(name, DATA).hexdigest()
    assert again.count == len(DATA)


def test_digest_does_not_spoil_the_running_state() -> None:
    h = ResumableHash("sha256")
    h.update(b"abc")
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    copy = h.copy()
    h.update(b"def")
    assert h.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert copy.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_a_state_of_the_wrong_size_or_algorithm_is_refused() -> None:
    with pytest.raises(HashStateError, match="sha256 state is 96 bytes, expected 112"):
        ResumableHash("sha256", ResumableHash("sha1").state())
    with pytest.raises(HashStateError, match="no resumable 'md5'"):
        ResumableHash("md5")


def test_new_hash_falls_back_to_hashlib_for_other_algorithms() -> None:
    assert isinstance(new_hash("sha256"), ResumableHash)
    md5 = new_hash("md5")
    md5.update(b"x")
    assert md5.hexdigest() == hashlib.md5(b"x").hexdigest()


def test_libcrypto_is_found_without_running_a_process() -> None:
    """find_library runs ldconfig and gcc: 2 s of a zstd install's start on the emulated Pi Zero."""
    import subprocess
    import sys

    code = ("import subprocess\n"
            "def refuse(*a, **k): raise AssertionError('a process was started')\n"
            "subprocess.Popen = refuse\n"
            "from otad import hashstate\n"
            "assert hashstate.available()\n"
            "print(hashstate._hashlibs_libcrypto())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "libcrypto.so" in done.stdout


def test_hashlibs_libcrypto_is_read_from_the_process_maps(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
                    "7f10-7f20 r-xp 00000000 08:01 1235 /opt/my lib/libcrypto.so.3\n"
                    "7f20-7f30 rw-p 00000000 00:00 0 \n")
    assert hashstate._hashlibs_libcrypto(str(maps)) == "/opt/my lib/libcrypto.so.3"
    maps.write_text("7f20-7f30 rw-p 00000000 00:00 0 [heap]\n")
    assert hashstate._hashlibs_libcrypto(str(maps)) is None
