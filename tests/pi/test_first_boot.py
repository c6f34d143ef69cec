"""Scenario 1, first boot of a fresh card: U-Boot runs otad's boot.scr on slot a, SysV init runs
/etc/init.d/otad (from otad's Debian package), which runs `otad confirm` (nothing to confirm)
and starts the daemon; `otad status` is healthy; the init script's stop, start and status
behave; nothing writes the U-Boot env or the other slot on a normal boot.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict

from tests.pi.board import Board, BootLine

TRIAL_VARIABLES = ("rootpart", "upgrade_available", "bootcount", "bootlimit")


def daemon_pid(board: Board) -> int:
    """The pid in the init script's pid file, checked to be a live `otad ... run`."""
    pid = int(board.sh("cat /var/run/otad.pid"))
    cmdline = board.sh(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert re.search(r"/usr/bin/otad --config /etc/otad/otad.conf\s+run", cmdline), cmdline
    return pid


def test_first_boot(make_board: Callable[..., Board], card_info: Dict[str, Any]) -> None:
    board = make_board("first-boot")
    env_before = board.card.env()
    uboot_env_before = board.card.fat_read("uboot.env")
    slot_b_before = board.card.sha256(3)
    board.power_on()
    boot = board.wait_boot()

    # U-Boot: the card's uboot.env loads, distro_bootcmd finds otad's boot.scr, which boots
    # slot a with no trial and writes nothing.
    assert boot.line == BootLine(rootpart="2", bootcount="0", upgrade_available="0", bootlimit="3")
    uboot = boot.console.split("otad-boot:")[0]
    assert "Loading Environment from FAT... OK" in uboot
    assert "Found U-Boot script /boot.scr" in uboot
    assert "Saving Environment" not in boot.console
    # /etc/init.d/otad ran confirm before the daemon, both during boot (its log lines on the console).
    assert "otad: confirm: nothing: no trial: slot a runs and boots next" in boot.console
    assert re.search(r"otad: started \(pid \d+\)", boot.console)

    # Debian's packages, otad from its package, no simulator on the device.
    assert board.sh("otad --version") == f"otad {card_info['deb'].split('_')[1]}"
    assert board.sh("python3 -c 'import otad, cryptography; print(otad.__file__, cryptography.__version__)'") == \
        "/usr/lib/python3/dist-packages/otad/__init__.py 38.0.4"
    assert board.sh("dpkg-query -W -f '${Status} ${Version}' otad") == \
        f"install ok installed {card_info['deb'].split('_')[1]}"
    assert board.sh_status("command -v otad-sim || python3 -c 'import otad.sim'")[1] != 0
    assert board.sh("cat /proc/cmdline").split()[:6] == [
        "console=tty1", "console=ttyS1,115200", "root=/dev/mmcblk0p2", "rootfstype=ext4", "rootwait", "rw"]

    # otad status: slot a booted (from the kernel command line) and next, healthy, no warnings.
    status = board.sh("otad status")
    assert status.splitlines()[:4] == [
        "booted:  a (kernel command line otad.rootpart=2)",
        "next:    a",
        "slot a /dev/mmcblk0p2: good [booted] [next]",
        "slot b /dev/mmcblk0p3: inactive"]
    assert "env:     rootpart=2 upgrade_available=0 bootcount=0 bootlimit=3" in status
    assert "warning:" not in status and "trial:" not in status
    report = json.loads(board.sh("otad status --json"))
    assert (report["booted"], report["env_slot"], report["phase"], report["pending_trial"]) == ("a", "a", "idle", None)
    assert report["env"] == {"rootpart": "2", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3",
                             "otad_prev": None}
    assert [(s["name"], s["state"], s["booted"], s["next_boot"]) for s in report["slots"]] == [
        ("a", "good", True, True), ("b", "inactive", False, False)]
    assert all(report[k] is None for k in ("mismatch", "booted_problem", "env_problem", "state_problem",
                                           "daemon_problem"))
    pid = daemon_pid(board)
    assert report["daemon"]["pid"] == pid
    # fw_printenv (libubootenv) reads what U-Boot loaded; the state lives on p4, not in the slot.
    printed = board.sh("fw_printenv " + " ".join(TRIAL_VARIABLES)).splitlines()
    assert printed == ["rootpart=2", "upgrade_available=0", "bootcount=0", "bootlimit=3"]
    assert board.sh("findmnt -n -o SOURCE /var/lib/otad") == "/dev/mmcblk0p4"

    # The init script: status, stop, status, start (confirm again, then a new daemon), status.
    assert board.sh_status("/etc/init.d/otad status") == (f"otad is running (pid {pid})", 0)
    out, code = board.sh_status("/etc/init.d/otad stop")
    assert (out, code) == ("otad: stopped", 0)
    assert board.sh_status(f"kill -0 {pid}")[1] != 0
    assert board.sh_status("/etc/init.d/otad status") == ("otad is not running", 3)
    out, code = board.sh_status("/etc/init.d/otad start", timeout=300)
    assert code == 0, out
    assert "otad: confirm: nothing: no trial: slot a runs and boots next" in out
    new_pid = daemon_pid(board)
    assert new_pid != pid and f"otad: started (pid {new_pid})" in out
    assert board.sh_status("/etc/init.d/otad status") == (f"otad is running (pid {new_pid})", 0)
    assert board.sh_status("/etc/init.d/otad start")[0] == f"otad: already running (pid {new_pid})"

    # Power off cleanly: QEMU ends. A normal boot wrote neither the env nor slot b.
    board.run_detached("poweroff")
    board.expect_exit(timeout=120)
    assert board.card.fat_read("uboot.env") == uboot_env_before
    assert board.card.env() == env_before
    assert board.card.sha256(3) == slot_b_before
