"""Debian's swupdate as the oracle for `files` and `scripts`: the same bundle, installed by
each tool into a fresh directory, must leave the same tree (contents, modes, owners, links,
times where kept) and the same script log. Where otad refuses what swupdate does, it says so.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.integration.test_swupdate_oracle import otad, swupdate
from tests.pki import Pki
from tests.unit.install.entries import Art, bundle, file, script, tar_bytes

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]

TREE = [("etc", None), ("etc/issue", b"oracle\n"), ("bin", None), ("bin/tool", b"#!/bin/sh\n"),
        ("bin/link", "tool"), ("bin/hard->hard", "bin/tool"), ("var", None), ("var/lib", None)]
ATTRS = {"bin/tool": {"mode": 0o4775, "uid": 1234, "gid": 99}, "etc": {"mode": 0o750},
         "var/lib": {"mode": 0o700, "uid": 7}}


def snapshot(root: Path, *, times: bool) -> Dict[str, Tuple[object, ...]]:
    """Everything under `root` that an install decides: type, mode, owner, content or link."""
    seen: Dict[str, Tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        what: object = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
        inode_group = st.st_nlink if path.is_file() else 0
        seen[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, what, inode_group,
                                             int(st.st_mtime) if times and not path.is_symlink() else None)
    return seen


def both(tmp_path: Path, pki: Pki, bundle_path: Path, dest: Path, prepare, *, times: bool):
    prepare(dest)
    ok, log = swupdate(bundle_path, pki)
    assert ok, log
    by_swupdate = snapshot(dest, times=times)
    shutil.rmtree(dest)
    prepare(dest)
    ok, err = otad(bundle_path, pki, tmp_path)
    assert ok, err
    return by_swupdate, snapshot(dest, times=times)


def with_old_files(dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in ("plain", "atomic"):
        (dest / name).write_bytes(b"old contents")
        (dest / name).chmod(0o644)


def test_files_on_a_directory_path_land_identically(tmp_path, pki) -> None:
    dest = tmp_path / "fs"
    arts: List[Art] = [
        file("new.conf", b"new\n", str(dest / "sub/new.conf"), properties={"create-destination": "true"}),
        file("plain", b"replaced\n", str(dest / "plain")),
        file("atomic", b"atomic\n", str(dest / "atomic"), properties={"atomic-install": "true"}),
        file("tree.tar", tar_bytes(TREE, attrs=ATTRS), str(dest / "tree"), type="archive",
             properties={"create-destination": "true"}),
    ]
    b = bundle(tmp_path / "f.swu", pki, arts, selection=("stable", "copy2"))
    by_swupdate, by_otad = both(tmp_path, pki, b, dest, with_old_files, times=False)
    assert by_otad == by_swupdate
    assert by_otad["sub/new.conf"][1] == 0o600 and by_otad["plain"][1] == 0o644 and by_otad["atomic"][1] == 0o600
    assert by_otad["tree/bin/tool"][1] == 0o775 & ~current_umask()  # no setuid, umask applied


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_archive_with_preserve_attributes_lands_identically(tmp_path, pki) -> None:
    dest = tmp_path / "fs"
    arts = [file("tree.tar.gz", tar_bytes(TREE, attrs=ATTRS, mode="w:gz"), str(dest), type="archive",
                 **{"preserve-attributes": True})]
    b = bundle(tmp_path / "p.swu", pki, arts, selection=("stable", "copy2"))
    by_swupdate, by_otad = both(tmp_path, pki, b, dest, lambda d: d.mkdir(parents=True), times=True)
    assert by_otad == by_swupdate
    assert by_otad["bin/tool"][1:4] == (0o4775, 1234, 99)


def test_scripts_get_the_same_arguments_and_order(tmp_path, pki) -> None:
    log = tmp_path / "marker.log"
    body = f'#!/bin/sh\necho "$(basename "$0") $# [$*] $SWUPDATE_INFO_FD $SWUPDATE_WARN_FD" >> {log}\n'
    arts = [script("pre.sh", body, "preinstall", data="a 'b c' d"), script("both.sh", body, data="x"),
            script("post.sh", body, "postinstall"), script("plain.sh", body)]
    b = bundle(tmp_path / "s.swu", pki, arts, selection=("stable", "copy2"))
    ok, out = swupdate(b, pki)
    assert ok, out
    by_swupdate = log.read_text()
    log.unlink()
    ok, err = otad(b, pki, tmp_path)
    assert ok, err
    assert log.read_text() == by_swupdate
    # sw-description order within each phase; `data` after SWUpdate's own argument
    assert by_swupdate.splitlines() == ["pre.sh 3 [a b c d] 3 4", "both.sh 2 [preinst x] 3 4",
                                        "plain.sh 1 [preinst] 3 4", "both.sh 2 [postinst x] 3 4",
                                        "post.sh 0 [] 3 4", "plain.sh 1 [postinst] 3 4"]


def test_a_failing_preinstall_script_stops_both_before_the_files(tmp_path, pki) -> None:
    dest = tmp_path / "fs"
    dest.mkdir()
    arts = [script("pre.sh", "#!/bin/sh\nexit 7\n", "preinstall"), file("x", b"x", str(dest / "x"))]
    b = bundle(tmp_path / "s.swu", pki, arts, selection=("stable", "copy2"))
    assert not swupdate(b, pki)[0] and not (dest / "x").exists()
    assert not otad(b, pki, tmp_path)[0] and not (dest / "x").exists()


def test_otad_refuses_a_tar_member_with_dotdot_that_swupdate_writes_outside_path(tmp_path, pki) -> None:
    """swupdate 2022.12 extracts with libarchive flags 0: no ARCHIVE_EXTRACT_SECURE_NODOTDOT."""
    dest = tmp_path / "fs" / "app"
    escape = tmp_path / "fs" / "escaped"
    arts = [file("evil.tar", tar_bytes([("ok", b"1"), ("../escaped", b"x")]), str(dest), type="archive",
                 properties={"create-destination": "true"})]
    b = bundle(tmp_path / "e.swu", pki, arts, selection=("stable", "copy2"))
    swupdate(b, pki)
    assert escape.exists(), "swupdate no longer writes through '..': move this case to the refused-by-both list"
    shutil.rmtree(tmp_path / "fs")
    ok, err = otad(b, pki, tmp_path)
    assert not ok and "'..' component" in err
    assert not escape.exists() and not (dest / "ok").exists()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_otad_refuses_a_device_without_filesystem_that_swupdate_ignores(tmp_path, pki) -> None:
    """swupdate mounts only when both are given; with `device` alone it writes to the running system."""
    dest = tmp_path / "fs"
    dest.mkdir()
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    arts = [file("x.conf", b"x", str(dest / "x.conf"), device=str(disk))]
    b = bundle(tmp_path / "d.swu", pki, arts, selection=("stable", "copy2"))
    assert swupdate(b, pki)[0] and (dest / "x.conf").read_bytes() == b"x"
    (dest / "x.conf").unlink()
    ok, err = otad(b, pki, tmp_path)
    assert not ok and "device given without filesystem" in err and not (dest / "x.conf").exists()


def test_script_data_is_split_like_the_shell_but_not_expanded(tmp_path, pki) -> None:
    log = tmp_path / "marker.log"
    body = f'#!/bin/sh\necho "$#|$1|$2" >> {log}\n'
    b = bundle(tmp_path / "s.swu", pki, [script("p.sh", body, "postinstall", data="'a b' $HOME")],
               selection=("stable", "copy2"))
    assert swupdate(b, pki)[0]
    assert otad(b, pki, tmp_path)[0]
    by_swupdate, by_otad = log.read_text().splitlines()
    assert by_swupdate == f"2|a b|{os.environ['HOME']}" and by_otad == "2|a b|$HOME"
