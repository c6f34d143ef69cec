"""What the update scenarios read and do on an emulated board, and how they check a slot's bytes.

In the guest (over the console): `otad status --json`, the trial variables as Debian's
fw_printenv prints them, `otad install` with its output kept out of the console (no progress
bar), in the foreground or in the background (for a power cut while it writes). On the host: bundles delivered on the card's data partition, a bundle's image extracted
with Debian's cpio and zstd (not otad's reader), and the comparison of a slot with that image.

A slot is compared with its image right after `otad install`, before anything mounts it: the
board keeps running, but the guest fsynced the slot, so the card file holds what otad wrote
(QEMU writes through to the host's page cache). otad grows the filesystem to the partition
(`properties.resize`), which rewrites some metadata blocks: the same e2fsck + resize2fs on a
host copy of the image says which, and every other block must be the image's.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional

from tests.pi.board import Board, BoardError
from tests.pi.card import Card

DATA = 4  # the card's data partition, /var/lib/otad in the guest
BUNDLE_DIR = "/test-bundles"  # on p4: /var/lib/otad/test-bundles in the guest
TRIAL_VARIABLES = ("rootpart", "upgrade_available", "bootcount", "bootlimit", "otad_prev")
BLOCK = 4096
INSTALL_TIMEOUT_S = 1200.0  # the 106 MiB bundle (477 MiB image) took 192 s on a loaded host


# ----------------------------------------------------------------------------- in the guest

def status(board: Board) -> Dict[str, Any]:
    report: Dict[str, Any] = json.loads(board.sh("otad status --json", timeout=300))
    return report


def slot_states(report: Dict[str, Any]) -> Dict[str, tuple]:
    """{slot name: (state, installed_version, install_state, booted, next_boot)}."""
    return {s["name"]: (s["state"], s["installed_version"], s["install_state"], s["booted"], s["next_boot"])
            for s in report["slots"]}


def printenv(board: Board) -> Dict[str, Optional[str]]:
    """The trial variables as Debian's fw_printenv prints them in the guest. None: not set or
    empty (libubootenv 0.3.2 prints `NAME=` and exits 0 for a variable that is not set)."""
    out = board.sh("fw_printenv " + " ".join(TRIAL_VARIABLES))
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: found.get(name) or None for name in TRIAL_VARIABLES}


def guest_bundle(name: str) -> str:
    return f"/var/lib/otad{BUNDLE_DIR}/{name}"


def install(board: Board, bundle: str, timeout: float = INSTALL_TIMEOUT_S) -> "tuple[str, int, float]":
    """`otad install BUNDLE` in the guest: its output (without the progress bar, which only a
    terminal gets), its exit status and the seconds it took."""
    started = time.monotonic()
    _, code = board.sh_status(f"otad install {bundle} >/run/otad-install.log 2>&1", timeout=timeout)
    return board.sh("cat /run/otad-install.log"), code, round(time.monotonic() - started, 1)


def start_install(board: Board, bundle: str) -> None:
    """`otad install BUNDLE` in the background (its pid in /run/otad-install.pid), for a test
    that cuts the power while it writes."""
    board.sh(f"otad install {bundle} >/run/otad-install.log 2>&1 & echo $! > /run/otad-install.pid")


def wait_log(board: Board, pattern: str, timeout: float = 600.0) -> float:
    """Until the background install's log has a line matching `pattern`; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if board.sh_status(f"grep -q -E '{pattern}' /run/otad-install.log")[1] == 0:
            return time.monotonic() - started
        time.sleep(2)
    raise BoardError(f"{board.name}: no {pattern!r} in the install's log within {timeout:.0f} s")


# ----------------------------------------------------------------------------- on the host

def deliver(card: Card, *bundles: Path) -> None:
    """Bundles onto the card's data partition (board off), where the guest finds them."""
    card.ext4_mkdir(DATA, BUNDLE_DIR)
    for bundle in bundles:
        card.ext4_copy_in(DATA, bundle, f"{BUNDLE_DIR}/{bundle.name}")


def _run(argv: list, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=600, **kwargs)


@dataclass(frozen=True)
class SlotImage:
    """A bundle's root filesystem image, and the 4 KiB blocks that growing it to a slot rewrites."""

    path: Path
    size: int
    slot_size: int
    regrown: FrozenSet[int]

    @classmethod
    def from_bundle(cls, bundle: Path, member: str, slot_size: int, work: Path) -> SlotImage:
        """Extract `member` (zstd) with Debian's cpio and zstd; grow a copy with e2fsck +
        resize2fs as otad does (ext4 handler, properties.resize) and note the blocks that changed."""
        work.mkdir(parents=True, exist_ok=True)
        image = work / f"{bundle.stem}.img"
        with open(bundle, "rb") as swu, open(image, "wb") as out:
            cpio = subprocess.Popen(["cpio", "-i", "--quiet", "--to-stdout", member], stdin=swu, stdout=subprocess.PIPE)
            subprocess.run(["zstd", "-d", "-q", "-c"], stdin=cpio.stdout, stdout=out, check=True, timeout=600)
            assert cpio.stdout is not None
            cpio.stdout.close()
            if cpio.wait(timeout=60) != 0:
                raise AssertionError(f"{bundle}: cpio could not extract {member}")
        grown = work / f"{bundle.stem}.grown"
        shutil.copy(image, grown)
        with open(grown, "r+b") as f:
            f.truncate(slot_size)
        subprocess.run(["e2fsck", "-f", "-p", str(grown)], check=False, capture_output=True, timeout=600)
        _run(["resize2fs", grown])
        size = image.stat().st_size
        regrown = frozenset(i for i, (a, b) in enumerate(zip(_blocks(image, size), _blocks(grown, size))) if a != b)
        grown.unlink()
        return cls(image, size, slot_size, regrown)


def _blocks(path: Path, size: int):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        for _ in range(0, size, BLOCK):
            yield f.read(BLOCK)


def compare_slot(card: Card, number: int, image: SlotImage) -> Dict[str, Any]:
    """The slot's first image.size bytes against the image, block by block. Returns what
    differs (`other`: blocks resize2fs does not rewrite, must be empty), how many of the
    regrown blocks differ, and the filesystem size in the slot's superblock."""
    part = card.partition(number)
    other, regrown = [], 0
    with open(card.path, "rb") as slot:
        slot.seek(part.start)
        for i, want in enumerate(_blocks(image.path, image.size)):
            got = slot.read(len(want))
            if got != want:
                if i in image.regrown:
                    regrown += 1
                else:
                    other.append(i)
        slot.seek(part.start + 1024)
        superblock = slot.read(1024)
    blocks_lo, log_block = struct.unpack_from("<I", superblock, 4)[0], struct.unpack_from("<I", superblock, 24)[0]
    return {"other": other[:20], "other_count": len(other), "regrown_differ": regrown,
            "regrown_blocks": len(image.regrown), "fs_bytes": blocks_lo * (1024 << log_block)}


def files_bundle(out: Path, version: str, description: str, files: Dict[str, "tuple[str, bytes]"],
                 keys: Dict[str, str], work: Path) -> Path:
    """A signed bundle of `files` entries (artifact name -> (path, bytes)) written into the
    inactive slot's ext4 (copy1: p2, copy2: p3), made with `otad mkswu` and the card's signer."""
    art = work / f"art-{out.stem}"
    art.mkdir(parents=True)
    entries = {}
    for copy, device in (("copy1", "/dev/mmcblk0p2"), ("copy2", "/dev/mmcblk0p3")):
        entries[copy] = ", ".join(f'{{ filename = "{name}"; path = "{path}"; device = "{device}"; '
                                  f'filesystem = "ext4"; }}' for name, (path, _) in files.items())
    for name, (_, data) in files.items():
        (art / name).write_bytes(data)
    # Under the board's name, as goosebit wants it to match the device's model (rpi0w).
    (art / "sw-description").write_text(
        f'software = {{\n  version = "{version}";\n  description = "{description}";\n'
        f'  rpi0w = {{\n    hardware-compatibility = [ "1.0" ];\n    stable = {{\n'
        + "".join(f"      {copy} = {{ files = ( {body} ); }};\n" for copy, body in entries.items())
        + "    };\n  };\n};\n")
    _run([sys.executable, "-m", "otad", "mkswu", "-s", art / "sw-description", "-a", art, "-o", out,
          "-k", f"CMS,{keys['signer_key']},{keys['signer_cert']}"])
    return out


def set_health_checks(conf: str, checks: "list[str]") -> str:
    """otad.conf text with its health.checks replaced (the card's file has one line of them)."""
    listed = ", ".join(json.dumps(c) for c in checks)
    text, count = re.subn(r"(?m)^(\s*)checks = \([^\n]*\);[^\n]*$", lambda m: f"{m.group(1)}checks = ( {listed} );",
                          conf)
    if count != 1:
        raise AssertionError("otad.conf: expected one health.checks line")
    return text
