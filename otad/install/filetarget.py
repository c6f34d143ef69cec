"""A `files` entry's target: where it goes (`FileTarget`, planned by a files handler before
anything is written), the modes SWUpdate gives the files and directories it creates, and the
error that names the entry. Read by the handlers (install/handlers/files.py) and by the two
ways they write: the tar extractor (install/tar.py) and the debugfs route (install/debugfs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from otad.errors import ImageError

NEW_FILE_MODE = 0o600  # SWUpdate's openfileoutput(): O_CREAT with S_IRUSR | S_IWUSR
DIR_MODE = 0o755  # SWUpdate's mkpath() for create-destination


@dataclass(frozen=True)
class FileTarget:
    """Where one `files` entry goes, decided before anything is written."""

    entry: str  # the cpio member, for messages
    kind: str  # "rawfile" or "archive"
    path: str  # what the install record names: the device if there is one, else `dest`
    dest: str  # absolute; inside the device's filesystem when there is a device
    device: Optional[str]
    filesystem: Optional[str]
    via: str  # "direct" (the running system's filesystem), "mount" or "debugfs"
    atomic: bool
    create_destination: bool
    preserve_attributes: bool
    streamed: bool  # installed-directly: written as it arrives, before the sha256 is known
    capacity: Optional[int] = None

    @property
    def description(self) -> str:
        return f"{self.device}:{self.dest}" if self.device else self.dest


def file_error(entry: str, what: str) -> ImageError:
    return ImageError(what, entry, where=f"file {entry!r}")
