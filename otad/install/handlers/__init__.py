"""The handler registry: explicit dicts (images, files), never filled by importing, of which class
installs which sw-description `type`; a handler plans an entry before anything is written (types
missing here are refused then) and opens a `Sink` for it. Handlers import otad.swu and install's
lower modules (pipeline, scripts, mount, tar, debugfs, filetarget); never the installer, boot/, hawkbit/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Optional, Protocol, Type

from otad.install.filetarget import FileTarget
from otad.install.handlers.ext4 import Ext4Handler
from otad.install.handlers.files import ArchiveHandler, RawFileHandler
from otad.install.handlers.raw import RawHandler
from otad.install.pipeline import Sink
from otad.swu.manifest import File, Image


@dataclass(frozen=True)
class HandlerOptions:
    """What every handler is built with besides the device directory (from InstallRequest)."""

    work_dir: Optional[str] = None  # private temp files (spooled members, mount points): on disk
    ext4_resize: bool = False  # grow ext4 images without a `resize` property (install.ext4_resize)
    files_via: str = "auto"  # files on a device: "mount", "debugfs" (rawfile on ext2/3/4) or "auto"
    mountinfo: str = "/proc/self/mountinfo"
    zstd_max_window: int = 1 << 27
    heartbeat: Optional[Callable[[], None]] = field(default=None, compare=False)  # feeds the watchdog


class Target(Protocol):
    description: str
    capacity: int


class Handler(Protocol):
    def __init__(self, device_dir: str, options: Optional[HandlerOptions] = None) -> None: ...

    def plan(self, entry: Image) -> Target: ...

    def open(self, target: Target, *, dry_run: bool) -> ContextManager[Sink]: ...


class FileHandler(Protocol):
    def __init__(self, device_dir: str, options: Optional[HandlerOptions] = None) -> None: ...

    def plan(self, entry: File) -> FileTarget: ...

    def open(self, target: FileTarget, *, dry_run: bool) -> ContextManager[Sink]: ...


# `images` entries. ext4: a raw write plus superblock check and optional resize2fs; a `raw`
# entry with properties.resize = "true" is installed by it too (plan.plan_entries).
HANDLERS: Dict[str, Type[RawHandler]] = {
    "raw": RawHandler,
    "ext4": Ext4Handler,
}

# `files` entries (SWUpdate's FILE_HANDLER types); `tar` is SWUpdate's alias of `archive`.
FILE_HANDLERS: Dict[str, Type[FileHandler]] = {
    "rawfile": RawFileHandler,
    "archive": ArchiveHandler,
    "tar": ArchiveHandler,
}

# `scripts` entries are run by otad.install.scripts (SCRIPT_TYPES there); `lua` is refused.
