"""Scenario 7 of issue 11: the emulated Pi's `otad run` against a real goosebit on the host
(run by tests/pi/test_updates.py, on a third board after the "update" board's scenarios, so
that two boards run at a time).

The board's network is SLIP on its PL011 into QEMU's user network with restrict=on
(tests/pi/slipnet.py): the guest reaches 10.0.2.100:80, which QEMU forwards to goosebit on the
host's 127.0.0.1, and nothing else, which the test checks from the guest. The card copy gets
what the emulator needs and a real card does not: boot.scr's otad_fdt_fixup removes the
Bluetooth node on the PL011 (so Linux makes it ttyAMA0), an ifupdown stanza brings SLIP up at
boot, and otad.conf polls every 5 s instead of 30.

Two releases, small `files` bundles signed for the card (a full root filesystem would take
minutes through a serial line; the update scenarios install those from the card): 1.2.0 writes
/etc/sw-versions into the inactive slot; goosebit shows it Running until the trial boot is
confirmed, then Finished. 1.3.0 also replaces /usr/sbin/init with one that exits: three trial
boots end in a kernel panic, U-Boot falls back, `otad confirm` records it and the daemon
reports the action failed: goosebit shows Error, with the reason in the device's log.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from tests.goosebit import Goosebit, start_goosebit
from tests.pi.board import Board, BootLine
from tests.pi.card import Card
from tests.pi.guest import files_bundle, printenv, status
from tests.pi.slipnet import GUEST_INTERFACE, GUEST_IP, SERVER_IP, SlipNet

CONTROLLER = "otad-pi"  # the card's hostname (controller_id_from = "/etc/hostname")
GOOD, BROKEN = "1.2.0", "1.3.0"
# boot.scr runs it on the device tree it hands the kernel (etc/boot.cmd); only on this copy.
FREE_THE_PL011 = "fdt addr ${otad_fdt}; fdt rm /soc/serial@7e201000/bluetooth"  # no room in the blob for a new property
SERVER_TIMEOUT_S = 600.0
BROKEN_INIT = b"#!/bin/sh\necho 'otad-pi: release 1.3.0 cannot start init'\nexit 1\n"



def network_card(card: Card) -> None:
    """The emulator's network on this copy of the card (both slots: each boots with it)."""
    card.set_env({"otad_fdt_fixup": FREE_THE_PL011})
    for slot in (2, 3):
        interfaces = card.ext4_read(slot, "/etc/network/interfaces").decode()
        card.ext4_write(slot, "/etc/network/interfaces", (interfaces + "\n" + GUEST_INTERFACE).encode())
        conf = card.ext4_read(slot, "/etc/otad/otad.conf").decode()
        conf, count = re.subn(r"(?m)^(\s*)poll_min_s = 30;", r"\1poll_min_s = 5;", conf)
        assert count == 1
        card.ext4_write(slot, "/etc/otad/otad.conf", conf.encode())


def fetch(board: Board, urls: List[str]) -> Dict[str, str]:
    """GET each URL from the guest: {url: "reached N bytes" or "failed: why"}."""
    script = ("import sys, urllib.request as u\n"
              "for url in sys.argv[1:]:\n"
              "    try:\n"
              "        print(url, 'reached', len(u.urlopen(url, timeout=15).read()), 'bytes')\n"
              "    except Exception as exc:\n"
              "        print(url, 'failed:', type(exc).__name__, exc)\n")
    out = board.sh(f"python3 -c \"{script}\" " + " ".join(urls), timeout=600)
    return dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ", 1)[0] in urls)


def wait_server(gb: Goosebit, what: str, check: Callable[[Dict[str, Any]], bool],
                timeout: float = SERVER_TIMEOUT_S) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    device: Dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            device = gb.device(CONTROLLER)
        except AssertionError:  # 404 until the device's first poll
            device = {}
        if device and check(device):
            return device
        time.sleep(2)
    raise AssertionError(f"goosebit: {what} not seen within {timeout:.0f} s; device: {device}")


def server_scenario(make_board: Callable[..., Board], card_info: Dict[str, Any], work: Path) -> None:
    """Scenario 7 on a board of its own (`make_board("server", ...)`), goosebit in `work`."""
    keys = card_info["keys"]
    work.mkdir(parents=True, exist_ok=True)
    good = files_bundle(work / f"otad-pi-{GOOD}.swu", GOOD, f"otad Pi Zero W {GOOD}",
                        {"sw-versions": ("/etc/sw-versions", f"rootfs {GOOD}\n".encode())}, keys, work)
    broken = files_bundle(work / f"otad-pi-{BROKEN}.swu", BROKEN, f"otad Pi Zero W {BROKEN}: init exits",
                          {"sw-versions": ("/etc/sw-versions", f"rootfs {BROKEN}\n".encode()),
                           "init": ("/usr/sbin/init", BROKEN_INIT)}, keys, work)
    (work / "goosebit").mkdir()
    with start_goosebit(work / "goosebit") as gb:
        port = int(gb.base.rsplit(":", 1)[1])
        net = SlipNet(work, host_port=port)
        board = make_board("server", serial0=net.serial0, extra_args=net.qemu_args)
        network_card(board.card)
        try:
            run_scenario(board, net, gb, good, broken)
        finally:
            print(f"\nserver: SLIP carried {net.from_guest} packets out, {net.to_guest} in", flush=True)
            board.close()
            net.close()


def run_scenario(board: Board, net: SlipNet, gb: Goosebit, good: Path, broken: Path) -> None:
    started = time.monotonic()
    board.power_on()
    net.start()
    boot = board.wait_boot()
    assert boot.line == BootLine("2", "0", "0", "3")
    assert f"inet {GUEST_IP} peer 10.0.2.2/32" in board.sh("ip -4 -o addr show dev sl0")
    assert not board.sh_status("test -e /sys/class/bluetooth/hci0")[1] == 0  # the PL011 is ttyAMA0 now

    # Only 10.0.2.100:80 leads out (to goosebit on the host's loopback); nothing else does.
    # (Python's urllib: Debian 12's armel busybox wget segfaults on the emulated board.)
    t0 = time.monotonic()
    tried = fetch(board, [f"http://{SERVER_IP}/docs", f"http://10.0.2.2:{net.host_port}/docs", "http://10.0.2.2:22/",
                          f"http://{SERVER_IP}:81/", "http://192.0.2.1/", "http://1.1.1.1/"])
    print(f"server: from the guest ({time.monotonic() - t0:.0f} s): {tried}", flush=True)
    assert tried.pop(f"http://{SERVER_IP}/docs").startswith("reached")
    assert all(result.startswith("failed") for result in tried.values()), tried

    # The daemon registered itself (its first polls).
    device = wait_server(gb, "the device registering with its board (configData)",
                         lambda d: (d.get("hardware") or {}).get("model") == "rpi0w")
    assert device["hardware"]["revision"] == "1.0"
    print(f"server: registered {time.monotonic() - started:.0f} s after power on", flush=True)

    # 1.2.0: download, install into slot b, arm, reboot; Running until the trial is confirmed.
    t0 = time.monotonic()
    gb.rollout(gb.upload(good), name=f"pi-{GOOD}")
    board.wait_uboot(timeout=SERVER_TIMEOUT_S)
    assert gb.device(CONTROLLER)["last_state"] == "Running"
    boot = board.wait_boot(banner_seen=True)
    assert boot.line == BootLine("3", "1", "1", "3")
    assert f"otad: confirm: confirmed: the trial of slot b (version {GOOD}) succeeded" in boot.console
    device = wait_server(gb, f"{GOOD} Finished", lambda d: d["last_state"] != "Running")
    assert (device["last_state"], device["sw_version"]) == ("Finished", GOOD), device
    print(f"server: {GOOD} rollout to Finished: {time.monotonic() - t0:.0f} s", flush=True)
    report = status(board)
    assert (report["booted"], report["phase"], report["last_result"]["outcome"]) == ("b", "idle", "confirmed")
    assert printenv(board)["rootpart"] == "3" and board.sh("cat /etc/sw-versions") == f"rootfs {GOOD}"

    # 1.3.0: into slot a; its trial boots cannot start init; U-Boot falls back; Error.
    t0 = time.monotonic()
    gb.rollout(gb.upload(broken), name=f"pi-{BROKEN}")
    lines = []
    for _ in range(3):
        board.wait_uboot(timeout=SERVER_TIMEOUT_S)
        lines.append(board.wait_boot_line())
    assert lines == [BootLine("2", "1", "1", "3"), BootLine("2", "2", "1", "3"), BootLine("2", "3", "1", "3")]
    assert gb.device(CONTROLLER)["last_state"] == "Running"
    boot = board.wait_boot()
    assert boot.line == BootLine("3", "0", "0", "3")
    assert "otad: boot 4 of slot 2 exceeds bootlimit 3: rolling back" in boot.console
    assert re.search(rf"otad: confirm: fell_back: the trial of slot a \(version {re.escape(BROKEN)}\) failed: "
                     r"U-Boot fell back to slot b", boot.console)
    device = wait_server(gb, f"{BROKEN} Error", lambda d: d["last_state"] != "Running")
    assert (device["last_state"], device["sw_version"]) == ("Error", GOOD), device
    assert "U-Boot fell back to slot b" in gb.device_log(CONTROLLER)
    print(f"server: {BROKEN} rollout to Error: {time.monotonic() - t0:.0f} s", flush=True)
    report = status(board)
    assert (report["booted"], report["phase"], report["last_result"]["outcome"]) == ("b", "idle", "fell_back")
    print(f"server: scenario 7: {time.monotonic() - started:.0f} s", flush=True)
