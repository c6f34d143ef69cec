"""An emulated Raspberry Pi Zero W: QEMU's raspi0 machine booting a card, driven over its serial
console with pexpect.

One Board is one QEMU process on one card image file (a copy of its own, see card.py), so two
boards run side by side. A guest reboot or reset stays inside the process and comes back into
U-Boot; `power_cut()` kills QEMU at once (the card keeps what reached it), `power_on()` starts
it again on the same card, which can be changed in between (`board.card`). Every wait has a
timeout; QEMU is killed by process group in `power_cut()` and `close()`, also when a test fails.

What QEMU 7.2 needs (docs/deploying.md, section 9):
  * the console is the second -serial, the mini UART (U-Boot's and Linux's ttyS1); the first,
    the PL011, belongs to Bluetooth in the Zero W device tree;
  * `-device loader,addr=0x8000,cpu-num=0`: every reset starts at U-Boot's address, not at 0
    (after Linux ran, the RAM below 0x8000 holds page tables and the CPU would hang there);
  * `-bios` the card's own u-boot.bin (raspi's "firmware" is loaded at 0x8000);
  * the kernel argument of card.EMULATOR_BOOTARGS, which the card carries in uboot.env;
  * `-icount shift=auto`: QEMU's BCM2835 system timer fires a compare value that is already past
    only after the 32-bit counter wraps (71 minutes). Linux arms it 15 us ahead at least, and
    with the virtual clock following the host's, a vCPU thread descheduled between the
    counter read and the compare write (a loaded host) stalls the guest. With icount the
    virtual clock advances with executed instructions, so no host pause falls in between.

    with Board(Card.copy_of(golden, tmp / "sd.img"), log_dir=tmp) as board:
        board.card.prepare_for_emulator()
        board.power_on()
        boot = board.wait_boot()              # U-Boot's boot.scr line, then a root shell
        print(board.sh("otad status"))
        board.reboot()                        # `reboot` in the guest, then the next whole boot
        board.power_cut(); board.card.set_env({"bootlimit": "1"}); board.power_on()
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pexpect

from tests.pi.card import Card

QEMU = "qemu-system-arm"
HOSTNAME = "otad-pi"
PROMPT = re.compile(rf"root@{HOSTNAME}:[^\r\n]*# ")
UBOOT_BANNER = re.compile(r"U-Boot 20\d\d\.\d\d")
# boot.scr's line (etc/boot.cmd): what U-Boot decided for this boot.
BOOT_LINE = re.compile(r"otad-boot: rootpart=(\S*) bootcount=(\S*) upgrade_available=(\S*) bootlimit=(\S*)\s")

# Generous bounds for a 2-core host running two boards and other work; a boot takes 75-100 s.
UBOOT_TIMEOUT_S = 60.0  # power on or reset -> U-Boot banner
SCRIPT_TIMEOUT_S = 60.0  # banner -> boot.scr's line (2 s bootdelay, USB scan)
KERNEL_TIMEOUT_S = 60.0  # boot.scr's line -> "Starting kernel"
LOGIN_TIMEOUT_S = 420.0  # kernel -> login prompt (udev, init scripts, otad confirm); 150 s seen under load
COMMAND_TIMEOUT_S = 120.0


class BoardError(Exception):
    """The board did not do what a test waited for; the message says what, and the console
    log (board.log_path) has the rest."""


@dataclass(frozen=True)
class BootLine:
    """What boot.scr printed: the slot U-Boot boots and the trial counters after its update."""

    rootpart: str
    bootcount: str
    upgrade_available: str
    bootlimit: str


@dataclass
class Boot:
    """One boot as the console showed it; `marks` are seconds since wait_boot() began (power
    on, or the command that reset the board)."""

    line: BootLine
    marks: List[Tuple[str, float]] = field(default_factory=list)
    console: str = ""  # everything from U-Boot's banner to the login prompt

    def seconds(self, mark: str) -> float:
        return dict(self.marks)[mark]


class Board:
    """One emulated Pi Zero W. `extra_args` are added to QEMU's command line (a -serial for the
    PL011 instead of null, -netdev..., -device ...); `serial0` is the first UART's backend."""

    def __init__(self, card: Card, log_dir: Path, name: str = "pi", extra_args: Sequence[str] = (),
                 serial0: str = "null") -> None:
        self.card = card
        self.name = name
        self.log_path = Path(log_dir) / f"{name}-console.log"
        self.extra_args = list(extra_args)
        self.serial0 = serial0
        self.boots: List[Boot] = []
        self._child: Optional[pexpect.spawn] = None
        self._log = None
        self._bios_dir = tempfile.TemporaryDirectory(prefix=f"otad-{name}-")
        self._t0 = 0.0

    # ----------------------------------------------------------------- power

    def argv(self) -> List[str]:
        bios = self.card.u_boot_bin(Path(self._bios_dir.name) / "u-boot.bin")
        return [QEMU, "-M", "raspi0", "-bios", str(bios),
                "-drive", f"if=sd,format=raw,file={self.card.path}",
                "-nographic", "-serial", self.serial0, "-serial", "mon:stdio",
                "-device", "loader,addr=0x8000,cpu-num=0", "-icount", "shift=auto", *self.extra_args]

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.isalive()

    @property
    def pid(self) -> Optional[int]:
        return self._child.pid if self._child is not None else None

    def power_on(self) -> None:
        if self.running:
            raise BoardError(f"{self.name}: already powered on")
        argv = self.argv()
        self._log = open(self.log_path, "a", encoding="utf-8", errors="replace")
        self._log.write(f"\n===== {self.name}: power on: {' '.join(argv)}\n")
        self._t0 = time.monotonic()
        # pexpect's child is a session (and process group) leader on its own pty: killpg reaches
        # QEMU and anything it spawned (guestfwd's socat).
        self._child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace",
                                    timeout=COMMAND_TIMEOUT_S, dimensions=(50, 500), echo=False)
        self._child.logfile_read = self._log

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL to QEMU's process group, nothing flushed by the guest."""
        child, self._child = self._child, None
        if child is None:
            return
        if child.isalive():
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.close(force=True)
        if self._log is not None:
            self._log.write(f"\n===== {self.name}: power cut\n")
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.power_cut()
        self._bios_dir.cleanup()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- console

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def expect(self, patterns: object, timeout: float, what: str) -> int:
        """Wait for one of `patterns`; BoardError naming `what` on timeout or if QEMU exits."""
        if self._child is None:
            raise BoardError(f"{self.name}: waiting for {what} while powered off")
        try:
            return self._child.expect(patterns, timeout=timeout)
        except pexpect.TIMEOUT:
            raise BoardError(f"{self.name}: no {what} within {timeout:.0f} s (console: {self.log_path})") from None
        except pexpect.EOF:
            raise BoardError(f"{self.name}: QEMU exited while waiting for {what} (console: {self.log_path})") from None

    @property
    def match(self) -> re.Match:
        assert self._child is not None
        return self._child.match

    @property
    def before(self) -> str:
        assert self._child is not None
        return self._child.before

    def send(self, text: str) -> None:
        assert self._child is not None, "powered off"
        self._child.send(text)

    def wait_uboot(self, timeout: float = UBOOT_TIMEOUT_S) -> float:
        """Until U-Boot's banner (power on, reset, reboot, watchdog): seconds since power on."""
        self.expect(UBOOT_BANNER, timeout, "U-Boot banner")
        return self._now()

    def wait_boot_line(self, timeout: float = SCRIPT_TIMEOUT_S) -> BootLine:
        """Until boot.scr's `otad-boot:` line: what U-Boot decided."""
        self.expect(BOOT_LINE, timeout, "boot.scr line (otad-boot:)")
        return BootLine(*self.match.groups())

    def wait_boot(self, login_timeout: float = LOGIN_TIMEOUT_S, banner_seen: bool = False) -> Boot:
        """One whole boot: U-Boot's banner (unless the caller's wait_uboot() already saw it),
        boot.scr's line, the kernel, init, then log in as root on the serial console and quiet
        the kernel there. Returns the boot's record."""
        start = self._now()
        marks: List[Tuple[str, float]] = []
        console: List[str] = []

        def mark(name: str) -> None:
            marks.append((name, round(self._now() - start, 1)))
            console.append(self.before + (self.match.group(0) if isinstance(self.match, re.Match) else ""))

        if not banner_seen:
            self.wait_uboot()
        mark("u-boot")
        line = self.wait_boot_line()
        mark("boot.scr")
        self.expect("Starting kernel", KERNEL_TIMEOUT_S, "Starting kernel")
        mark("kernel")
        self.expect("INIT: version", LOGIN_TIMEOUT_S, "SysV init")
        mark("init")
        self.expect(f"{HOSTNAME} login: ", login_timeout, "login prompt")
        mark("login")
        self.send("root\r")
        self.expect(PROMPT, COMMAND_TIMEOUT_S, "root shell prompt")
        mark("shell")
        # The kernel's messages would interleave with command output; echo would repeat commands.
        self.sh("dmesg -n 1; stty -echo cols 500; bind 'set enable-bracketed-paste off'; export TERM=dumb PAGER=cat")
        boot = Boot(line, marks, "".join(console))
        self.boots.append(boot)
        return boot

    def sh(self, command: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
        """Run `command` in the guest's root shell; its output (stdout and stderr) without the
        trailing newline. With check, a non-zero exit status is a BoardError."""
        out, status = self.sh_status(command, timeout)
        if check and status != 0:
            raise BoardError(f"{self.name}: `{command}` exited {status}:\n{out}")
        return out

    def sh_status(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> Tuple[str, int]:
        tag = secrets.token_hex(4)
        # The markers are split in the command line so that the line itself never matches.
        self.send(f"echo OTAD''BEGIN{tag}; {{ {command}\n}} 2>&1; echo OTAD''END{tag} $?\r")
        # The serial console ends lines with \r\r\n.
        self.expect(re.compile(rf"OTADBEGIN{tag}\r*\n"), timeout, f"start of `{command}`")
        self.expect(re.compile(rf"OTADEND{tag} (\d+)\r*\n"), timeout, f"end of `{command}`")
        out, status = self.before, int(self.match.group(1))
        self.expect(PROMPT, COMMAND_TIMEOUT_S, "shell prompt")
        return out.replace("\r", "").rstrip("\n"), status

    def expect_exit(self, timeout: float) -> None:
        """Until QEMU ends by itself (the guest powered off), then the board is off."""
        self.expect(pexpect.EOF, timeout, "QEMU to exit (power off)")
        self.power_cut()

    def reboot(self, command: str = "reboot") -> Boot:
        """Reboot from the shell (`reboot`, `reboot -f`, `echo b > /proc/sysrq-trigger`) and wait
        for the next whole boot."""
        self.run_detached(command)
        return self.wait_boot()

    def run_detached(self, command: str) -> None:
        """Type a command and do not wait (reboot, poweroff, a command that resets the board)."""
        self.send(command + "\r")


def in_parallel(jobs: Sequence[Callable[[], Any]]) -> List[Any]:
    """Run each job (one board each) in its own thread; their results, or the first failure
    re-raised once all have ended. One QEMU keeps one host core busy: two boards at most on 2 cores."""
    results: List[Any] = [None] * len(jobs)
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"board-job-{i}") for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
