"""The simulated device: create, power-on through the U-Boot emulator, trial, fallback, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from otad import config
from otad.boot.envimage import parse_image
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout
from otad.boot.ubootenv import UBootEnv
from otad.errors import ConfigError, OtadError, SlotError
from otad.sim.__main__ import parse_size
from otad.sim.device import (
    DEFAULT_ENV,
    ENV_SIZE,
    GOOD_MARKER,
    InitResult,
    SimDevice,
    contains_good_marker,
    describe_image,
    make_image,
)

ARM = {"rootpart": "3", "upgrade_available": "1", "bootcount": "0"}
STEADY_A = {"rootpart": "2", "upgrade_available": "0", "bootcount": "0"}
FileState = List[Tuple[bytes, int, int]]


class FakeInit:
    """Stands in for S98otad's `otad confirm`: records the calls, optionally acts first."""

    def __init__(self, action: Callable[[SimDevice, int], None] = lambda device, n: None) -> None:
        self.calls: List[str] = []
        self.action = action

    def __call__(self, device: SimDevice) -> InitResult:
        self.calls.append(device.booted_slot() or "")
        self.action(device, len(self.calls))
        return InitResult(0, f"fake init {len(self.calls)}\n", "")


def env_files(device: SimDevice) -> FileState:
    """Bytes, inode and mtime of each env copy: any write changes at least one of them."""
    out = []
    for path in (device.layout.env_path, device.layout.env_redund_path):
        st = path.stat() if path.exists() else None
        out.append((path.read_bytes() if st else b"", st.st_ino if st else 0, st.st_mtime_ns if st else 0))
    return out


def arm_trial(device: SimDevice) -> None:
    """§6 row 2, written directly with UBootEnv.update as otad would."""
    device.uboot_env().update(ARM)


def ab_vars(device: SimDevice) -> Dict[str, Optional[str]]:
    env = device.env()
    return {name: env.get(name) for name in ARM}


@pytest.fixture
def device(tmp_path: Path) -> SimDevice:
    return SimDevice.create(tmp_path / "sim")


# --------------------------------------------------------------------------- create / open


def test_create_lays_out_a_device_that_otad_config_and_env_code_read(tmp_path: Path) -> None:
    device = SimDevice.create(tmp_path / "sim", health_checks=('test -e "/etc"',), extra_config="# extra\n")
    layout = device.layout
    assert device.env() == dict(DEFAULT_ENV)
    assert DEFAULT_ENV["altbootcmd"].startswith('if test "${rootpart}" = "2"; then setenv rootpart 3;')
    assert "otad.rootpart=${rootpart}" in DEFAULT_ENV["bootcmd"]
    assert layout.slot_path("a").name == "mmcblk0p2" and layout.slot_path("b").name == "mmcblk0p3"
    assert layout.slot_path("a").stat().st_size == 16 << 20
    assert contains_good_marker(device.read_slot("a"))
    assert not device.read_slot("b").strip(b"\0")
    assert layout.hwrevision.read_text() == "rpi0w 1.0\n"
    assert not layout.ca_file.exists() and device.booted_slot() is None
    assert layout.config.read_text().endswith("# extra\n")
    cfg = config.load(str(layout.config))
    assert cfg.bootloader.fw_env_config == str(layout.fw_env_config)
    assert cfg.bootloader.cmdline == str(layout.cmdline) and cfg.bootloader.mountinfo is None
    assert cfg.bootloader.lock_file == str(layout.lock_file)
    assert cfg.system.device_dir == str(layout.dev_dir) and cfg.system.state_dir == str(layout.state_dir)
    assert cfg.install.trust_file == str(layout.ca_file)
    assert cfg.health.checks == ('test -e "/etc"',) and cfg.watchdog.enabled is False
    assert [(s.name, s.device, s.boot_value, s.selection) for s in cfg.slots] == [
        ("a", "/dev/mmcblk0p2", "2", "stable,copy1"), ("b", "/dev/mmcblk0p3", "3", "stable,copy2")]
    # The sim must never let otad reboot the machine it runs on.
    assert str(layout.reboot_flag) in cfg.system.reboot_command
    assert "reboot" != cfg.system.reboot_command.split()[0]


def test_create_copies_image_a_and_trust_file(tmp_path: Path) -> None:
    image, ca = tmp_path / "a.img", tmp_path / "ca.pem"
    image.write_bytes(make_image("7.1"))
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    device = SimDevice.create(tmp_path / "sim", image_a=image, trust_file=ca, slot_size=2 << 20,
                              hardware="rpi0w:2.0")
    assert describe_image(device.read_slot("a")) == "good image 7.1"
    assert device.layout.slot_path("a").stat().st_size == 2 << 20
    assert device.layout.ca_file.read_bytes() == ca.read_bytes()
    assert device.layout.hwrevision.read_text() == "rpi0w 2.0\n"


def test_create_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty") as info:
        SimDevice.create(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_create_refuses_an_image_larger_than_the_slot(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.write_bytes(make_image("9", size=2 << 20))
    with pytest.raises(SlotError, match="do not fit slot a"):
        SimDevice.create(tmp_path / "sim", image_a=image, slot_size=1 << 20)


def test_open_rejects_a_directory_that_is_not_a_sim(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a simulated device: etc/otad/otad.conf is missing"):
        SimDevice.open(tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        SimDevice.open(tmp_path / "nope")


def test_open_finds_what_create_made(device: SimDevice) -> None:
    again = SimDevice.open(device.layout.root)
    assert again.layout == device.layout and again.env() == device.env()


# --------------------------------------------------------------------------- images


def test_only_a_marker_at_offset_zero_boots() -> None:
    good, bad = make_image("2.0"), make_image("2.0", good=False)
    assert len(good) == 1 << 20 and good.startswith(GOOD_MARKER + b"version=2.0\n")
    assert contains_good_marker(good) and not contains_good_marker(bad)
    assert not contains_good_marker(b"\0" * 512 + GOOD_MARKER)
    assert describe_image(bad) == "bad image 2.0" and describe_image(bytes(64)) == "empty (zeros)"
    with pytest.raises(SlotError, match="version"):
        make_image("1.0\nx")


def test_write_slot_replaces_the_slot_and_refuses_what_does_not_fit(device: SimDevice) -> None:
    device.write_slot("b", make_image("2.0"))
    assert describe_image(device.read_slot("b")) == "good image 2.0"
    device.write_slot("b", b"junk")
    assert device.read_slot("b", 8) == b"junk\0\0\0\0"
    assert device.layout.slot_path("b").stat().st_size == 16 << 20
    with pytest.raises(SlotError, match="do not fit slot b"):
        device.write_slot("b", bytes((16 << 20) + 1))
    with pytest.raises(SlotError, match="no slot named 'c'"):
        device.write_slot("c", b"x")


# --------------------------------------------------------------------------- boot


def test_steady_boot_runs_slot_a_and_writes_nothing(device: SimDevice) -> None:
    init = FakeInit()
    before = env_files(device)
    for _ in range(3):
        report = device.boot(init=init)
        assert (report.slot_value, report.slot_name, report.watchdog_resets) == ("2", "a", 0)
        assert len(report.boots) == 1 and not report.stuck and not report.fell_back
        assert report.init == InitResult(0, f"fake init {len(init.calls)}\n", "")
    assert env_files(device) == before
    assert init.calls == ["a", "a", "a"]
    assert device.layout.cmdline.read_text() == "console=ttyS0 root=/dev/mmcblk0p2 otad.rootpart=2 rootwait\n"
    assert len(device.boot_log()) == 3


def test_no_init_leaves_init_out(device: SimDevice) -> None:
    init = FakeInit()
    report = device.boot(init=init, run_init=False)
    assert report.init is None and report.inits == (None,) and init.calls == []
    assert device.booted_slot() == "a"


def test_armed_trial_with_a_good_image_boots_b_and_saves_bootcount_1(device: SimDevice) -> None:
    device.write_slot("b", make_image("2.0"))
    arm_trial(device)
    init = FakeInit()
    report = device.boot(init=init)
    assert (report.slot_name, report.watchdog_resets, len(report.boots)) == ("b", 0, 1)
    assert report.boots[0].bootcount == 1 and report.boots[0].env_written
    assert init.calls == ["b"] and device.booted_slot() == "b"
    assert ab_vars(device) == {"rootpart": "3", "upgrade_available": "1", "bootcount": "1"}
    assert report.env == device.env()


def test_armed_trial_with_a_bad_image_falls_back_after_three_watchdog_resets(device: SimDevice) -> None:
    device.write_slot("b", make_image("2.0", good=False))
    arm_trial(device)
    init = FakeInit()
    report = device.boot(init=init)
    assert [(d.slot_value, d.bootcount, d.used_altbootcmd) for d in report.boots] == [
        ("3", 1, False), ("3", 2, False), ("3", 3, False), ("2", 4, True)]
    assert report.watchdog_resets == 3 and report.fell_back and not report.stuck
    assert (report.slot_value, report.slot_name) == ("2", "a")
    assert init.calls == ["a"]  # init ran once: on the slot that came up
    assert report.inits[:3] == (None, None, None)
    assert ab_vars(device) == STEADY_A and report.env == device.env()
    assert "hang -> watchdog reset" in report.kernel[0] and report.kernel[3] == "slot a up"
    assert len(device.boot_log()) == 4

    # §10: nothing resets a RAM count here; the next boots stay on a and never write.
    after = env_files(device)
    for _ in range(10):
        again = device.boot(init=init)
        assert (again.slot_name, len(again.boots), again.watchdog_resets) == ("a", 1, 0)
    assert env_files(device) == after


def test_redundant_env_trial_writes_the_other_copy_and_falls_back(tmp_path: Path) -> None:
    device = SimDevice.create(tmp_path / "sim", redundant_env=True)
    layout = EnvLayout(tuple(EnvCopyLocation(str(p), 0, ENV_SIZE)
                             for p in (device.layout.env_path, device.layout.env_redund_path)))
    assert device.uboot_env().layout == layout
    before = env_files(device)
    assert device.boot(init=FakeInit()).slot_name == "a"
    assert env_files(device) == before

    device.write_slot("b", make_image("2.0", good=False))
    arm_trial(device)
    report = device.boot(init=FakeInit())
    assert report.watchdog_resets == 3 and report.fell_back and report.slot_name == "a"
    assert ab_vars(device) == STEADY_A
    copies = [parse_image(blob, ENV_SIZE, redundant=True) for blob, _, _ in env_files(device)]
    assert all(c is not None for c in copies)  # a write never touches the active copy
    snapshot = UBootEnv(layout, lock_path=str(device.layout.lock_file)).read()
    # Flags: 1 at create, then one write each: the arm, 3 counts, bootcount_inc + altbootcmd.
    assert snapshot.valid_copies == (0, 1) and snapshot.flags == 1 + 1 + 3 + 2


def test_a_reboot_requested_by_init_starts_another_pass(device: SimDevice) -> None:
    device.write_slot("b", make_image("2.0"))
    arm_trial(device)
    reboot_command = config.load(str(device.layout.config)).system.reboot_command

    def unhealthy_then_reboot(dev: SimDevice, n: int) -> None:
        # What confirm does when the trial slot fails its checks (§6 row 8): abort, reboot.
        if n == 1:
            dev.uboot_env().update(STEADY_A)
            subprocess.run(reboot_command, shell=True, check=True)

    init = FakeInit(unhealthy_then_reboot)
    report = device.boot(init=init)
    assert [d.slot_value for d in report.boots] == ["3", "2"]
    assert init.calls == ["b", "a"] and report.reboots == 1 and report.watchdog_resets == 0
    assert report.slot_name == "a" and not report.stuck and len(report.inits) == 2
    assert report.kernel[0].endswith("init -> reboot")
    assert not device.layout.reboot_flag.exists()


def test_no_bootable_slot_leaves_the_board_stuck(device: SimDevice) -> None:
    device.write_slot("a", make_image("1.0", good=False))
    init = FakeInit()
    report = device.boot(init=init, max_boots=5)
    assert report.stuck and report.watchdog_resets == 5 and len(report.boots) == 5
    assert report.init is None and init.calls == [] and device.booted_slot() is None


def test_a_slot_value_that_is_no_slot_stops_at_the_uboot_prompt(device: SimDevice) -> None:
    device.uboot_env().update({"rootpart": "7"})
    report = device.boot(init=FakeInit())
    assert report.stuck and len(report.boots) == 1 and report.watchdog_resets == 0
    assert report.slot_name == "" and "U-Boot waits at its prompt" in report.kernel[0]


def test_a_corrupt_env_boots_the_default_env_and_stays_unsaved(device: SimDevice) -> None:
    blob = bytearray(device.layout.env_path.read_bytes())
    blob[100] ^= 0xFF
    device.layout.env_path.write_bytes(bytes(blob))
    report = device.boot(init=FakeInit())
    assert report.boots[0].default_env and report.slot_name == "a"
    assert "*** Warning - bad CRC, using default environment" in report.boots[0].console
    assert report.env == {}


def test_max_boots_must_be_positive(device: SimDevice) -> None:
    with pytest.raises(ConfigError, match="max_boots"):
        device.boot(max_boots=0)


# --------------------------------------------------------------------------- otad


def test_otad_runs_with_this_devices_config(device: SimDevice) -> None:
    done = device.otad("env", "print", "rootpart")
    assert (done.returncode, done.stdout) == (0, "rootpart=2\n")
    with pytest.raises(OtadError, match="exited"):
        device.otad("env", "print", "no_such_variable_xyz", "--bogus", check=True)


def test_default_init_runs_otad_confirm(device: SimDevice) -> None:
    before = env_files(device)
    report = device.boot()
    assert report.init is not None
    assert report.init.rc == 0, report.init.stderr
    assert report.init.stdout.strip()
    assert report.slot_name == "a" and env_files(device) == before


# --------------------------------------------------------------------------- CLI


def sim_cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "otad.sim", *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_create_boot_status_env(tmp_path: Path) -> None:
    root = str(tmp_path / "sim")
    done = sim_cli("create", root, "--slot-size", "2M", "--health", "true")
    assert done.returncode == 0, done.stderr
    done = sim_cli("boot", root, "--no-init")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["U-Boot: rootpart=2 (no trial, bootcount not saved)",
                                            "kernel: slot a up"]
    assert "init:" not in done.stdout
    done = sim_cli("status", root)
    assert done.returncode == 0, done.stderr
    assert "booted:  slot a" in done.stdout and "rootpart=2 upgrade_available=0 bootcount=0" in done.stdout
    assert "boot 1: U-Boot rootpart=2" in done.stdout
    done = sim_cli("env", root)
    assert done.returncode == 0 and "bootlimit=3\n" in done.stdout


def test_cli_boot_prints_the_fallback(tmp_path: Path) -> None:
    device = SimDevice.create(tmp_path / "sim")
    device.write_slot("b", make_image("2.0", good=False))
    arm_trial(device)
    done = sim_cli("boot", str(device.layout.root), "--no-init")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("kernel: slot b image not healthy -> hang -> watchdog reset") == 3
    assert "U-Boot: rootpart=3 bootcount=2 (trial)" in lines
    assert "U-Boot: Warning: Bootlimit (3) exceeded. Using altbootcmd." in lines
    assert lines[-1] == "up on slot a after 4 U-Boot passes (3 watchdog resets, fell back)"


@pytest.mark.parametrize("command", ["boot", "status", "env"])
def test_cli_on_a_directory_that_is_not_a_sim_prints_one_error_line(tmp_path: Path, command: str) -> None:
    done = sim_cli(command, str(tmp_path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"otad-sim: error: {tmp_path}: not a simulated device: etc/otad/otad.conf is missing; "
        "create one with 'otad-sim create DIR'"]


def test_cli_create_over_a_non_empty_directory_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    done = sim_cli("create", str(tmp_path))
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("otad-sim: error: ") and "not empty" in done.stderr


def test_cli_stuck_board_exits_1(tmp_path: Path) -> None:
    device = SimDevice.create(tmp_path / "sim")
    device.write_slot("a", b"")
    done = sim_cli("boot", str(device.layout.root), "--max-boots", "2")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "otad-sim: error: the board never came up (2 U-Boot passes, 2 watchdog resets)"]


@pytest.mark.parametrize("text, size", [("16M", 16 << 20), ("512K", 512 << 10), ("1G", 1 << 30),
                                        ("4096", 4096), ("2MiB", 2 << 20)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
