"""An SD card image for the emulated Pi Zero W, read and changed while its board is off.

Owns the card file and everything a test does to it without booting: copying the card made by
scripts/pi-image, reading the partition table, files on the FAT boot partition (mtools) and on
the ext4 slots and data partition (debugfs), the U-Boot environment (Debian's fw_printenv and
fw_setenv on a copy of uboot.env) and raw bytes of a partition. No loop devices, no mounts, no
root needed. Never use it while a board runs on the card: QEMU caches nothing, but the guest's
kernel does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

# The QEMU 7.2 workaround the kernel needs on raspi0 (no AXI-ASB registers: bcm2835-power's probe
# takes an external abort). It goes into the card's uboot.env, which boot.scr appends to the
# kernel command line; a real card never carries it.
EMULATOR_BOOTARGS = "initcall_blacklist=bcm2835_power_driver_init"
ENV_NAME = "uboot.env"
ENV_SIZE = 0x4000  # CONFIG_ENV_SIZE of Debian's rpi_0_w U-Boot
_CHUNK = 1 << 20


class CardError(Exception):
    """A card operation failed: the message names the card, the partition and the tool."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the card
    size: int  # bytes


def _run(argv: list, what: str, data: Optional[bytes] = None, timeout: float = 120) -> bytes:
    try:
        result = subprocess.run([str(a) for a in argv], input=data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CardError(f"{what}: {argv[0]} did not finish in {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise CardError(f"{what}: {shlex.join(map(str, argv))} exited {result.returncode}: "
                        f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


class Card:
    """One card image file. Partitions are numbered as Linux names them (1 = mmcblk0p1)."""

    BOOT = 1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CardError(f"{self.path}: no such card image")

    @classmethod
    def copy_of(cls, golden: Path, path: Path) -> Card:
        """A private copy (sparse: ~0.7 GB on disk for the 2 GiB card) for one board."""
        _run(["cp", "--sparse=always", golden, path], f"copy {golden}")
        return cls(path)

    def __repr__(self) -> str:
        return f"Card({str(self.path)!r})"

    # ----------------------------------------------------------------- partitions, raw bytes

    def partitions(self) -> Dict[int, Partition]:
        table = json.loads(_run(["sfdisk", "-J", self.path], f"{self.path}: partition table"))["partitiontable"]
        sector = table.get("sectorsize", 512)
        found = {}
        for entry in table["partitions"]:
            number = int(entry["node"].rsplit(str(self.path), 1)[-1])
            found[number] = Partition(number, entry["start"] * sector, entry["size"] * sector)
        return found

    def partition(self, number: int) -> Partition:
        try:
            return self.partitions()[number]
        except KeyError:
            raise CardError(f"{self.path}: no partition {number}") from None

    def read_bytes(self, number: int, offset: int = 0, size: Optional[int] = None) -> bytes:
        part = self.partition(number)
        size = part.size - offset if size is None else size
        with open(self.path, "rb") as f:
            f.seek(part.start + offset)
            return f.read(size)

    def sha256(self, number: int, size: Optional[int] = None) -> str:
        """sha256 of a partition's first `size` bytes (all of it by default), read in chunks."""
        part = self.partition(number)
        left = part.size if size is None else size
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            f.seek(part.start)
            while left > 0:
                block = f.read(min(_CHUNK, left))
                if not block:
                    raise CardError(f"{self.path}: partition {number} ends beyond the card")
                h.update(block)
                left -= len(block)
        return h.hexdigest()

    # ----------------------------------------------------------------- p1: FAT, mtools

    def _fat(self) -> str:
        return f"{self.path}@@{self.partition(self.BOOT).start}"

    def fat_list(self) -> Iterator[str]:
        out = _run(["mdir", "-b", "-i", self._fat(), "::/"], f"{self.path} p1: list").decode()
        for line in out.splitlines():
            yield line.split("/")[-1]

    def fat_read(self, name: str) -> bytes:
        return _run(["mtype", "-i", self._fat(), f"::/{name}"], f"{self.path} p1: read {name}")

    def fat_write(self, name: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            _run(["mcopy", "-o", "-i", self._fat(), f.name, f"::/{name}"], f"{self.path} p1: write {name}")

    def fat_delete(self, name: str) -> None:
        _run(["mdel", "-i", self._fat(), f"::/{name}"], f"{self.path} p1: delete {name}")

    # ----------------------------------------------------------------- ext4 (p2, p3, p4): debugfs

    def _ext4(self, number: int) -> str:
        return f"{self.path}?offset={self.partition(number).start}"

    def ext4_read(self, number: int, path: str) -> bytes:
        """A file's bytes; CardError if it does not exist (debugfs says so only on stderr)."""
        where = f"{self.path} p{number}: {path}"
        stat = _run(["debugfs", "-R", f"stat {path}", self._ext4(number)], where)
        if not stat.strip():
            raise CardError(f"{where}: no such file")
        return _run(["debugfs", "-R", f"cat {path}", self._ext4(number)], where)

    def ext4_exists(self, number: int, path: str) -> bool:
        return bool(_run(["debugfs", "-R", f"stat {path}", self._ext4(number)], f"{self.path} p{number}").strip())

    def ext4_write(self, number: int, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace one file (owner root), then read it back: debugfs exits 0 even when
        a command failed. Give the real path: debugfs does not follow a symlinked directory
        when it creates a file (/bin, /sbin and /lib are symlinks into /usr on Debian 12)."""
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            commands = f"rm {path}\nwrite {f.name} {path}\nsif {path} mode 0{0o100000 | mode:o}\n"
            _run(["debugfs", "-w", "-f", "-", self._ext4(number)], f"{self.path} p{number}: write {path}",
                 data=commands.encode())
        if self.ext4_read(number, path) != data:
            raise CardError(f"{self.path} p{number}: {path}: debugfs did not write it")

    def ext4_delete(self, number: int, path: str) -> None:
        """Remove a file or symlink (not a directory)."""
        _run(["debugfs", "-w", "-R", f"rm {path}", self._ext4(number)], f"{self.path} p{number}: rm {path}")
        if self.ext4_exists(number, path):
            raise CardError(f"{self.path} p{number}: {path}: debugfs did not remove it")

    def ext4_mkdir(self, number: int, path: str) -> None:
        """Create a directory (and its parents) if missing."""
        parts = [p for p in path.split("/") if p]
        for depth in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:depth])
            if not self.ext4_exists(number, sub):
                _run(["debugfs", "-w", "-R", f"mkdir {sub}", self._ext4(number)], f"{self.path} p{number}: mkdir {sub}")
        if not self.ext4_exists(number, path):
            raise CardError(f"{self.path} p{number}: {path}: debugfs did not create it")

    def ext4_copy_in(self, number: int, source: Path, path: str) -> None:
        """A large host file (a bundle) into an ext4 partition, streamed by debugfs."""
        _run(["debugfs", "-w", "-R", f"write {source} {path}", self._ext4(number)],
             f"{self.path} p{number}: write {path}", timeout=600)
        size = os.path.getsize(source)
        stat = _run(["debugfs", "-R", f"stat {path}", self._ext4(number)], f"{self.path} p{number}").decode()
        if f"Size: {size}" not in stat:
            raise CardError(f"{self.path} p{number}: {path}: expected {size} bytes after writing {source}")

    # ----------------------------------------------------------------- the U-Boot environment

    def env(self) -> Dict[str, str]:
        """uboot.env as Debian's fw_printenv reads it (empty if p1 has none)."""
        if ENV_NAME not in set(self.fat_list()):
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            config = self._env_copy(Path(tmp))
            out = _run(["fw_printenv", "-c", config], f"{self.path}: fw_printenv").decode()
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def set_env(self, values: Mapping[str, Optional[str]]) -> None:
        """Set (None or "": delete) variables with Debian's fw_setenv, in one write of uboot.env.
        (libubootenv 0.3.2's script lines are NAME=VALUE; NAME= deletes.)"""
        with tempfile.TemporaryDirectory() as tmp:
            config = self._env_copy(Path(tmp))
            script = Path(tmp) / "changes"
            script.write_text("".join(f"{name}={value or ''}\n" for name, value in values.items()))
            _run(["fw_setenv", "-c", config, "-s", script], f"{self.path}: fw_setenv")
            self.fat_write(ENV_NAME, (Path(tmp) / ENV_NAME).read_bytes())

    def _env_copy(self, tmp: Path) -> Path:
        (tmp / ENV_NAME).write_bytes(self.fat_read(ENV_NAME))
        config = tmp / "fw_env.config"
        config.write_text(f"{tmp / ENV_NAME} 0x0000 {ENV_SIZE:#x}\n")
        return config

    def prepare_for_emulator(self, extra_bootargs: str = "") -> None:
        """Put the emulator's kernel arguments into uboot.env (otad_extra_bootargs, which
        boot.scr appends to the command line). Only on a test copy: a real card has none."""
        self.set_env({"otad_extra_bootargs": " ".join(filter(None, (EMULATOR_BOOTARGS, extra_bootargs)))})

    def u_boot_bin(self, dest: Path) -> Path:
        """The card's own u-boot.bin (what the Pi firmware would start), for QEMU's -bios."""
        dest.write_bytes(self.fat_read("u-boot.bin"))
        return dest
