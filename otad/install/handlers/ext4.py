"""The ext4 handler: a raw write of an ext2/3/4 image whose superblock is checked before the
first byte is written, grown to its partition afterwards (resize2fs) when asked to. Used for
`type = "ext4"`, and for `raw` with `properties.resize = "true"` (the installer maps it here;
SWUpdate ignores the property and installs the same bundle raw).
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from otad.errors import ImageError, ImageTooLarge
from otad.install.handlers.raw import RawHandler, RawTarget, read_back
from otad.install.pipeline import Sink
from otad.install.scripts import run_tool
from otad.superblock import EXT4_MAGIC, SUPERBLOCK_END, SUPERBLOCK_OFFSET, Superblock, parse_superblock
from otad.swu.manifest import Image

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 900.0  # e2fsck + resize2fs of a few GB on an SD card; the heartbeat runs meanwhile


def property_flag(image: Image, key: str) -> Optional[bool]:
    """A "true"/"false" property (SWUpdate's strtobool also takes yes/no/1/0); None if absent."""
    text = image.properties.get(key)
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("true", "yes", "1", "y"):
        return True
    if value in ("false", "no", "0", "n", ""):
        return False
    raise ImageError(f"properties.{key}: expected \"true\" or \"false\", got {text!r}", image.filename)


@dataclass(frozen=True)
class Ext4Target(RawTarget):
    image: str = ""
    resize: Optional[bool] = None  # from properties.resize; None: install.ext4_resize decides


class Ext4Sink:
    """Holds back the first 2 KiB until the superblock is checked, then passes bytes through.
    A wrong or oversized filesystem is therefore refused before the first byte is written."""

    def __init__(self, inner: Sink, target: Ext4Target) -> None:
        self._inner = inner
        self._target = target
        self._head = b""
        self.checked: Optional[Superblock] = None
        self.capacity = inner.capacity

    def write(self, data: bytes) -> None:
        if self.checked is None:
            self._head += data
            if len(self._head) < SUPERBLOCK_END:
                return
            self.checked = self._check(self._head)
            data, self._head = self._head, b""
        self._inner.write(data)

    def sync(self) -> None:
        self._inner.sync()  # type: ignore[attr-defined]

    def finish(self) -> Superblock:
        if self.checked is None:
            self._check(self._head)
        assert self.checked is not None
        return self.checked

    def _check(self, head: bytes) -> Superblock:
        sb = parse_superblock(head)
        if sb is None:
            raise ImageError(f"not an ext2/3/4 filesystem: no superblock magic 0x{EXT4_MAGIC:X} at byte "
                             f"{SUPERBLOCK_OFFSET + 0x38}", self._target.image)
        if sb.size > self._target.capacity:
            raise ImageTooLarge(f"ext4 filesystem of {sb.size} bytes ({sb.blocks} blocks of {sb.block_size}) does "
                                f"not fit the target's {self._target.capacity} bytes ({self._target.description})",
                                self._target.image)
        self.checked = sb
        return sb


class Ext4Handler(RawHandler):
    def plan(self, entry: Image) -> Ext4Target:
        raw = super().plan(entry)
        resize = property_flag(entry, "resize")
        if resize and raw.offset:
            raise ImageError("properties.resize: the filesystem must start at the beginning of its target "
                             f"(offset is {raw.offset})", entry.filename)
        return Ext4Target(raw.path, raw.offset, raw.capacity, raw.is_block_device, entry.filename, resize)

    def _resize_wanted(self, target: Ext4Target) -> bool:
        if target.resize is not None:
            return target.resize
        return self.options is not None and self.options.ext4_resize and target.offset == 0

    @contextmanager
    def open(self, target: RawTarget, *, dry_run: bool, start: int = 0) -> Iterator[Ext4Sink]:
        assert isinstance(target, Ext4Target), "the ext4 handler opens only what it planned"
        with super().open(target, dry_run=dry_run, start=start) as inner:
            sink = Ext4Sink(inner, target)
            if start:  # resumed: the superblock was checked and written before
                sink.checked = sink._check(read_back(target, SUPERBLOCK_END, SUPERBLOCK_END))
            yield sink
            superblock = sink.finish()
        log.info("ext4: %s holds a filesystem of %d blocks of %d bytes", target.description, superblock.blocks,
                 superblock.block_size)
        if not dry_run and self._resize_wanted(target) and superblock.size < target.capacity:
            self._grow(target)

    def _grow(self, target: Ext4Target) -> None:
        """e2fsck -f first: resize2fs refuses a filesystem that was not checked since its last mount."""
        heartbeat = self.options.heartbeat if self.options is not None else None
        for tool in ("e2fsck", "resize2fs"):
            if shutil.which(tool) is None:
                raise ImageError(f"properties.resize: {tool} not found (install e2fsprogs)", target.image)
        # e2fsck exit 1: errors corrected, the filesystem is fine now (2: reboot, 4+: not fixed).
        run_tool(["e2fsck", "-f", "-p", target.path], target.path, timeout_s=TOOL_TIMEOUT_S, heartbeat=heartbeat,
                 ok_status=(0, 1))
        run_tool(["resize2fs", target.path], target.path, timeout_s=TOOL_TIMEOUT_S, heartbeat=heartbeat)
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            grown = parse_superblock(os.pread(fd, SUPERBLOCK_END, 0))
        finally:
            os.close(fd)
        log.info("ext4: %s grown to %d bytes", target.description, grown.size if grown else -1)

