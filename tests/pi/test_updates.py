"""Scenarios 2-7 of issue 11 on three emulated boards, two at a time; bundles delivered on the
card (2-6) or by goosebit over the network (7).

Board "update": (2) the good bundle into slot b, the trial boot, `otad confirm` commits; (5)
`otad run` owns the softdog watchdog, is stopped with SIGSTOP and the board resets (slot b
stays). Then board "server" (tests/pi/server.py): (7) `otad run` against goosebit.

Board "faults", at the same time: (6) a power cut as the install starts the env write, then one
right after it (otad stops itself at a crash point, the power goes at once); the second leaves
the new slot armed: (4) its health check fails after the trial boot, otad switches back and
reboots; then (6) a power cut in the middle of the good bundle's slot write, and a new install
that succeeds: (3) the broken bundle, whose three trial boots end in a kernel panic until
U-Boot falls back; confirm records it; the next power-on stays on slot a.

Each step asserts what U-Boot's boot.scr printed, `otad status --json`, fw_printenv in the
guest (or on the card while the board is off), and the slots' bytes against the bundle's image
(tests/pi/guest.py). Each scenario prints its duration.
"""

from __future__ import annotations

import os
import re
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from tests.pi.board import LOGIN_TIMEOUT_S, Board, BootLine, in_parallel
from tests.pi.server import server_scenario
from tests.pi.guest import (INSTALL_TIMEOUT_S, SlotImage, compare_slot, deliver, files_bundle, guest_bundle, install,
                            printenv, set_health_checks, slot_states, start_install, status, wait_log)

BUNDLES = os.environ.get("OTAD_PI_BUNDLES", "")
VERSION = os.environ.get("OTAD_PI_BUNDLE_VERSION", "")
UNHEALTHY_VERSION = "1.2.0"
APP_CHECK = "test -e /run/otad-pi-app.ready"  # the unhealthy release's health check: never true
PANIC_TIMEOUT_S = 300.0
A_IDLE = BootLine("2", "0", "0", "3")
B_IDLE = BootLine("3", "0", "0", "3")

pytestmark = pytest.mark.skipif(not BUNDLES, reason="scripts/pi-test builds the bundles (OTAD_PI_BUNDLES)")


@contextmanager
def scenario_named(board_name: str, name: str) -> Iterator[None]:
    """Prints the scenario's duration, and whether it passed (the failure's traceback at once:
    the other board goes on)."""
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"\n{board_name}: scenario {name}: FAILED after {time.monotonic() - started:.0f} s (console: "
              f"{board_name}-console.log)\n{traceback.format_exc()}", flush=True)
        raise
    print(f"\n{board_name}: scenario {name}: passed in {time.monotonic() - started:.0f} s", flush=True)


def scenario(board: Board, name: str) -> Iterator[None]:
    return scenario_named(board.name, name)  # type: ignore[return-value]


def env_is(board: Board, rootpart: str, upgrade_available: str, bootcount: str, otad_prev: Optional[str]) -> None:
    assert printenv(board) == {"rootpart": rootpart, "upgrade_available": upgrade_available, "bootcount": bootcount,
                               "bootlimit": "3", "otad_prev": otad_prev}


def trial_vars(env: Dict[str, str]) -> Dict[str, Optional[str]]:
    return {k: env.get(k) for k in ("rootpart", "upgrade_available", "bootcount", "bootlimit", "otad_prev")}


class Images:
    """The bundles' images, extracted and grown once (lazily, by whichever board needs one first)."""

    def __init__(self, bundles: Dict[str, Path], slot_size: int, work: Path) -> None:
        self._bundles, self._slot_size, self._work = bundles, slot_size, work
        self._made: Dict[str, SlotImage] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> SlotImage:
        with self._lock:
            if name not in self._made:
                self._made[name] = SlotImage.from_bundle(self._bundles[name], "rootfs.ext4.zstd", self._slot_size,
                                                         self._work)
            return self._made[name]


def slot_holds(board: Board, number: int, image: SlotImage) -> None:
    """The slot is the image, but for the metadata blocks resize2fs rewrites, grown to the slot."""
    found = compare_slot(board.card, number, image)
    print(f"{board.name}: p{number} against {image.path.name}: {found}", flush=True)
    assert found["other_count"] == 0, found
    assert found["fs_bytes"] == image.slot_size, found


# ----------------------------------------------------------------------------- board "update"

def update_board(board: Board, good: Path, images: Images) -> None:
    with scenario(board, "2 (good update)"):
        good_update(board, good, images)
    with scenario(board, "5 (hung daemon)"):
        hung_daemon(board)
    board.close()


def good_update(board: Board, good: Path, images: Images) -> None:
    board.power_on()
    assert board.wait_boot().line == A_IDLE
    out, code, seconds = install(board, guest_bundle(good.name))
    print(f"{board.name}: otad install {good.name}: {seconds} s", flush=True)
    assert code == 0, out
    assert f"version {VERSION} installed into slot b" in out and "slot b armed for a trial boot" in out
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "b", "trial_armed")
    assert slot_states(report) == {"a": ("good", None, None, True, False),
                                   "b": ("trial", VERSION, "installed", False, True)}
    env_is(board, "3", "1", "0", "2")
    slot_holds(board, 3, images["good"])

    # U-Boot counts the trial boot; the init script's confirm commits the slot.
    boot = board.reboot()
    assert boot.line == BootLine("3", "1", "1", "3")
    assert "Saving Environment to FAT... OK" in boot.console.split("otad-boot:")[0]
    assert (f"otad: confirm: confirmed: the trial of slot b (version {VERSION}) succeeded: slot b is committed"
            in boot.console)
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("b", "b", "idle")
    assert report["last_result"]["outcome"] == "confirmed" and report["last_result"]["slot"] == "b"
    assert slot_states(report)["b"] == ("good", VERSION, "installed", True, True)
    env_is(board, "3", "0", "0", None)
    assert board.sh("cat /etc/sw-versions") == f"rootfs {VERSION}"


def hung_daemon(board: Board) -> None:
    """softdog is /dev/watchdog1 (QEMU's BCM2835 watchdog resets the board when it is opened).
    The device's configuration is changed on the running slot b, as an operator would."""
    board.sh("modprobe softdog && echo softdog >> /etc/modules && test -c /dev/watchdog1")
    board.sh("sed -i '/^watchdog = {/,/^};/{s/enabled = false;/enabled = true;/; "
             "s|device = \"/dev/watchdog\";|device = \"/dev/watchdog1\";|; s/timeout_s = 15;/timeout_s = 10;/}' "
             "/etc/otad/otad.conf")
    section = board.sh("sed -n '/^watchdog = {/,/^};/p' /etc/otad/otad.conf")
    assert re.search(r"enabled = true;", section) and '"/dev/watchdog1"' in section and "timeout_s = 10;" in section
    board.sh("/etc/init.d/otad restart", timeout=300)
    pid = watchdog_owner(board)
    assert board.sh("cat /sys/class/watchdog/watchdog1/state /sys/class/watchdog/watchdog1/timeout").split() == \
        ["active", "10"]
    # otad pets it: the board outlives three margins.
    before, after = (float(x) for x in board.sh("cut -d' ' -f1 /proc/uptime; sleep 30; cut -d' ' -f1 /proc/uptime",
                                                timeout=180).split())
    assert after - before >= 30

    board.sh("dmesg -n 3")  # the watchdog's pr_crit on the console
    stopped = time.monotonic()
    board.run_detached(f"kill -STOP {pid}")
    board.expect("softdog: Initiating system reboot", 300, "the watchdog's reset")
    fired = time.monotonic() - stopped
    boot = board.wait_boot()
    print(f"{board.name}: SIGSTOP -> softdog fires {fired:.1f} s (margin 10 s) -> U-Boot "
          f"{fired + boot.seconds('u-boot'):.1f} s", flush=True)
    # The first of two more boots: slot b stays, nothing to confirm, the daemon holds the watchdog again.
    assert boot.line == B_IDLE
    assert "otad: confirm: nothing: no trial: slot b runs and boots next" in boot.console
    watchdog_owner(board)
    assert board.sh("cat /sys/class/watchdog/watchdog1/state") == "active"
    env_is(board, "3", "0", "0", None)


def watchdog_owner(board: Board, timeout: float = 300.0) -> int:
    """The daemon's pid, once it holds /dev/watchdog1 open (it opens it after its start-up)."""
    pid = int(board.sh("cat /var/run/otad.pid"))
    deadline = time.monotonic() + timeout
    while board.sh_status(f"ls -l /proc/{pid}/fd | grep -q /dev/watchdog1")[1] != 0:
        assert time.monotonic() < deadline, f"otad run did not open /dev/watchdog1 within {timeout:.0f} s"
        time.sleep(3)
    return pid


def broken_update(board: Board, broken: Path, images: Images) -> None:
    """From slot a (committed, idle) into slot b: the trial boots panic, U-Boot falls back to a."""
    out, code, seconds = install(board, guest_bundle(broken.name))
    print(f"{board.name}: otad install {broken.name}: {seconds} s", flush=True)
    assert code == 0, out
    assert f"version {VERSION} installed into slot b" in out
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "b", "trial_armed")
    env_is(board, "3", "1", "0", "2")
    slot_holds(board, 3, images["broken"])

    # Each trial boot is counted, the kernel cannot start init and resets (panic=10).
    board.run_detached("reboot")
    lines: List[BootLine] = []
    for _ in range(3):
        board.wait_uboot()
        lines.append(board.wait_boot_line())
        board.expect("Kernel panic - not syncing", PANIC_TIMEOUT_S, "the broken slot's kernel panic")
        assert "this root filesystem is broken on purpose" in board.before
    assert lines == [BootLine("3", "1", "1", "3"), BootLine("3", "2", "1", "3"), BootLine("3", "3", "1", "3")]
    boot = board.wait_boot()
    assert boot.line == A_IDLE
    assert "otad: boot 4 of slot 3 exceeds bootlimit 3: rolling back" in boot.console
    assert re.search(rf"otad: confirm: fell_back: the trial of slot b \(version {re.escape(VERSION)}\) failed: "
                     r"U-Boot fell back to slot a", boot.console)
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "a", "idle")
    last = report["last_result"]
    assert (last["outcome"], last["slot"], last["version"]) == ("fell_back", "b", VERSION)
    assert "U-Boot fell back to slot a" in last["reason"]
    env_is(board, "2", "0", "0", None)

    # The next power-on stays on slot a: U-Boot counts nothing and writes nothing.
    board.run_detached("poweroff")
    board.expect_exit(timeout=180)
    env = board.card.env()
    board.power_on()
    board.wait_uboot()
    assert board.wait_boot_line() == A_IDLE
    board.expect("Starting kernel", 60, "slot a's kernel")
    assert "Saving Environment" not in board.before
    board.power_cut()
    assert board.card.env() == env
    assert trial_vars(env) == {"rootpart": "2", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3",
                               "otad_prev": None}


# ----------------------------------------------------------------------------- board "faults"

def faults_board(board: Board, good: Path, broken: Path, unhealthy: Path, images: Images) -> None:
    with scenario(board, "6 (power cut as the install starts the env write)"):
        cut_before_env_write(board, unhealthy)
    with scenario(board, "6 + 4 (power cut after the env write; the trial fails its health check)"):
        cut_after_env_write_then_failed_health_check(board, unhealthy)
    with scenario(board, "6 (power cut during the slot write)"):
        cut_during_slot_write(board, good)
    with scenario(board, "6 + 3 (a new install after the cut: the broken update)"):
        broken_update(board, broken, images)


def install_until(board: Board, bundle: str, point: str) -> List[str]:
    """`otad install` until crash point `point`, where it SIGKILLs itself (otad/crashpoint.py);
    the power goes at once, before the guest's kernel writes back anything otad left dirty.
    Returns the crash points it passed, in order."""
    out, code = board.sh_status(f"OTAD_CRASH_AT={point} OTAD_CRASH_LIST=/run/otad-points otad install {bundle} "
                                ">/run/otad-install.log 2>&1", timeout=INSTALL_TIMEOUT_S)
    assert code == 137, (code, board.sh("cat /run/otad-install.log"))  # SIGKILL, at the point
    points = board.sh("cut -f1 /run/otad-points").splitlines()
    board.power_cut()
    return points


def cut_before_env_write(board: Board, unhealthy: Path) -> None:
    """The files are written into slot b and the arming is recorded (state ARMING); the power
    goes as the env write begins: the env is U-Boot's old one, confirm aborts the arming."""
    env_before = board.card.fat_read("uboot.env")
    board.power_on()
    assert board.wait_boot().line == A_IDLE
    points = install_until(board, guest_bundle(unhealthy.name), "env.before_write")
    assert points[-2:] == ["arm.intent_persisted#1", "env.before_write#1"], points
    assert board.card.fat_read("uboot.env") == env_before

    board.power_on()
    boot = board.wait_boot()
    assert boot.line == A_IDLE
    assert ("otad: confirm: aborted: arming the trial of slot b was interrupted before the boot env was "
            "switched; slot a stays") in boot.console
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "a", "idle")
    assert report["last_result"]["outcome"] == "aborted", report["last_result"]
    env_is(board, "2", "0", "0", None)


def cut_after_env_write_then_failed_health_check(board: Board, unhealthy: Path) -> None:
    """The same release again; the power goes right after the env write (the state still says
    ARMING). The env on the card arms slot b: U-Boot boots its trial, confirm completes the
    arming, runs the new slot's health checks, one fails: otad switches back and reboots."""
    points = install_until(board, guest_bundle(unhealthy.name), "env.written")
    # uboot.env lives on FAT: written in place, as fw_setenv does, not by temp file and rename.
    between = points[points.index("env.before_write#1") + 1:points.index("env.written#1")]
    assert between == [], points
    env = board.card.env()
    assert trial_vars(env) == {"rootpart": "3", "upgrade_available": "1", "bootcount": "0", "bootlimit": "3",
                               "otad_prev": "2"}
    assert board.card.ext4_read(3, "/etc/sw-versions") == f"rootfs {UNHEALTHY_VERSION}\n".encode()
    assert APP_CHECK in board.card.ext4_read(3, "/etc/otad/otad.conf").decode()

    board.power_on()
    board.wait_uboot()
    assert board.wait_boot_line() == BootLine("3", "1", "1", "3")
    # The init script's confirm completes the arming, fails the check, switches back and reboots
    # before a login prompt (its verdict's console line is lost with runlevel 2's processes; the
    # state keeps it, below).
    board.expect(re.escape("otad: confirm: otad: INFO: state: arming → trial_armed (slot b)"), LOGIN_TIMEOUT_S,
                 "confirm completing the arming")
    board.expect("INIT: Switching to runlevel: 6", LOGIN_TIMEOUT_S, "the reboot confirm asks for")
    assert "login:" not in board.before
    boot = board.wait_boot()
    assert boot.line == A_IDLE
    report = status(board)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "a", "idle")
    last = report["last_result"]
    assert (last["outcome"], last["slot"], last["version"]) == ("health_failed", "b", UNHEALTHY_VERSION)
    assert APP_CHECK in last["reason"]
    env_is(board, "2", "0", "0", None)


def cut_during_slot_write(board: Board, good: Path, after_s: float = 30.0) -> None:
    """The power goes `after_s` into the good bundle's slot write (it takes minutes): the old slot
    boots, slot b is interrupted. The new install that follows is scenario 3's."""
    start_install(board, guest_bundle(good.name))
    wait_log(board, r"installing rootfs\.ext4\.zstd")
    time.sleep(after_s)
    assert board.sh_status("kill -0 $(cat /run/otad-install.pid)")[1] == 0, "the install ended before the cut"
    board.power_cut()
    env = board.card.env()
    assert trial_vars(env) == {"rootpart": "2", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3",
                               "otad_prev": None}
    board.power_on()
    assert board.wait_boot().line == A_IDLE
    report = status(board)
    print(f"{board.name}: after the cut ({after_s:.0f} s into the slot write): slots {slot_states(report)}",
          flush=True)
    assert (report["booted"], report["env_slot"], report["phase"]) == ("a", "a", "idle")
    state, _, install_state, _, _ = slot_states(report)["b"]
    assert "interrupted" in (state, install_state), slot_states(report)
    assert slot_states(report)["a"][0] == "good"
    env_is(board, "2", "0", "0", None)


# ----------------------------------------------------------------------------- the test

def test_update_scenarios_on_three_boards(make_board: Callable[..., Board], card_info: Dict[str, Any],
                                          golden_card: Path, tmp_path: Path) -> None:
    good, broken = [Path(p) for p in BUNDLES.split(os.pathsep)]
    from tests.pi.card import Card

    conf = Card(golden_card).ext4_read(2, "/etc/otad/otad.conf").decode()
    unhealthy = files_bundle(
        tmp_path / f"otad-pi-{UNHEALTHY_VERSION}-unhealthy.swu", UNHEALTHY_VERSION,
        f"otad Pi Zero W {UNHEALTHY_VERSION}: its health check fails",
        {"sw-versions": ("/etc/sw-versions", f"rootfs {UNHEALTHY_VERSION}\n".encode()),
         "otad.conf": ("/etc/otad/otad.conf", set_health_checks(conf, ["test -e /etc/os-release", APP_CHECK]).encode())},
        card_info["keys"], tmp_path)
    slot_size = {p["name"]: p["size_mib"] for p in card_info["layout"]}["slot-b"] << 20
    images = Images({"good": good, "broken": broken}, slot_size, tmp_path / "images")

    update, faults = make_board("update"), make_board("faults")
    deliver(update.card, good)
    deliver(faults.card, good, broken, unhealthy)

    def update_then_server() -> None:
        update_board(update, good, images)
        with scenario_named("server", "7 (otad run against goosebit over SLIP)"):
            server_scenario(make_board, card_info, tmp_path / "server")

    in_parallel([update_then_server, lambda: faults_board(faults, good, broken, unhealthy, images)])
