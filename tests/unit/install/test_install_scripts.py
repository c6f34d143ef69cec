"""Scripts through `otad install`: SWUpdate's phases and arguments, a private spool on disk,
timeouts that kill the whole process group, and failures that leave the boot env alone.

Each script appends one line to a marker log, so the test sees what ran, in which order, with
which arguments, and whether slot b already held the new image at that moment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, List

import pytest

from otad.errors import REFUSED, VERIFICATION, WRITE_FAILED
from tests.conftest import install, one_error, run_cli
from tests.pki import Pki
from tests.unit.install.entries import Art, bundle, image, script
from tests.unit.test_update_ab import AbDevice

IMG = b"NEW-IMAGE" * 1000


def marker(log: Path, label: str, then: str = "") -> str:
    """A script that logs its label, its arguments, whether slot b holds the new image yet,
    the SWUPDATE_*_FD variables, and says hello on the info fd."""
    return (f'#!/bin/sh\nif [ "$(head -c 9 "$OTAD_TEST_SLOT")" = NEW-IMAGE ]; then s=new; else s=old; fi\n'
            f'echo "{label} $# [$*] slot=$s fds=$SWUPDATE_INFO_FD,$SWUPDATE_WARN_FD" >> {log}\n'
            f'echo "{label} says hello" >&$SWUPDATE_INFO_FD\n{then}')



@pytest.fixture
def slot_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Tells the marker scripts (through the environment otad passes on) which slot to look at."""
    return lambda path: monkeypatch.setenv("OTAD_TEST_SLOT", str(path))


def test_scripts_run_in_swupdate_phases_with_its_arguments(tmp_path, device, pki, capsys, slot_env) -> None:
    slot_env(device.slot())
    log = tmp_path / "marker.log"
    arts: List[Art] = [
        script("pre.sh", marker(log, "pre"), "preinstall", data="a 'b c'"),
        script("both.sh", marker(log, "both")),
        script("post.sh", marker(log, "post"), "postinstall"),
        image("rootfs.img", IMG, "/dev/mmcblk0p3"),
    ]
    order = ["pre.sh", "both.sh", "rootfs.img", "post.sh"]  # a post-install script may come anywhere
    rc, out, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts, order=order), capsys)
    assert rc == 0, err
    assert log.read_text().splitlines() == [
        "pre 2 [a b c] slot=old fds=3,4",  # preinstall: no phase argument, then `data`'s words
        "both 1 [preinst] slot=old fds=3,4",  # shellscript: "preinst" before the images...
        "both 1 [postinst] slot=new fds=3,4",  # ...and "postinst" after them
        "post 0 [] slot=new fds=3,4",
    ]
    assert "preinst pre.sh: pre says hello" in err  # SWUPDATE_INFO_FD goes to otad's log
    assert not list((device.state / "tmp").iterdir())  # the private spool is gone


def test_script_spool_is_private_and_on_disk(tmp_path, device, pki, capsys) -> None:
    log = tmp_path / "where.log"
    body = f'#!/bin/sh\necho "$0" >> {log}\nstat -c %a "$(dirname "$0")" >> {log}\nstat -c %a "$0" >> {log}\n'
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [script("w.sh", body, "postinstall")]), capsys)
    assert rc == 0, err
    path, dir_mode, mode = log.read_text().split()
    assert path.startswith(str(device.state / "tmp") + "/") and not path.startswith("/tmp/otad")
    assert (dir_mode, mode) == ("700", "700")


def test_a_script_without_shebang_runs_under_sh(tmp_path, device, pki, capsys) -> None:
    log = tmp_path / "m.log"
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [
        script("plain.sh", f"echo plain $1 >> {log}\n")]), capsys)
    assert rc == 0, err
    assert log.read_text().splitlines() == ["plain preinst", "plain postinst"]


def test_pre_install_script_after_an_image_member_is_refused_before_writing(tmp_path, device, pki, capsys) -> None:
    log = tmp_path / "m.log"
    arts = [image("rootfs.img", IMG, "/dev/mmcblk0p3"), script("pre.sh", marker(log, "pre"), "preinstall")]
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys)
    assert rc == REFUSED
    assert "preinstall script 'pre.sh' must come before 'rootfs.img' in the archive" in one_error(err)
    assert device.untouched() and not log.exists()


def test_lua_scripts_are_refused_with_a_clear_message(tmp_path, device, pki, capsys) -> None:
    for name, kind in (("x.lua", "lua"), ("default.lua", None)):
        b = bundle(tmp_path / f"{name}.swu", pki, [script(name, "print('hi')", kind),
                                                   image("rootfs.img", IMG, "/dev/mmcblk0p3")])
        rc, _, err = install(device, pki, b, capsys)
        assert rc == REFUSED
        line = one_error(err)
        assert f"script '{name}'" in line and "Lua scripts are not supported: otad runs no Lua" in line
        assert device.untouched()


def test_an_oversized_script_is_refused(tmp_path, device, pki, capsys) -> None:
    b = bundle(tmp_path / "b.swu", pki, [script("big.sh", b"#" * ((1 << 20) + 1), "postinstall")])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == REFUSED and "'big.sh'" in one_error(err) and "exceeds" in one_error(err)
    assert not list((device.state / "tmp").iterdir())


def test_a_script_whose_hash_does_not_match_never_runs(tmp_path, device, pki, capsys) -> None:
    log = tmp_path / "m.log"
    art = script("pre.sh", marker(log, "pre"), "preinstall")
    art.attrs["sha256"] = "ab" * 32
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art, image("rootfs.img", IMG,
                                                                                   "/dev/mmcblk0p3")]), capsys)
    assert rc == VERIFICATION and "sha256 mismatch" in one_error(err) and "'pre.sh'" in one_error(err)
    assert not log.exists() and device.untouched()


def test_dry_run_checks_scripts_but_runs_none(tmp_path, device, pki, capsys) -> None:
    log = tmp_path / "m.log"
    arts = [script("pre.sh", marker(log, "pre"), "preinstall"), image("rootfs.img", IMG, "/dev/mmcblk0p3")]
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, arts), capsys, "-n")
    assert rc == 0, err
    assert not log.exists() and device.untouched()


def test_info_lists_scripts_with_their_type(tmp_path, pki, capsys) -> None:
    arts = [script("pre.sh", "true", "preinstall"), script("x.lua", "print()", "lua")]
    rc, out, _ = run_cli(["info", bundle(tmp_path / "b.swu", pki, arts), "-k", pki.ca_pem], capsys)
    assert "script pre.sh [preinstall] -> -" in out and "script x.lua [lua] -> -" in out


# --- failures on an A/B device: the env is never touched -----------------------------------

def ab_script_bundle(tmp_path: Path, pki: Pki, scripts: List[Art], order: List[str]) -> Path:
    arts = scripts + [image("rootfs.img", IMG, "/dev/mmcblk0p3")]
    return bundle(tmp_path / "ab.swu", pki, arts, order=order, selection=("stable", "copy2"))


@pytest.mark.parametrize("phase", ["preinstall", "postinstall"])
def test_a_failing_script_fails_the_install_and_leaves_the_env(tmp_path, pki, capsys, phase, slot_env) -> None:
    ab = AbDevice(tmp_path / "ab", pki)
    slot_env(ab.root / "dev" / "mmcblk0p3")
    env_before = (ab.root / "boot" / "uboot.env").read_bytes()
    log = tmp_path / "m.log"
    b = ab_script_bundle(tmp_path, pki, [script("s.sh", marker(log, phase, "echo broken >&2; exit 3\n"), phase)],
                         ["s.sh", "rootfs.img"])
    rc, _, err = ab.otad(capsys, "install", b)
    assert rc == WRITE_FAILED
    line = one_error(err)
    assert "script 's.sh'" in line and "exited with 3" in line and "broken" in line
    assert (ab.root / "boot" / "uboot.env").read_bytes() == env_before
    assert ab.env()["rootpart"] == "2" and ab.env()["upgrade_available"] == "0"
    if phase == "postinstall":  # the image was written; its install record says it is no good
        rc, out, _ = ab.otad(capsys, "status")
        assert "slot b /dev/mmcblk0p3: bad" in out
    else:
        assert ab.slot("mmcblk0p3") == b"\xaa" * len(ab.slot("mmcblk0p3"))


def test_a_hanging_script_is_killed_with_its_children_and_fails_the_install(tmp_path, pki, capsys) -> None:
    ab = AbDevice(tmp_path / "ab", pki)
    ab.config.write_text(ab.config.read_text().replace("install = {", "install = { script_timeout_s = 1.5;"))
    env_before = (ab.root / "boot" / "uboot.env").read_bytes()
    pidfile = tmp_path / "child.pid"
    body = f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n"
    b = ab_script_bundle(tmp_path, pki, [script("hang.sh", body, "postinstall")], ["rootfs.img", "hang.sh"])
    started = time.monotonic()
    rc, _, err = ab.otad(capsys, "install", b)
    assert rc == WRITE_FAILED and time.monotonic() - started < 30
    line = one_error(err)
    assert "script 'hang.sh'" in line and "did not finish within 1.5 s" in line
    assert (ab.root / "boot" / "uboot.env").read_bytes() == env_before
    child = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # killed with its group; give the kernel a moment to reap it
            os.kill(child, 0)
            if open(f"/proc/{child}/stat").read().split()[2] == "Z":
                raise ProcessLookupError
            time.sleep(0.1)

