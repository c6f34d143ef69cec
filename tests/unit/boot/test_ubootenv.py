"""Unit tests for otad.boot.ubootenv: copy selection, corrupt copies, safe updates, power cuts, the lock."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otad.boot.envimage import build_image, parse_image
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout, parse_fw_env_config
from otad.boot.ubootenv import UBootEnv
from otad.errors import EnvCorrupt, EnvError

SIZE = 0x4000
VECTOR = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
OLD = {"bootcount": "0", "rootpart": "2", "upgrade_available": "0"}
NEW_CHANGES = {"rootpart": "3", "upgrade_available": "1"}
NEW = {"bootcount": "0", "rootpart": "3", "upgrade_available": "1"}


class PowerCut(BaseException):
    """Stands for the power going away: nothing after it runs, no handler catches it."""


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def lock_path(tmp_path: Path) -> str:
    return str(tmp_path / "lockdir" / "fw_printenv.lock")


def crc_of(blob: bytes) -> int:
    return int(struct.unpack("<I", blob[:4])[0])


def make_single(tmp_path: Path, lock_path: str, variables: Mapping[str, str] = OLD) -> Tuple[UBootEnv, Path]:
    path = tmp_path / "uboot.env"
    path.write_bytes(build_image(variables, SIZE))
    layout = EnvLayout((EnvCopyLocation(str(path), 0, SIZE),))
    return UBootEnv(layout, lock_path=lock_path), path


def make_redundant(
    tmp_path: Path,
    lock_path: str,
    copy0: Optional[Tuple[Mapping[str, str], int]],
    copy1: Optional[Tuple[Mapping[str, str], int]],
) -> Tuple[UBootEnv, Path, Path]:
    paths = (tmp_path / "uboot.env", tmp_path / "uboot-redund.env")
    for path, copy in zip(paths, (copy0, copy1)):
        if copy is not None:
            path.write_bytes(build_image(copy[0], SIZE, redundant=True, flags=copy[1]))
    layout = EnvLayout(tuple(EnvCopyLocation(str(p), 0, SIZE) for p in paths))
    return UBootEnv(layout, lock_path=lock_path), paths[0], paths[1]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -------------------------------------------------------- redundant copy selection


@pytest.mark.parametrize(
    "flags0, flags1, active",
    [
        (1, 2, 1),
        (2, 1, 0),
        (3, 3, 0),  # tie: copy 0
        (1, 1, 0),  # mkenvimage -r writes 1 into both
        (255, 0, 1),  # wrap: 0 is newer than 255
        (0, 255, 0),
        (254, 255, 1),
        (255, 254, 0),
        (0, 1, 1),
        (5, 200, 1),  # no wrap except 255 vs 0: the larger wins
    ],
)
def test_read_selects_the_copy_with_the_newer_incremental_flags(
    tmp_path: Path, lock_path: str, flags0: int, flags1: int, active: int
) -> None:
    env, _, _ = make_redundant(tmp_path, lock_path, ({"copy": "0"}, flags0), ({"copy": "1"}, flags1))
    snapshot = env.read()
    assert snapshot.active_copy == active
    assert dict(snapshot.variables) == {"copy": str(active)}
    assert snapshot.flags == (flags0, flags1)[active]
    assert snapshot.valid_copies == (0, 1)


@pytest.mark.parametrize("bad", [0, 1])
def test_read_uses_the_only_valid_copy_even_with_older_flags(tmp_path: Path, lock_path: str, bad: int) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, ({"copy": "0"}, 1), ({"copy": "1"}, 2))
    flip_byte((path0, path1)[bad], 100)
    snapshot = env.read()
    assert snapshot.active_copy == 1 - bad
    assert snapshot.valid_copies == (1 - bad,)


def test_read_with_both_copies_bad_names_each_problem(tmp_path: Path, lock_path: str) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    flip_byte(path0, 10)
    path1.write_bytes(path1.read_bytes()[:100])
    with pytest.raises(EnvCorrupt) as info:
        env.read()
    message = str(info.value)
    assert "copy 0 (" + str(path0) + "): bad CRC: stored 0x" in message
    assert "copy 1 (" + str(path1) + "): short: 100 of 0x4000 bytes" in message
    assert "built-in default" in message


def test_read_treats_a_missing_redundant_copy_as_invalid(tmp_path: Path, lock_path: str) -> None:
    env, _, _ = make_redundant(tmp_path, lock_path, (OLD, 7), None)
    snapshot = env.read()
    assert (snapshot.active_copy, snapshot.flags, snapshot.valid_copies) == (0, 7, (0,))


# ------------------------------------------------------------ corrupt inputs


def corruptions() -> List[Tuple[str, Callable[[Path], None], str]]:
    return [
        ("bad crc", lambda p: flip_byte(p, 200), "bad CRC: stored 0x"),
        ("truncated", lambda p: p.write_bytes(p.read_bytes()[:SIZE - 1]), "short: 16383 of 0x4000 bytes"),
        ("empty file", lambda p: p.write_bytes(b""), "short: 0 of 0x4000 bytes"),
        ("erased", lambda p: p.write_bytes(b"\xff" * SIZE), "erased (all 0xff)"),
        ("zeros", lambda p: p.write_bytes(b"\0" * SIZE), "all zeros"),
        (
            "big endian",
            lambda p: p.write_bytes(struct.pack(">I", crc_of(p.read_bytes())) + p.read_bytes()[4:]),
            "big-endian",
        ),
        ("missing", lambda p: p.unlink(), "missing"),
    ]


@pytest.mark.parametrize("name, corrupt, fragment", corruptions(), ids=[c[0] for c in corruptions()])
def test_corrupt_single_env_raises_env_corrupt_and_update_writes_nothing(
    tmp_path: Path, lock_path: str, name: str, corrupt: Callable[[Path], None], fragment: str
) -> None:
    env, path = make_single(tmp_path, lock_path)
    corrupt(path)
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(EnvCorrupt, match=re.escape(fragment)) as info:
        env.read()
    assert info.value.where == str(path)
    with pytest.raises(EnvCorrupt, match=re.escape(fragment)):
        env.update({"rootpart": "3"})
    assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["lockdir"] + ([path.name] if before is not None else []))


def test_allow_default_starts_from_the_default_when_no_copy_is_valid(tmp_path: Path, lock_path: str) -> None:
    env, path = make_single(tmp_path, lock_path)
    path.write_bytes(b"\xff" * SIZE)
    default = {"bootcmd": "run distro_bootcmd", "rootpart": "2"}
    snapshot = env.update({"rootpart": "3"}, allow_default=default)
    assert dict(snapshot.variables) == {"bootcmd": "run distro_bootcmd", "rootpart": "3"}
    assert parse_image(path.read_bytes(), SIZE, redundant=False) == dict(snapshot.variables)


def test_allow_default_is_ignored_when_a_valid_copy_exists(tmp_path: Path, lock_path: str) -> None:
    env, path = make_single(tmp_path, lock_path)
    snapshot = env.update({"bootcount": "1"}, allow_default={"other": "x"})
    assert dict(snapshot.variables) == dict(OLD, bootcount="1")


def test_allow_default_on_a_redundant_env_with_both_copies_bad_writes_copy_0(
    tmp_path: Path, lock_path: str
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    path0.write_bytes(b"\xff" * SIZE)
    path1.write_bytes(b"\xff" * SIZE)
    snapshot = env.update({}, allow_default={"rootpart": "2"})
    assert (snapshot.active_copy, snapshot.flags, dict(snapshot.variables)) == (0, 1, {"rootpart": "2"})
    assert path1.read_bytes() == b"\xff" * SIZE


def test_short_file_is_reported_at_once_not_waited_for(tmp_path: Path, lock_path: str) -> None:
    env, path = make_single(tmp_path, lock_path)
    layout = EnvLayout((EnvCopyLocation(str(path), 0, 2 * SIZE),))
    with pytest.raises(EnvCorrupt, match="short: 16384 of 0x8000 bytes"):
        UBootEnv(layout, lock_path=lock_path).read()


def test_fifo_as_env_device_is_refused_without_hanging(tmp_path: Path, lock_path: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(fifo), 0, SIZE),)), lock_path=lock_path)
    with pytest.raises(EnvError, match="expected a regular file or a block device"):
        env.read()
    with pytest.raises(EnvError, match="expected a regular file or a block device|cannot write"):
        env.update({"a": "1"}, allow_default={})


def test_character_device_is_refused_as_mtd_or_ubi(lock_path: str) -> None:
    env = UBootEnv(EnvLayout((EnvCopyLocation("/dev/null", 0, SIZE),)), lock_path=lock_path)
    with pytest.raises(EnvError, match="character device") as info:
        env.read()
    assert info.value.where == "/dev/null"


def test_directory_as_env_device_is_an_env_error(tmp_path: Path, lock_path: str) -> None:
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(tmp_path), 0, SIZE),)), lock_path=lock_path)
    with pytest.raises(EnvError):
        env.read()


def test_negative_offset_on_a_regular_file_is_refused(tmp_path: Path, lock_path: str) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4 * SIZE)
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(path), -SIZE, SIZE),)), lock_path=lock_path)
    with pytest.raises(EnvError, match="negative offset counts from the end of a block device"):
        env.read()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(blob0=st.binary(max_size=80), blob1=st.binary(max_size=80), keep_valid=st.sampled_from([None, 0, 1]))
def test_read_of_random_files_gives_a_snapshot_or_env_corrupt(
    tmp_path: Path, blob0: bytes, blob1: bytes, keep_valid: Optional[int]
) -> None:
    size = 64
    blobs = [blob0, blob1]
    if keep_valid is not None:
        blobs[keep_valid] = build_image({"k": "v"}, size, redundant=True, flags=len(blob0) % 256)
    paths = [tmp_path / "f0", tmp_path / "f1"]
    for path, blob in zip(paths, blobs):
        path.write_bytes(blob)
    env = UBootEnv(
        EnvLayout(tuple(EnvCopyLocation(str(p), 0, size) for p in paths)), lock_path=str(tmp_path / "lock")
    )
    try:
        snapshot = env.read()
    except EnvCorrupt:
        assert keep_valid is None
        return
    assert snapshot.active_copy in snapshot.valid_copies


# -------------------------------------------------------------------- updates


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> List[int]:
    calls: List[int] = []
    real = getattr(os, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, counted)
    return calls


def test_redundant_update_writes_the_inactive_copy_with_incremented_flags(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 5), (OLD, 4))
    active_before = path0.read_bytes()
    writes = count_calls(monkeypatch, "pwrite")
    snapshot = env.update(NEW_CHANGES)
    assert len(writes) == 1  # all changes in one write
    assert path0.read_bytes() == active_before
    assert path1.read_bytes() == build_image(NEW, SIZE, redundant=True, flags=6)
    assert (snapshot.active_copy, snapshot.flags, snapshot.valid_copies) == (1, 6, (0, 1))
    assert dict(snapshot.variables) == NEW
    assert env.read() == snapshot


def test_successive_redundant_updates_alternate_copies_and_wrap_flags(tmp_path: Path, lock_path: str) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 253), (OLD, 252))
    seen = []
    for i in range(5):
        before = {0: path0.read_bytes(), 1: path1.read_bytes()}
        active = env.read().active_copy
        snapshot = env.update({"bootcount": str(i + 1)})
        assert (path0, path1)[active].read_bytes() == before[active]
        seen.append((snapshot.active_copy, snapshot.flags))
        assert env.read().variables["bootcount"] == str(i + 1)
    assert seen == [(1, 254), (0, 255), (1, 0), (0, 1), (1, 2)]


def test_single_copy_file_is_replaced_atomically_in_one_write(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path = make_single(tmp_path, lock_path)
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    replaces = count_calls(monkeypatch, "replace")
    snapshot = env.update(NEW_CHANGES)
    assert len(replaces) == 1
    assert path.read_bytes() == build_image(NEW, SIZE)
    assert path.stat().st_ino != inode  # temp + rename, not in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["lockdir", "uboot.env"]
    assert (snapshot.active_copy, snapshot.flags, snapshot.valid_copies) == (0, None, (0,))


def fake_mounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fstype: str, point: Optional[Path] = None) -> None:
    """/proc/self/mountinfo as otad reads it, with `point` (tmp_path) mounted as `fstype`."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n"
                         f"30 22 179:1 / {point or tmp_path} rw,noatime shared:2 - {fstype} /dev/mmcblk0p1 rw\n")
    monkeypatch.setattr("otad.boot.ubootenv.MOUNTINFO", str(mountinfo))


@pytest.mark.parametrize("fstype", ["vfat", "msdos", "exfat"])
def test_single_copy_on_fat_is_written_in_place_as_fw_setenv_does(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch, fstype: str
) -> None:
    """FAT renames are not atomic across a power cut (the emulated Pi's scenario 6 lost
    uboot.env that way): the file is rewritten in place, as libubootenv's fw_setenv does
    (open O_RDWR, write, fsync), and no temp file appears."""
    env, path = make_single(tmp_path, lock_path)
    fake_mounts(monkeypatch, tmp_path, fstype)
    inode = path.stat().st_ino
    replaces = count_calls(monkeypatch, "replace")
    env.update(NEW_CHANGES)
    assert replaces == [] and path.stat().st_ino == inode
    assert path.read_bytes() == build_image(NEW, SIZE)
    assert sorted(os.listdir(tmp_path)) == ["lockdir", "mountinfo", "uboot.env"]


def test_single_copy_on_ext4_is_still_replaced_by_rename(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path = make_single(tmp_path, lock_path)
    fake_mounts(monkeypatch, tmp_path, "vfat", tmp_path / "boot")  # the mount that holds uboot.env is /
    inode = path.stat().st_ino
    env.update(NEW_CHANGES)
    assert path.stat().st_ino != inode and path.read_bytes() == build_image(NEW, SIZE)


def test_single_copy_behind_a_symlink_keeps_the_symlink(tmp_path: Path, lock_path: str) -> None:
    _, real = make_single(tmp_path, lock_path)
    link = tmp_path / "link.env"
    link.symlink_to(real)
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(link), 0, SIZE),)), lock_path=lock_path)
    env.update(NEW_CHANGES)
    assert link.is_symlink()
    assert parse_image(real.read_bytes(), SIZE, redundant=False) == NEW


def test_single_copy_at_an_offset_is_written_in_place_keeping_other_bytes(
    tmp_path: Path, lock_path: str
) -> None:
    path = tmp_path / "disk.img"
    head, tail = os.urandom(0x1000), os.urandom(0x2345)
    path.write_bytes(head + build_image(OLD, SIZE) + tail)
    inode = path.stat().st_ino
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(path), 0x1000, SIZE),)), lock_path=lock_path)
    env.update(NEW_CHANGES)
    data = path.read_bytes()
    assert data[:0x1000] == head and data[0x1000 + SIZE:] == tail
    assert data[0x1000:0x1000 + SIZE] == build_image(NEW, SIZE)
    assert path.stat().st_ino == inode


def test_single_copy_at_offset_0_of_a_larger_file_keeps_the_rest(tmp_path: Path, lock_path: str) -> None:
    path = tmp_path / "disk.img"
    tail = os.urandom(100)
    path.write_bytes(build_image(OLD, SIZE) + tail)
    env = UBootEnv(EnvLayout((EnvCopyLocation(str(path), 0, SIZE),)), lock_path=lock_path)
    env.update(NEW_CHANGES)
    assert path.read_bytes() == build_image(NEW, SIZE) + tail


def test_redundant_copies_at_two_offsets_of_one_file(tmp_path: Path, lock_path: str) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(
        b"\xaa" * 16 + build_image(OLD, SIZE, redundant=True, flags=1) + build_image(OLD, SIZE, redundant=True, flags=1)
    )
    layout = parse_fw_env_config(f"{path} 16 0x4000\n{path} {16 + SIZE} 0x4000\n", source="cfg")
    env = UBootEnv(layout, lock_path=lock_path)
    assert env.update({"a": "1"}).active_copy == 1
    assert env.update({"a": "2"}).active_copy == 0
    data = path.read_bytes()
    assert data[:16] == b"\xaa" * 16
    assert parse_image(data[16:], SIZE, redundant=True) == dict(OLD, a="2")


def test_update_creates_a_missing_inactive_redundant_copy(tmp_path: Path, lock_path: str) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 3), None)
    before = path0.read_bytes()
    snapshot = env.update({"bootcount": "1"})
    assert (snapshot.active_copy, snapshot.flags, snapshot.valid_copies) == (1, 4, (0, 1))
    assert path0.read_bytes() == before
    assert path1.stat().st_size == SIZE


def test_update_deletes_with_none_and_empty_string(tmp_path: Path, lock_path: str) -> None:
    env, path = make_single(tmp_path, lock_path, VECTOR)
    snapshot = env.update({"bootcount": None, "bootlimit": "", "not_there": None, "new": "x y=z"})
    assert dict(snapshot.variables) == {"rootpart": "2", "upgrade_available": "0", "new": "x y=z"}
    assert parse_image(path.read_bytes(), SIZE, redundant=False) == dict(snapshot.variables)


def test_update_without_a_change_writes_nothing(tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env, path = make_single(tmp_path, lock_path)
    replaces = count_calls(monkeypatch, "replace")
    snapshot = env.update({"rootpart": "2", "absent": None})
    assert replaces == []
    assert dict(snapshot.variables) == OLD


def test_update_keeps_existing_values_it_would_not_accept_as_new(tmp_path: Path, lock_path: str) -> None:
    # Written by U-Boot's saveenv (escaped backslash) or libubootenv ("a="): kept byte for byte.
    env, path = make_single(tmp_path, lock_path, {"script": "echo a\\\\b", "empty": "", "#odd": "1"})
    snapshot = env.update({"rootpart": "3"})
    assert dict(snapshot.variables) == {"script": "echo a\\\\b", "empty": "", "#odd": "1", "rootpart": "3"}


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"a=b": "1"}, "variable name 'a=b': contains '='"),
        ({"a\0b": "1"}, "variable name 'a\\\\x00b': contains a NUL"),
        ({"": "1"}, "variable name '': expected a non-empty name"),
        ({"#x": "1"}, "variable name '#x': starts with '#'"),
        ({" x": "1"}, "variable name ' x': contains blanks"),
        ({"a b": "1"}, "variable name 'a b': contains blanks"),
        ({"a\nb": "1"}, "variable name 'a\\\\nb'"),
        ({"a": "x\0y"}, "variable 'a': value contains a NUL byte"),
        ({"bootcmd": "echo a\\b"}, "variable 'bootcmd': value contains a backslash .* got 'echo a"),
        ({"a": "\ud800"}, "variable 'a': value is not encodable"),
    ],
)
def test_update_rejects_bad_names_and_values_before_writing(
    tmp_path: Path, lock_path: str, changes: Dict[str, str], fragment: str
) -> None:
    env, path = make_single(tmp_path, lock_path)
    before = path.read_bytes()
    with pytest.raises(EnvError, match=fragment):
        env.update(dict(changes, rootpart="3"))
    assert path.read_bytes() == before


@pytest.mark.parametrize("redundant", [False, True])
def test_update_of_an_env_too_large_raises_before_anything_is_written(
    tmp_path: Path, lock_path: str, redundant: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if redundant:
        env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
        paths = [path0, path1]
    else:
        env, path = make_single(tmp_path, lock_path)
        paths = [path]
    before = [p.read_bytes() for p in paths]
    writes = count_calls(monkeypatch, "pwrite") + count_calls(monkeypatch, "replace")
    with pytest.raises(EnvError, match=r"environment too large: 4 variables need 16433 bytes, a copy of size 0x4000 holds (16380|16379)"):
        env.update({"big": "x" * SIZE})
    assert [p.read_bytes() for p in paths] == before
    assert writes == []
    assert sorted(os.listdir(tmp_path)) == sorted(["lockdir"] + [p.name for p in paths])


# ---------------------------------------------------------- verify and retry


def corrupting_pwrite(monkeypatch: pytest.MonkeyPatch, bad_writes: int) -> List[int]:
    real = os.pwrite
    calls: List[int] = []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        buf = bytearray(data)
        if len(calls) <= bad_writes:
            buf[-1] ^= 0x5A  # a bit error in the padding: the CRC no longer matches
        return real(fd, bytes(buf), offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return calls


def test_update_retries_once_when_the_read_back_differs(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    calls = corrupting_pwrite(monkeypatch, bad_writes=1)
    snapshot = env.update(NEW_CHANGES)
    assert len(calls) == 2
    assert (snapshot.active_copy, dict(snapshot.variables)) == (0, NEW)


def test_update_gives_up_after_one_retry_and_leaves_the_active_copy(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    before = path1.read_bytes()
    calls = corrupting_pwrite(monkeypatch, bad_writes=2)
    with pytest.raises(EnvError, match="copy 0 did not read back as written, also after one retry: bad CRC") as info:
        env.update(NEW_CHANGES)
    assert info.value.where == str(path0)
    assert len(calls) == 2
    assert path1.read_bytes() == before
    monkeypatch.undo()
    assert dict(env.read().variables) == OLD


def test_write_error_becomes_env_error_naming_the_device(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))

    def no_space(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(EnvError, match="cannot write: No space left on device") as info:
        env.update(NEW_CHANGES)
    assert info.value.where == str(path0)


# -------------------------------------------------------------- power cuts


def cut_after_bytes(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """pwrite stores only the first `limit` bytes of the env write, then the power goes."""
    real = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if limit < len(data):
            real(fd, bytes(data[:limit]), offset)
            raise PowerCut()
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize("limit", [0, 1, 4, 5, 6, 40, SIZE // 2, SIZE - 1, SIZE])
def test_power_cut_during_a_redundant_write_leaves_old_or_new(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    # the inactive copy holds an older, different env: a torn write must not revive it either
    stale = build_image({"stale": "1"}, SIZE, redundant=True, flags=1)
    path0.write_bytes(stale)
    new = build_image(NEW, SIZE, redundant=True, flags=3)
    cut_after_bytes(monkeypatch, limit)
    try:
        env.update(NEW_CHANGES)
    except PowerCut:
        pass
    monkeypatch.undo()
    assert path0.read_bytes() == new[:limit] + stale[limit:]
    # once every byte that differs has landed (the rest is the same zero padding) it is the new env
    expected = NEW if new[:limit] + stale[limit:] == new else OLD
    assert dict(env.read().variables) == expected
    assert limit < 49 or expected == NEW  # 5 header + 44 bytes of list
    assert env.update({"bootcount": "1"}).variables["bootcount"] == "1"


@pytest.mark.parametrize("length", [0, 3, 5, 100, 220, SIZE - 1])
def test_truncated_or_torn_inactive_copy_leaves_the_active_copy_in_charge(
    tmp_path: Path, lock_path: str, length: int
) -> None:
    env, path0, path1 = make_redundant(tmp_path, lock_path, (OLD, 9), ({"stale": "x" * 200}, 8))
    new = build_image(NEW, SIZE, redundant=True, flags=10)
    path1.write_bytes(new[:length])  # truncated
    assert dict(env.read().variables) == OLD
    torn = new[:length] + build_image({"stale": "x" * 200}, SIZE, redundant=True, flags=8)[length:]
    path1.write_bytes(torn)  # torn in place: new head, old tail
    snapshot = env.read()
    assert dict(snapshot.variables) == (NEW if torn == new else OLD)
    assert snapshot.active_copy == (1 if torn == new else 0)


@pytest.mark.parametrize("cut_at", ["fsync#1", "replace#1", "fsync#2"])
def test_power_cut_during_a_single_copy_replace_leaves_old_or_new(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch, cut_at: str
) -> None:
    env, path = make_single(tmp_path, lock_path)
    name, nth = cut_at.split("#")
    counter = {"n": 0}
    real = getattr(os, name)

    def cut(*args: object) -> object:
        counter["n"] += 1
        if counter["n"] == int(nth):
            raise PowerCut()
        return real(*args)

    monkeypatch.setattr(os, name, cut)
    monkeypatch.setattr(os, "unlink", lambda *a, **k: None)  # a dead process cleans up nothing
    with pytest.raises(PowerCut):
        env.update(NEW_CHANGES)
    monkeypatch.undo()
    after_rename = cut_at == "fsync#2"  # the directory fsync comes after the rename
    assert dict(env.read().variables) == (NEW if after_rename else OLD)
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == (0 if after_rename else 1)
    # a later update works despite the stray temp file
    assert env.update({"bootcount": "2"}).variables["bootcount"] == "2"


def test_truncated_temp_file_left_by_a_crash_does_not_affect_reads(tmp_path: Path, lock_path: str) -> None:
    env, path = make_single(tmp_path, lock_path)
    (tmp_path / ".uboot.env.abcd1234.tmp").write_bytes(build_image(NEW, SIZE)[:1000])
    assert dict(env.read().variables) == OLD
    assert dict(env.update(NEW_CHANGES).variables) == NEW


# --------------------------------------------------------------------- lock


def test_update_holds_an_exclusive_flock_on_the_lock_path_while_writing(
    tmp_path: Path, lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _, _ = make_redundant(tmp_path, lock_path, (OLD, 1), (OLD, 2))
    real = os.pwrite
    held: List[bool] = []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        probe = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(probe)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    env.update(NEW_CHANGES)
    assert held == [True]
    probe = os.open(lock_path, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released afterwards
    os.close(probe)


def test_lock_directory_is_created_when_missing(tmp_path: Path) -> None:
    lock = tmp_path / "a" / "b" / "fw_printenv.lock"
    env, _ = make_single(tmp_path, str(lock))
    env.read()
    assert lock.exists()


def test_unusable_lock_path_is_an_env_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env, path = make_single(tmp_path, str(blocker / "fw_printenv.lock"))
    before = path.read_bytes()
    with pytest.raises(EnvError, match="cannot open lock file") as info:
        env.update(NEW_CHANGES)
    assert info.value.where == str(blocker / "fw_printenv.lock")
    assert path.read_bytes() == before


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(
    changes=st.dictionaries(
        st.text(max_size=6), st.one_of(st.none(), st.text(max_size=8)), max_size=4
    )
)
def test_update_with_random_changes_succeeds_or_raises_env_error(
    tmp_path: Path, changes: Dict[str, Optional[str]]
) -> None:
    env, path = make_single(tmp_path, str(tmp_path / "lock"))
    before = path.read_bytes()
    try:
        snapshot = env.update(changes)
    except EnvError:
        assert path.read_bytes() == before
        return
    assert parse_image(path.read_bytes(), SIZE, redundant=False) == dict(snapshot.variables)


def test_env_snapshot_variables_are_read_only(tmp_path: Path, lock_path: str) -> None:
    env, _ = make_single(tmp_path, lock_path)
    snapshot = env.read()
    with pytest.raises(TypeError):
        snapshot.variables["rootpart"] = "3"  # type: ignore[index]
