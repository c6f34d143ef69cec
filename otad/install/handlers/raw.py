"""The raw handler: write a decoded image to a block device or a regular file at an offset.

A regular file stands for a partition of its current size (that is how tests and the
simulator make slots); it is never created, truncated or grown. Output is capped at the
target's end and fsynced before the handler reports success.
"""

from __future__ import annotations

import logging
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from otad.errors import InstallError
from otad.install.pipeline import Sink
from otad.swu.manifest import Image

if TYPE_CHECKING:  # the registry imports this module; options are only annotated here
    from otad.install.handlers import HandlerOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawTarget:
    path: str
    offset: int
    capacity: int  # bytes from offset to the end of the device or file
    is_block_device: bool

    @property
    def description(self) -> str:
        return f"{self.path}@{self.offset}" if self.offset else self.path


def resolve_device(device: str, device_dir: str = "/dev") -> str:
    """Map a sw-description `device` to a path: `mmcblk0p2` and `/dev/mmcblk0p2` both land in
    `device_dir` (so a test or the simulator can stand files in for /dev)."""
    if device.startswith("/dev/"):
        return os.path.join(device_dir, device[len("/dev/"):])
    if device.startswith("/"):
        return device
    return os.path.join(device_dir, device)


def _size_of(path: str) -> tuple[int, bool]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InstallError(f"target does not exist or cannot be read: {exc.strerror}", path) from exc
    if stat.S_ISREG(st.st_mode):
        return st.st_size, False
    if not stat.S_ISBLK(st.st_mode):
        raise InstallError("target is neither a block device nor a regular file", path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END), True
        finally:
            os.close(fd)
    except OSError as exc:
        raise InstallError(f"cannot read the size of the block device: {exc.strerror}", path) from exc


# Flush dirty pages every so often: on a 512 MB board hundreds of MB of page cache would
# otherwise pile up, and the final fsync of an SD card could outlast the 15 s watchdog.
SYNC_EVERY_BYTES = 32 << 20
# Between those, start the write-back of each few MiB as soon as they are written, without
# waiting for it: the card writes while the next bytes are decoded, as the kernel's flusher does
# for swupdate, instead of otad sitting in fdatasync while the card writes 32 MiB.
WRITEBACK_EVERY_BYTES = 4 << 20


class RawSink:
    """Writes sequentially from the target's offset; `capacity` stops an image at its end."""

    def __init__(self, fd: int, capacity: int, sync_every: int = SYNC_EVERY_BYTES,
                 writeback_every: int = WRITEBACK_EVERY_BYTES) -> None:
        self._fd = fd
        self.capacity: Optional[int] = capacity
        self.written = 0  # by this sink (a resumed one starts past the earlier bytes)
        self.skipped = 0  # bytes moved past without writing: the target held them already
        self._sync_every = sync_every
        self._unsynced = 0
        self._writeback_every = writeback_every
        self._position = os.lseek(fd, 0, os.SEEK_CUR)
        self._dirty_from = self._position  # write-back not started from here on

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
            self.written += done
            self._unsynced += done
            self._position += done
        if self._unsynced >= self._sync_every:
            self.sync()
        elif self._position - self._dirty_from >= self._writeback_every:
            self._start_writeback()

    def skip(self, n: int) -> None:
        """Move past `n` bytes the target already holds (a delta's chunk in place): not written."""
        if self._position > self._dirty_from:
            self._start_writeback()
        self._position = os.lseek(self._fd, n, os.SEEK_CUR)
        self._dirty_from = self._position
        self.skipped += n

    def sync(self) -> None:
        os.fdatasync(self._fd)
        self._unsynced = 0
        self._dirty_from = self._position

    def _start_writeback(self) -> None:
        """Linux starts writing back dirty pages of the range on POSIX_FADV_DONTNEED and returns;
        the pages stay cached until written (only clean ones are dropped)."""
        os.posix_fadvise(self._fd, self._dirty_from, self._position - self._dirty_from, os.POSIX_FADV_DONTNEED)
        self._dirty_from = self._position


class CountingSink:
    """A dry run's sink: checks the capacity like the real one, writes nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity: Optional[int] = capacity
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def skip(self, n: int) -> None:
        pass

    def sync(self) -> None:
        pass


def _clear_force_ro(path: str) -> None:
    """The kernel marks eMMC boot areas and some SD partitions read-only; SWUpdate clears it too."""
    flag = f"/sys/class/block/{os.path.basename(os.path.realpath(path))}/force_ro"
    try:
        with open(flag, "r+") as f:
            if f.read().strip() == "1":
                f.seek(0)
                f.write("0")
    except OSError:
        pass


class RawHandler:
    def __init__(self, device_dir: str = "/dev", options: Optional[HandlerOptions] = None) -> None:
        self.device_dir = device_dir
        self.options = options

    def plan(self, entry: Image) -> RawTarget:
        if not entry.device:
            raise InstallError("raw image has no device", f"image {entry.filename!r}")
        path = resolve_device(entry.device, self.device_dir)
        size, is_block = _size_of(path)
        if entry.offset > size:
            raise InstallError(f"offset {entry.offset} lies beyond the end of the target ({size} bytes)", path)
        if not os.access(path, os.W_OK):
            raise InstallError("target is not writable", path)
        return RawTarget(path, entry.offset, size - entry.offset, is_block)

    @contextmanager
    def open(self, target: RawTarget, *, dry_run: bool, start: int = 0) -> Iterator[Sink]:
        """A sink writing from the target's offset, or `start` bytes past it (a resumed install)."""
        if dry_run:
            yield CountingSink(target.capacity)
            return
        if target.is_block_device:
            _clear_force_ro(target.path)
        try:
            fd = os.open(target.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InstallError(f"cannot open for writing: {exc.strerror}", target.path) from exc
        try:
            os.lseek(fd, target.offset + start, os.SEEK_SET)
            sink = RawSink(fd, target.capacity)
            yield sink
            os.fsync(fd)
            log.debug("raw: %d bytes written and synced to %s", sink.written, target.description)
        except OSError as exc:
            raise InstallError(f"write failed: {exc.strerror}", target.description) from exc
        finally:
            os.close(fd)


def read_back(target: RawTarget, end: int, size: int) -> bytes:
    """The `size` bytes written to `target` before byte `end` (counted from its offset)."""
    try:
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InstallError(f"cannot open for reading: {exc.strerror}", target.path) from exc
    try:
        return os.pread(fd, size, target.offset + end - size)
    except OSError as exc:
        raise InstallError(f"read failed: {exc.strerror}", target.description) from exc
    finally:
        os.close(fd)
