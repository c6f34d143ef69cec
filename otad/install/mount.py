"""Filesystems the `files` handlers write into: finding where a device is already mounted,
mounting it on a private temporary directory otherwise, and resolving a path inside such a
root the way the booted system will (symlinks followed, but never out of the root).
What to write there is the handlers' business; this module only provides the place.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from typing import Iterator, List, Optional

from otad.errors import InstallError
from otad.install.scripts import run_tool
from otad.process import Heartbeat
from otad.smallfile import peek_text

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 120.0
MAX_SYMLINKS = 40  # as the kernel's path walk
MOUNT_OPTIONS = "nosuid,nodev,noexec"  # otad writes files there; nothing there is run


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _device_numbers(device: str) -> Optional[str]:
    """`major:minor` of the block device holding `device`'s filesystem when mounted: the device
    itself, or for a regular file the loop device backed by it. None when there is none."""
    st = os.stat(device)
    if stat.S_ISBLK(st.st_mode):
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    real = os.path.realpath(device)
    try:
        loops = os.listdir("/sys/block")
    except OSError:
        return None
    for name in loops:
        if not name.startswith("loop"):
            continue
        backing = peek_text(f"/sys/block/{name}/loop/backing_file")
        if backing is not None and backing.strip() == real:
            numbers = peek_text(f"/sys/block/{name}/dev")
            if numbers is not None:
                return numbers.strip()
    return None


def mounted_at(device: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """Where `device` (a block device, or a regular file through a loop device) is mounted
    read-write now; None when it is not. A read-only mount counts as not usable: InstallError."""
    numbers = _device_numbers(device)
    if numbers is None:
        return None
    table = peek_text(mountinfo)
    if table is None:
        return None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[2] != numbers or fields[3] != "/":
            continue
        point = _unescape(fields[4])
        if "ro" in fields[5].split(","):
            raise InstallError(f"is mounted read-only at {point}", device)
        return point
    return None


@contextmanager
def private_mount(device: str, fstype: str, work_dir: str, *, heartbeat: Optional[Heartbeat] = None,
                  mountinfo: str = "/proc/self/mountinfo") -> Iterator[str]:
    """The root of `device`'s filesystem: its current mount point if it is mounted, else a
    fresh 0700 directory under `work_dir` where it is mounted (`-o loop` for a regular file)
    for the duration; synced and unmounted in a finally. Mounting a file that is mounted
    already would give two independent ext4 instances on one image, hence the lookup."""
    existing = mounted_at(device, mountinfo)
    if existing is not None:
        log.info("%s is mounted at %s: writing there", device, existing)
        yield existing
        os.sync()
        return
    try:
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        point = tempfile.mkdtemp(prefix="mnt-", dir=work_dir)
    except OSError as exc:
        raise InstallError(f"cannot create a mount point: {exc.strerror}", work_dir) from exc
    try:
        options = MOUNT_OPTIONS + ("" if stat.S_ISBLK(os.stat(device).st_mode) else ",loop")
        run_tool(["mount", "-t", fstype, "-o", options, device, point], device, timeout_s=MOUNT_TIMEOUT_S,
                 heartbeat=heartbeat)
        try:
            yield point
        finally:
            _unmount(point, device, heartbeat)
    finally:
        try:
            os.rmdir(point)
        except OSError:
            log.warning("mount point %s left behind (still mounted?)", point)


def _unmount(point: str, device: str, heartbeat: Optional[Heartbeat]) -> None:
    try:
        run_tool(["umount", point], device, timeout_s=MOUNT_TIMEOUT_S, heartbeat=heartbeat)
    except InstallError:
        # Detach it at least, so the next attempt does not find a stale private mount; the
        # kernel finishes the unmount (and its writeback) once nothing uses it.
        run_tool(["umount", "-l", point], device, timeout_s=MOUNT_TIMEOUT_S, ok_status=(0, 1, 32))
        raise


def can_mount(device: str) -> bool:
    """Whether mounting `device` can work here: root, mount(8), and for a regular file the
    loop driver (a container often has none)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return stat.S_ISBLK(os.stat(device).st_mode) or os.path.exists("/dev/loop-control")


def resolve_in_root(root: str, path: str) -> str:
    """`path` (absolute or not) as the system whose root is `root` sees it: each symlink is
    followed, an absolute target starts again at `root`, and `..` never climbs above `root`
    (like openat2's RESOLVE_IN_ROOT). Components that do not exist are kept as written.
    Returns a path under `root`."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: List[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InstallError(f"too many levels of symbolic links in {path!r}", root)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)
