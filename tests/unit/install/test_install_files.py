"""`files` entries through `otad install`: rawfile and archive, on the running filesystem and
inside an ext4 device (mounted, or written with debugfs when mounting is not possible).

Tar members that would land outside `path` are refused and nothing is written outside; a bad
sha256 leaves an existing file as it was; the phase order (files after images) is enforced.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import List

import pytest

from otad.errors import REFUSED, VERIFICATION, WRITE_FAILED
from tests.bundles import gz, zst
from tests.conftest import Device, install, one_error, run_cli
from tests.bundles import swugenerator_bundle
from tests.unit.install.entries import (Art, bundle, can_loop_mount, debugfs, e2fsck_clean, file, fs_bytes, image,
                                        mkfs_ext4, tar_bytes)



@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "rootfs"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def loop_mount_problem(tmp_path_factory: pytest.TempPathFactory):
    return can_loop_mount(tmp_path_factory.mktemp("probe"))


# --- rawfile on the running filesystem ------------------------------------------------------

def test_rawfile_is_written_with_mode_0600(tmp_path, device, pki, capsys, dest) -> None:
    b = bundle(tmp_path / "b.swu", pki, [file("motd", b"hello\n", str(dest / "etc/motd"),
                                              properties={"create-destination": "true"})])
    rc, out, err = install(device, pki, b, capsys)
    assert rc == 0, err
    target = dest / "etc" / "motd"
    assert target.read_bytes() == b"hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o755
    assert not list((dest / "etc").glob(".*"))  # no temp file left behind


def test_rawfile_without_create_destination_needs_the_directory(tmp_path, device, pki, capsys, dest) -> None:
    b = bundle(tmp_path / "b.swu", pki, [file("motd", b"x", str(dest / "etc/motd"))])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == REFUSED and "create-destination" in one_error(err) and "'motd'" in one_error(err)
    assert not (dest / "etc").exists()


def test_rawfile_replacing_a_file_keeps_its_mode_unless_atomic(tmp_path, device, pki, capsys, dest) -> None:
    for name in ("plain", "atomic"):
        (dest / name).write_bytes(b"old")
        (dest / name).chmod(0o644)
    arts = [file("plain", b"new", str(dest / "plain")),
            file("atomic", b"new!", str(dest / "atomic"), properties={"atomic-install": "true"})]
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys)
    assert rc == 0, err
    assert (dest / "plain").read_bytes() == b"new" and stat.S_IMODE((dest / "plain").stat().st_mode) == 0o644
    assert (dest / "atomic").read_bytes() == b"new!" and stat.S_IMODE((dest / "atomic").stat().st_mode) == 0o600
    assert not (dest / "atomic.tmp").exists()


@pytest.mark.parametrize("props", [{}, {"atomic-install": "true"}])
def test_rawfile_with_a_bad_hash_leaves_the_old_file(tmp_path, device, pki, capsys, dest, props) -> None:
    (dest / "conf").write_bytes(b"old")
    art = file("conf", b"evil", str(dest / "conf"), properties=props)
    art.attrs["sha256"] = "ab" * 32
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == VERIFICATION and "sha256 mismatch" in one_error(err) and "'conf'" in one_error(err)
    assert (dest / "conf").read_bytes() == b"old"
    assert sorted(p.name for p in dest.iterdir()) == ["conf"]


def test_rawfile_installed_directly_is_written_in_place(tmp_path, device, pki, capsys, dest) -> None:
    """SWUpdate's streaming rawfile: no temp file; a bad hash is found after the write (documented)."""
    art = file("conf", b"streamed", str(dest / "conf"), **{"installed-directly": True})
    art.attrs["sha256"] = "ab" * 32
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == VERIFICATION and "sha256 mismatch" in err
    assert (dest / "conf").read_bytes() == b"streamed"


def test_rawfile_path_must_be_absolute_and_without_dotdot(tmp_path, device, pki, capsys, dest) -> None:
    for path, fragment in (("etc/motd", "absolute"), (f"{dest}/../escape", "'..'")):
        b = bundle(tmp_path / f"b{len(path)}.swu", pki, [file("motd", b"x", path)])
        rc, _, err = install(device, pki, b, capsys)
        assert rc == REFUSED and fragment in one_error(err)
    assert not (dest.parent / "escape").exists()


def test_device_without_filesystem_is_refused(tmp_path, device, pki, capsys) -> None:
    b = bundle(tmp_path / "b.swu", pki, [file("motd", b"x", "/etc/motd", device="/dev/mmcblk0p3")])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == REFUSED and "device given without filesystem" in one_error(err)
    assert device.untouched()


def test_unknown_files_type_is_refused_before_writing(tmp_path, device, pki, capsys, dest) -> None:
    b = bundle(tmp_path / "b.swu", pki, [file("x", b"x", str(dest / "x"), type="raw")])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == REFUSED and "no files handler for type 'raw'" in one_error(err)
    assert not (dest / "x").exists()


# --- archive on the running filesystem ------------------------------------------------------

TREE = [("etc", None), ("etc/issue", b"otad test\n"), ("etc/hostname", b"pi\n"), ("bin", None),
        ("bin/tool", b"#!/bin/sh\n"), ("bin/link", "tool"), ("bin/hard->hard", "bin/tool")]
TREE_ATTRS = {"bin/tool": {"mode": 0o4755, "uid": 1234, "gid": 99}, "etc": {"mode": 0o750}}


@pytest.mark.parametrize("encoding", ["plain", "gz-inside", "zst-inside", "xz-inside", "compressed-zlib",
                                      "compressed-zstd"])
def test_archive_is_unpacked_under_path(tmp_path, device, pki, capsys, dest, encoding) -> None:
    data = tar_bytes(TREE, attrs=TREE_ATTRS, mode="w:xz" if encoding == "xz-inside" else "w")
    attrs = {}
    if encoding == "gz-inside":
        data = gz(data)
    elif encoding == "zst-inside":
        data = zst(data)
    elif encoding.startswith("compressed-"):
        attrs["compressed"] = encoding.split("-")[1]
        data = gz(data) if attrs["compressed"] == "zlib" else zst(data)
    b = bundle(tmp_path / "b.swu", pki, [file("root.tar", data, str(dest), type="archive", **attrs)])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == 0, err
    assert (dest / "etc/issue").read_bytes() == b"otad test\n"
    assert os.readlink(dest / "bin/link") == "tool"
    assert (dest / "bin/hard").stat().st_ino == (dest / "bin/tool").stat().st_ino
    # without preserve-attributes: permission bits minus the umask, no setuid, owner and time ours
    tool = (dest / "bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o755 and tool.st_uid == os.geteuid()
    assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o750


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_archive_with_preserve_attributes_keeps_owner_time_and_setuid(tmp_path, device, pki, capsys, dest) -> None:
    data = tar_bytes(TREE, attrs=TREE_ATTRS)
    b = bundle(tmp_path / "b.swu", pki, [file("root.tar", data, str(dest / "new"), type="tar",
                                              **{"preserve-attributes": True},
                                              properties={"create-destination": "true"})])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == 0, err
    tool = (dest / "new/bin/tool").stat()
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid, int(tool.st_mtime)) == \
        (0o4755, 1234, 99, 1_600_000_000)
    assert int((dest / "new/etc").stat().st_mtime) == 1_600_000_000


ESCAPES = {
    "dotdot member": [("ok", b"1"), ("../outside", b"x")],
    "absolute member": [("ok", b"1"), ("/outside", b"x")],
    "symlink climbing out": [("ok", b"1"), ("link", "../../outside")],
    "absolute symlink outside path": [("ok", b"1"), ("link", "/etc/passwd")],
    "write through a symlink": [("ok", b"1"), ("sub", None), ("sub/link", "."), ("sub/link/x", b"x")],
    "hardlink with dotdot": [("ok", b"1"), ("hl->hard", "../outside")],
    "device node": [("ok", b"1"), ("null", b"")],
}


@pytest.mark.parametrize("streamed", [False, True], ids=["spooled", "installed-directly"])
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_archive_member_escaping_path_is_refused(tmp_path, device, pki, capsys, case, streamed) -> None:
    root = tmp_path / "fs"
    dest = root / "opt" / "app"
    dest.mkdir(parents=True)
    attrs = {"null": {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}}
    data = tar_bytes(ESCAPES[case], attrs=attrs)
    extra = {"installed-directly": True} if streamed else {}
    b = bundle(tmp_path / "b.swu", pki, [file("app.tar", data, str(dest), type="archive", **extra)])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == WRITE_FAILED
    line = one_error(err)
    assert "'app.tar'" in line
    assert not (root / "opt" / "outside").exists() and not (root / "outside").exists()
    assert not (dest / "sub" / "x").exists()
    if not streamed:
        assert list(dest.iterdir()) == []  # spooled: nothing unpacked before the whole member was verified


def test_archive_symlinks_that_stay_under_path_are_installed(tmp_path, device, pki, capsys, dest) -> None:
    data = tar_bytes([("a", None), ("a/b", None), ("a/b/up", "../.."), ("top", "a/b"), ("abs", f"{dest}/a")])
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [file("t.tar", data, str(dest),
                                                                            type="archive")]), capsys)
    assert rc == 0, err
    assert os.readlink(dest / "a/b/up") == "../.." and os.readlink(dest / "abs") == f"{dest}/a"


def test_a_corrupt_tar_fails_naming_the_member(tmp_path, device, pki, capsys, dest) -> None:
    b = bundle(tmp_path / "b.swu", pki, [file("t.tar", b"not a tar at all" * 100, str(dest), type="archive")])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == WRITE_FAILED and "'t.tar'" in one_error(err) and "tar" in one_error(err)


# --- files inside an ext4 device ---------------------------------------------------------------

def ext4_device(device: Device, tmp_path: Path, name: str = "mmcblk0p3") -> bytes:
    img = mkfs_ext4(tmp_path / "rootfs.ext4", 4, {"etc/issue": b"old issue\n"})
    device.slot(name).write_bytes(img)
    return img


@pytest.mark.parametrize("via", ["debugfs", "mount"])
def test_rawfile_into_an_ext4_device(tmp_path, device, pki, capsys, via, loop_mount_problem) -> None:
    if via == "mount" and loop_mount_problem:
        pytest.skip(loop_mount_problem)
    img = mkfs_ext4(tmp_path / "rootfs.ext4", 4, {"etc/issue": b"old issue\n", "etc/keep": b"k"})
    arts: List[Art] = [image("rootfs.ext4", img, "/dev/mmcblk0p3"),
                       file("issue", b"new issue\n", "/etc/issue", device="/dev/mmcblk0p3", filesystem="ext4"),
                       file("conf", b"c=1\n", "/etc/otad/x.conf", device="mmcblk0p3", filesystem="ext4",
                            properties={"create-destination": "true"})]
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys,
                         extra_install=f'files_via = "{via}";')
    assert rc == 0, err
    slot = device.slot()
    assert debugfs(slot, "cat /etc/issue") == "new issue\n"
    assert debugfs(slot, "cat /etc/otad/x.conf") == "c=1\n" and debugfs(slot, "cat /etc/keep") == "k"
    assert "Mode:  0600" in debugfs(slot, "stat /etc/otad/x.conf")
    ok, report = e2fsck_clean(slot)
    assert ok, report
    assert not list((device.state / "tmp").iterdir())  # no spool file, no mount point left


def test_archive_into_an_ext4_device_by_mount(tmp_path, device, pki, capsys, loop_mount_problem) -> None:
    if loop_mount_problem:
        pytest.skip(loop_mount_problem)
    ext4_device(device, tmp_path)
    data = tar_bytes([("opt", None), ("opt/app", b"app"), ("lib", "usr/lib")])
    b = bundle(tmp_path / "b.swu", pki, [file("t.tar", data, "/", type="archive", device="/dev/mmcblk0p3",
                                              filesystem="ext4")])
    rc, _, err = install(device, pki, b, capsys, extra_install='files_via = "mount";')
    assert rc == 0, err
    assert debugfs(device.slot(), "cat /opt/app") == "app"
    assert e2fsck_clean(device.slot())[0]


def test_archive_without_mount_is_refused_before_writing(tmp_path, device, pki, capsys) -> None:
    ext4_device(device, tmp_path)
    before = device.slot_bytes()
    b = bundle(tmp_path / "b.swu", pki, [file("t.tar", tar_bytes([("a", b"1")]), "/", type="archive",
                                              device="/dev/mmcblk0p3", filesystem="ext4")])
    rc, _, err = install(device, pki, b, capsys, extra_install='files_via = "debugfs";')
    assert rc == REFUSED and "only rawfile entries to ext2/3/4" in one_error(err)
    assert device.slot_bytes() == before


def test_files_member_before_an_image_member_is_refused(tmp_path, device, pki, capsys) -> None:
    img = mkfs_ext4(tmp_path / "rootfs.ext4", 4, {"etc/issue": b"x"})
    arts = [file("issue", b"new", "/etc/issue", device="/dev/mmcblk0p3", filesystem="ext4"),
            image("rootfs.ext4", img, "/dev/mmcblk0p3")]
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys,
                         extra_install='files_via = "debugfs";')
    assert rc == REFUSED
    assert "files entry 'issue' must come after image 'rootfs.ext4' in the archive" in one_error(err)
    assert device.untouched()


def test_files_into_the_running_slot_are_refused(tmp_path, pki, capsys) -> None:
    from tests.unit.test_update_ab import AbDevice

    ab = AbDevice(tmp_path / "ab", pki)
    desc_arts = [file("x", b"x", "/etc/x", device="/dev/mmcblk0p2", filesystem="ext4")]
    b = bundle(tmp_path / "b.swu", pki, desc_arts, selection=("stable", "copy2"))
    rc, _, err = ab.otad(capsys, "install", b)
    assert rc == REFUSED and "it is in use (the running slot)" in one_error(err)


def test_dry_run_writes_no_file(tmp_path, device, pki, capsys, dest) -> None:
    arts = [file("motd", b"hello", str(dest / "motd")),
            file("t.tar", tar_bytes([("a", b"1")]), str(dest), type="archive")]
    rc, out, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys, "-n")
    assert rc == 0, err
    assert list(dest.iterdir()) == []


def test_info_shows_files_with_type_and_path(tmp_path, pki, capsys, dest) -> None:
    arts = [file("motd", b"hello", "/etc/motd", device="/dev/mmcblk0p3", filesystem="ext4"),
            file("t.tar", tar_bytes([("a", b"1")]), "/opt", type="archive")]
    rc, out, err = run_cli(["info", bundle(tmp_path / "b.swu", pki, arts), "-k", pki.ca_pem], capsys)
    assert rc == REFUSED and "would be refused: " in out and "hardware revision unknown" in out  # no -H here
    assert "file motd [rawfile] -> /etc/motd on /dev/mmcblk0p3 (ext4)" in out
    assert "file t.tar [archive] -> /opt " in out


def test_swugenerator_bundle_with_scripts_ext4_image_and_a_file(tmp_path, device, pki, capsys) -> None:
    """swugenerator stores members in the order the template names them: scripts, images, files."""
    log = tmp_path / "marker.log"
    device.slot().write_bytes(b"\xaa" * (16 << 20))
    img = mkfs_ext4(tmp_path / "rootfs.ext4", 8, {"etc/issue": b"gen\n"})
    template = (
        'software = { version = "5.0"; hardware-compatibility = ["1.0"];\n'
        '  scripts = ( { filename = "pre.sh"; type = "preinstall"; },\n'
        '              { filename = "post.sh"; type = "postinstall"; } );\n'
        '  images = ( { filename = "rootfs.ext4"; device = "/dev/mmcblk0p3"; compressed = "zlib";\n'
        '               properties = { resize = "true"; }; } );\n'
        '  files = ( { filename = "hostname"; path = "/etc/hostname"; device = "/dev/mmcblk0p3";\n'
        '              filesystem = "ext4"; properties = { atomic-install = "true"; }; } );\n};\n')
    artifacts = {"pre.sh": f"#!/bin/sh\necho pre >> {log}\n".encode(),
                 "post.sh": f"#!/bin/sh\necho post >> {log}\n".encode(),
                 "rootfs.ext4": img, "hostname": b"pi-zero\n"}
    b = swugenerator_bundle(tmp_path / "gen.swu", template, artifacts, pki, tmp_path)
    rc, _, err = install(device, pki, b, capsys, extra_install='files_via = "debugfs";')
    assert rc == 0, err
    assert log.read_text().split() == ["pre", "post"]
    slot = device.slot()
    assert debugfs(slot, "cat /etc/hostname") == "pi-zero\n" and debugfs(slot, "cat /etc/issue") == "gen\n"
    assert e2fsck_clean(slot)[0] and fs_bytes(slot) == 16 << 20


def test_a_device_that_is_mounted_already_is_written_where_it_is_mounted(tmp_path, device, pki, capsys,
                                                                         loop_mount_problem) -> None:
    """Mounting an image file a second time would make a second ext4 instance on the same bytes."""
    import subprocess

    if loop_mount_problem:
        pytest.skip(loop_mount_problem)
    ext4_device(device, tmp_path)
    point = tmp_path / "already"
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(device.slot()), str(point)], check=True)
    try:
        b = bundle(tmp_path / "b.swu", pki, [file("motd", b"live\n", "/etc/motd", device="/dev/mmcblk0p3",
                                                  filesystem="ext4")])
        rc, _, err = install(device, pki, b, capsys)
        assert rc == 0, err
        assert f"is mounted at {point}: writing there" in err
        assert (point / "etc/motd").read_bytes() == b"live\n"  # still mounted, written through it
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert debugfs(device.slot(), "cat /etc/motd") == "live\n" and e2fsck_clean(device.slot())[0]
