"""`otad install` on an A/B device: inactive slot, one env write arming the trial, refusals.

The device is files: two slot files under a fake /dev, a uboot.env with fw_env.config, a fake
/proc/cmdline. U-Boot's side of later boots is the emulator in otad.sim.uboot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import pytest

from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.ubootenv import UBootEnv
from otad.sim.uboot import UBootEmulator
from otad.errors import REFUSED, VERIFICATION
from tests.bundles import ImageSpec, sha256, signed_members, write_bundle
from tests.conftest import AB_DEFAULT_ENV, AB_ENV_SIZE, SLOT_BYTES, ab_config_text, run_cli

ENV_SIZE, DEFAULT_ENV = AB_ENV_SIZE, AB_DEFAULT_ENV
GOOD = b"OTAD-SIM-IMAGE ok\n" + os.urandom(5000)


class AbDevice:
    def __init__(self, root: Path, pki) -> None:
        self.root = root
        (root / "dev").mkdir(parents=True)
        for part in ("mmcblk0p2", "mmcblk0p3"):
            (root / "dev" / part).write_bytes(b"\xaa" * SLOT_BYTES)
        (root / "boot").mkdir()
        (root / "boot" / "uboot.env").write_bytes(build_image(DEFAULT_ENV, ENV_SIZE))
        (root / "fw_env.config").write_text(f"{root / 'boot' / 'uboot.env'} 0x0 0x{ENV_SIZE:x}\n")
        self.boot_slot("2")
        self.config = root / "otad.conf"
        self.config.write_text(ab_config_text(root, pki))

    def env(self) -> Dict[str, str]:
        return dict(self.uboot_env().read().variables)

    def uboot_env(self) -> UBootEnv:
        return UBootEnv(load_fw_env_config(str(self.root / "fw_env.config")), lock_path=str(self.root / "fw.lock"))

    def boot_slot(self, value: str) -> None:
        (self.root / "cmdline").write_text(f"console=ttyS0 root=/dev/mmcblk0p{value} otad.rootpart={value} rootwait\n")

    def power_on(self) -> str:
        """U-Boot decides; the kernel command line follows. Returns the booted rootpart."""
        decision = UBootEmulator(self.uboot_env(), default_env=DEFAULT_ENV).boot()
        self.boot_slot(decision.slot_value)
        return decision.slot_value

    def slot(self, part: str) -> bytes:
        return (self.root / "dev" / part).read_bytes()

    def otad(self, capsys, *args):
        return run_cli(["--config", self.config, *args], capsys)


@pytest.fixture
def ab(tmp_path, pki) -> AbDevice:
    return AbDevice(tmp_path / "ab", pki)


def ab_bundle(tmp_path: Path, pki, image: bytes = GOOD, *, copy1_device: str = "/dev/mmcblk0p2",
              copy2_device: str = "/dev/mmcblk0p3", bootenv: str = "", version: str = "2.0.0",
              copy1_env: Optional[str] = None, copy2_env: Optional[str] = None) -> Path:
    """`bootenv` goes into both sections unless `copy1_env` / `copy2_env` give a section its own."""
    digest = sha256(image)
    desc = (f'software = {{ version = "{version}"; hardware-compatibility = ["1.0"];\n'
            f'  stable = {{\n'
            f'    copy1 = {{ images = ( {{ filename = "rootfs.img"; device = "{copy1_device}"; sha256 = "{digest}"; }} );'
            f' {bootenv if copy1_env is None else copy1_env} }};\n'
            f'    copy2 = {{ images = ( {{ filename = "rootfs.img"; device = "{copy2_device}"; sha256 = "{digest}"; }} );'
            f' {bootenv if copy2_env is None else copy2_env} }};\n'
            f'  }};\n}};\n').encode()
    work = tmp_path / f"w{version}"
    work.mkdir()
    return write_bundle(tmp_path / f"ab-{version}.swu",
                        signed_members(desc, [ImageSpec("rootfs.img", image, "")], pki, work))


def test_install_writes_the_inactive_slot_and_arms_the_trial_in_one_env_write(tmp_path, pki, ab, capsys) -> None:
    before_flags = ab.uboot_env().read().flags
    rc, out, err = ab.otad(capsys, "install", ab_bundle(tmp_path, pki, bootenv='bootenv = ( { name = "note"; '
                                                                                'value = "v2"; } );'))
    assert rc == 0, err
    assert "into slot b" in out and "armed for a trial boot" in out
    assert ab.slot("mmcblk0p3")[:len(GOOD)] == GOOD and ab.slot("mmcblk0p2") == b"\xaa" * SLOT_BYTES
    env = ab.env()
    assert (env["rootpart"], env["upgrade_available"], env["bootcount"], env["otad_prev"], env["note"]) == \
        ("3", "1", "0", "2", "v2")
    assert before_flags == ab.uboot_env().read().flags  # single copy: no flags, one file replaced


def test_good_update_boots_the_new_slot_and_confirm_commits_it(tmp_path, pki, ab, capsys) -> None:
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    assert ab.power_on() == "3"
    assert ab.env()["bootcount"] == "1"
    rc, out, _ = ab.otad(capsys, "confirm")
    assert rc == 0 and out.startswith("confirmed:")
    env = ab.env()
    assert (env["rootpart"], env["upgrade_available"], env["bootcount"]) == ("3", "0", "0") and "otad_prev" not in env
    for _ in range(10):  # the seed system's RAM-bootcount bug: later boots must never flip back
        assert ab.power_on() == "3"
    rc, out, _ = ab.otad(capsys, "status")
    assert "booted:  b" in out and "last:    confirmed slot b version 2.0.0" in out


def test_failed_trial_falls_back_and_confirm_records_it(tmp_path, pki, ab, capsys) -> None:
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    booted = [ab.power_on() for _ in range(4)]  # the new kernel hangs: the watchdog resets it thrice
    assert booted == ["3", "3", "3", "2"]
    rc, out, _ = ab.otad(capsys, "confirm")
    assert rc == 0 and out.startswith("fell_back:") and "slot a" in out
    rc, out, _ = ab.otad(capsys, "status", "--json")
    import json

    report = json.loads(out)
    assert report["booted"] == "a" and report["last_result"]["outcome"] == "fell_back"
    assert report["pending_trial"] is None
    assert [ab.power_on() for _ in range(5)] == ["2"] * 5


def test_health_check_failure_switches_back_and_asks_for_a_reboot(tmp_path, pki, ab, capsys) -> None:
    ab.config.write_text(ab.config.read_text() + 'health = { timeout_s = 5; checks = ( "exit 3" ); };\n')
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    assert ab.power_on() == "3"
    rc, out, _ = ab.otad(capsys, "confirm", "--no-reboot")
    assert rc == 0 and out.startswith("health_failed:") and "reboot needed" in out
    assert ab.env()["rootpart"] == "2" and ab.power_on() == "2"


def test_no_switch_writes_the_slot_but_leaves_the_env_alone(tmp_path, pki, ab, capsys) -> None:
    before = (ab.root / "boot" / "uboot.env").read_bytes()
    rc, out, _ = ab.otad(capsys, "install", "--no-switch", ab_bundle(tmp_path, pki))
    assert rc == 0 and "not armed" in out
    assert ab.slot("mmcblk0p3")[:len(GOOD)] == GOOD
    assert (ab.root / "boot" / "uboot.env").read_bytes() == before


def test_a_section_targeting_the_running_slot_is_refused_before_writing(tmp_path, pki, ab, capsys) -> None:
    before = (ab.root / "boot" / "uboot.env").read_bytes()
    bundle = ab_bundle(tmp_path, pki, copy2_device="/dev/mmcblk0p2")
    rc, _, err = ab.otad(capsys, "install", bundle)
    assert rc == REFUSED and "in use" in err
    assert ab.slot("mmcblk0p2") == b"\xaa" * SLOT_BYTES and (ab.root / "boot" / "uboot.env").read_bytes() == before


def test_a_failed_install_never_touches_the_env(tmp_path, pki, ab, capsys) -> None:
    before = (ab.root / "boot" / "uboot.env").read_bytes()
    bundle = ab_bundle(tmp_path, pki)
    blob = bytearray(bundle.read_bytes())
    blob[blob.index(GOOD[:18]) + 100] ^= 1  # image bytes no longer match the signed sha256
    bundle.write_bytes(bytes(blob))
    rc, _, err = ab.otad(capsys, "install", bundle)
    assert rc == VERIFICATION and "sha256 mismatch" in err
    assert (ab.root / "boot" / "uboot.env").read_bytes() == before
    rc, out, _ = ab.otad(capsys, "status")
    assert "slot b /dev/mmcblk0p3: bad" in out


def test_a_bundle_bootenv_may_not_touch_the_trial_variables(tmp_path, pki, ab, capsys) -> None:
    bundle = ab_bundle(tmp_path, pki, bootenv='bootenv = ( { name = "bootcount"; value = "9"; } );')
    rc, _, err = ab.otad(capsys, "install", bundle)
    assert rc == REFUSED and "bootcount" in err
    assert ab.env()["rootpart"] == "2" and ab.env()["upgrade_available"] == "0"
    assert ab.slot("mmcblk0p3") == b"\xaa" * SLOT_BYTES  # refused while planning, not after the slot was written


def swupdate_env(rootpart: str, upgrade_available: str = "1") -> str:
    """The bootenv a usual SWUpdate A/B bundle carries in each copy: it switches slots itself."""
    return (f'bootenv = ( {{ name = "rootpart"; value = "{rootpart}"; }}, '
            f'{{ name = "upgrade_available"; value = "{upgrade_available}"; }}, {{ name = "note"; value = "v2"; }} );')


def test_a_swupdate_ab_bundle_that_switches_slots_itself_is_folded_into_the_trial(tmp_path, pki, ab,
                                                                                   capsys) -> None:
    bundle = ab_bundle(tmp_path, pki, copy1_env=swupdate_env("2"), copy2_env=swupdate_env("3"))
    rc, out, err = ab.otad(capsys, "install", bundle)
    assert rc == 0, err
    assert "into slot b" in out and "armed for a trial boot" in out
    env = ab.env()
    assert (env["rootpart"], env["upgrade_available"], env["bootcount"], env["otad_prev"], env["note"]) == \
        ("3", "1", "0", "2", "v2")
    assert ab.power_on() == "3"  # U-Boot boots the trial, counted
    assert ab.otad(capsys, "confirm")[1].startswith("confirmed:")


@pytest.mark.parametrize("copy2_env, fragment", [
    (swupdate_env("2"), "rootpart = '2': the bundle boots slot a, but otad arms a trial of slot b (rootpart=3)"),
    (swupdate_env("9"), "rootpart = '9': the bundle names no configured slot"),
    (swupdate_env("3", "0"), "upgrade_available = '0': 0 turns the bootcount off"),
    ('bootenv = ( { name = "otad_prev"; value = "3"; } );', "otad_prev = '3': refusing to set it from a bundle"),
    ('bootenv = ( { name = "bootlimit"; value = "0"; } );', "bootlimit = '0': expected 1..99"),
])
def test_a_bundle_bootenv_that_disagrees_with_the_trial_is_refused_before_the_first_byte(
        tmp_path, pki, ab, capsys, copy2_env, fragment) -> None:
    before = (ab.root / "boot" / "uboot.env").read_bytes()
    bundle = ab_bundle(tmp_path, pki, copy1_env="", copy2_env=copy2_env)
    rc, _, err = ab.otad(capsys, "install", bundle)
    assert rc == REFUSED and f"bootenv: {fragment}" in err, err
    assert ab.slot("mmcblk0p3") == b"\xaa" * SLOT_BYTES and ab.slot("mmcblk0p2") == b"\xaa" * SLOT_BYTES
    assert (ab.root / "boot" / "uboot.env").read_bytes() == before
    assert not (ab.root / "state" / "targets.json").exists()


def test_the_daemons_deferred_arm_folds_the_bundles_own_switch_too(tmp_path, pki, ab) -> None:
    """The daemon installs with no_switch and arms later with the bootenv it kept (update.arm)."""
    from otad import config, update
    from otad.lock import WriterLock

    cfg = config.load(str(ab.config))
    bundle = ab_bundle(tmp_path, pki, copy1_env=swupdate_env("2"), copy2_env=swupdate_env("3"))
    lock = WriterLock(cfg.system.state_dir)
    with open(bundle, "rb") as f, lock.acquire("installing into slot b", slot="b") as writer:
        done = update.install(cfg, f, name="b.swu", no_switch=True, writer=writer)
    assert ab.env()["rootpart"] == "2"
    with lock.acquire("arming slot b", slot="b") as writer:
        update.arm(cfg, "b", "2.0.0", done.install.manifest.bootenv_changes(), writer=writer)
    env = ab.env()
    assert (env["rootpart"], env["upgrade_available"], env["bootcount"], env["note"]) == ("3", "1", "0", "v2")


@pytest.mark.parametrize("flag", ["-e", "--select"])
def test_select_naming_another_slots_section_is_refused_and_the_targets_is_honoured(tmp_path, pki, ab, capsys,
                                                                                      flag) -> None:
    bundle = ab_bundle(tmp_path, pki)
    rc, _, err = ab.otad(capsys, "install", bundle, flag, "stable,copy1")
    assert rc == 2
    assert "-e stable,copy1 (install.selection) is slot a's selection, but otad installs into the inactive slot b, " \
           "whose selection is stable,copy2" in err
    assert ab.slot("mmcblk0p3") == b"\xaa" * SLOT_BYTES and ab.env()["rootpart"] == "2"
    rc, out, err = ab.otad(capsys, "install", bundle, flag, "stable,copy2")
    assert rc == 0 and "into slot b" in out, err


def test_a_section_that_writes_nothing_into_the_target_slot_is_refused_before_writing(tmp_path, pki, ab,
                                                                                        capsys) -> None:
    (ab.root / "dev" / "mmcblk0p1").write_bytes(b"\xaa" * SLOT_BYTES)  # the boot partition
    rc, _, err = ab.otad(capsys, "install", ab_bundle(tmp_path, pki, copy2_device="/dev/mmcblk0p1"))
    assert rc == REFUSED and "installs nothing into slot b" in err
    assert (ab.root / "dev" / "mmcblk0p1").read_bytes() == b"\xaa" * SLOT_BYTES  # was written before the refusal


def test_unknown_booted_slot_is_a_clear_error(tmp_path, pki, ab, capsys) -> None:
    (ab.root / "cmdline").write_text("console=ttyS0 root=/dev/sda1\n")
    rc, _, err = ab.otad(capsys, "install", ab_bundle(tmp_path, pki))
    assert rc == REFUSED and "cannot tell which slot is booted" in err and "/dev/sda1" in err
    assert ab.slot("mmcblk0p3") == b"\xaa" * SLOT_BYTES


def test_mark_bad_on_the_new_slot_switches_back_now(tmp_path, pki, ab, capsys) -> None:
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    assert ab.power_on() == "3"
    rc, out, _ = ab.otad(capsys, "mark-bad", "--no-reboot")
    assert rc == 0 and "reboot needed" in out
    assert ab.env()["rootpart"] == "2" and ab.env()["upgrade_available"] == "0"


@pytest.mark.parametrize("command", [["install", "BUNDLE"], ["confirm"], ["mark-good"], ["mark-bad", "b"],
                                     ["env", "set", "note=x"]])
def test_every_writing_command_is_busy_at_once_while_another_otad_holds_the_lock(tmp_path, pki, ab, capsys,
                                                                                 command) -> None:
    from otad.lock import WriterLock
    from tests.conftest import one_error

    bundle = ab_bundle(tmp_path, pki)
    env_before = (ab.root / "boot" / "uboot.env").read_bytes()
    with WriterLock(str(ab.root / "state")).acquire("installing into slot b", slot="b", command="otad run"):
        rc, _, err = ab.otad(capsys, *[str(bundle) if a == "BUNDLE" else a for a in command])
        if command[0] == "install":
            rc_dry, out, _ = ab.otad(capsys, "install", "-n", bundle)  # a dry run writes nothing: no lock
            assert rc_dry == 0 and "dry run, nothing written" in out
    assert rc == 75
    line = one_error(err)
    assert line.startswith(f"otad: error: busy: pid {os.getpid()} (otad run) is installing into slot b since ")
    assert err.strip() == line  # nothing else was done
    assert ab.slot("mmcblk0p3") == b"\xaa" * SLOT_BYTES
    assert (ab.root / "boot" / "uboot.env").read_bytes() == env_before



def test_a_files_only_bundle_into_the_inactive_slot_is_armed_by_the_daemons_deferred_arm(tmp_path, pki, ab,
                                                                                          capsys) -> None:
    """A bundle of `files` entries into slot b's filesystem leaves an install record for the
    slot's device, which the daemon's deferred arm (update.arm) requires. Before, only images
    left one: the emulated Pi's `otad run` installed such a release and then refused it ("slot
    b no longer holds the verified install of version 1.2.0") while `otad install` armed it."""
    from otad import config, update
    from otad.lock import WriterLock
    from tests.unit.install.entries import bundle, debugfs, file, mkfs_ext4

    (ab.root / "dev" / "mmcblk0p3").write_bytes(mkfs_ext4(tmp_path / "b.ext4", 4, {"etc/sw-versions": b"rootfs 1\n"}))
    arts = [file("sw-versions", b"rootfs 1.2.0\n", "/etc/sw-versions", device="/dev/mmcblk0p3", filesystem="ext4")]
    swu = bundle(tmp_path / "files.swu", pki, arts, selection=("stable", "copy2"))
    cfg = config.load(str(ab.config))
    cfg = cfg.replace("install", files_via="debugfs")
    lock = WriterLock(cfg.system.state_dir)
    with open(swu, "rb") as f, lock.acquire("installing into slot b", slot="b") as writer:
        update.install(cfg, f, name="files.swu", no_switch=True, writer=writer)
    assert debugfs(ab.root / "dev" / "mmcblk0p3", "cat /etc/sw-versions") == "rootfs 1.2.0\n"
    with lock.acquire("arming slot b", slot="b") as writer:
        update.arm(cfg, "b", "1.0.0", {}, writer=writer)
    env = ab.env()
    assert (env["rootpart"], env["upgrade_available"], env["bootcount"]) == ("3", "1", "0")
    rc, out, _ = ab.otad(capsys, "status")
    assert rc == 0 and "slot b /dev/mmcblk0p3: trial (trial_armed, version 1.0.0) version 1.0.0 [next]" in out, out
