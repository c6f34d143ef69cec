"""The ext2/3/4 superblock: a filesystem's size from the first 2 KiB of its image or device.

Owns reading the few fields otad needs (magic, block count, block size), no mount. The ext4
handler checks an image against its target with it; a delta install reads how much of the
running slot holds the filesystem (SWUpdate's `source-size = "detect"` mounts it instead).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_END = 2048  # the first 2 KiB of the image hold everything checked here
EXT4_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80


@dataclass(frozen=True)
class Superblock:
    blocks: int
    block_size: int

    @property
    def size(self) -> int:
        return self.blocks * self.block_size


def parse_superblock(head: bytes) -> Optional[Superblock]:
    """The filesystem size from the first 2 KiB of an image; None without ext2/3/4 magic."""
    sb = head[SUPERBLOCK_OFFSET:SUPERBLOCK_END]
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != EXT4_MAGIC:
        return None
    blocks_lo, log_block = struct.unpack_from("<I", sb, 0x04)[0], struct.unpack_from("<I", sb, 0x18)[0]
    incompat = struct.unpack_from("<I", sb, 0x60)[0]
    blocks_hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    if log_block > 6:  # 64 KiB is ext4's largest block
        return None
    return Superblock(blocks_hi << 32 | blocks_lo, 1024 << log_block)
