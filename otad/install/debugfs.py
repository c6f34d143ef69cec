"""Writing one file into an unmounted ext2/3/4 filesystem without root: `debugfs -w` commands.

The rawfile handler's route when it cannot mount the device; what it supports and what it
cannot do is in `Debugfs`. Whether to take this route is otad.install.handlers.files' decision.
"""

from __future__ import annotations

import posixpath
import stat
from typing import List, Optional, Tuple

from otad.errors import InstallError
from otad.install.filetarget import NEW_FILE_MODE, FileTarget, file_error
from otad.install.scripts import run_tool
from otad.process import Heartbeat

TOOL_TIMEOUT_S = 300.0


class Debugfs:
    """rawfile on an unmounted ext2/3/4 without root: `debugfs -w` commands, one per run.
    debugfs exits 0 even when a command fails, so any stderr line but its banner is an error.
    Supported: mkdir (create-destination), rm of an existing file, write, sif (mode, owner).
    Not atomic: the filesystem is offline while it is written."""

    def __init__(self, target: FileTarget, heartbeat: Optional[Heartbeat]) -> None:
        assert target.device is not None
        self.target = target
        self.device = target.device
        self.heartbeat = heartbeat
        if any(c in target.dest for c in '"\\') or any(c.isspace() for c in target.dest):
            raise file_error(target.entry, f"path {target.dest!r}: debugfs cannot write names with quotes, "
                                           "backslashes or blanks")

    def run(self, command: str, *, quiet: bool = False) -> Tuple[str, List[str]]:
        result = run_tool(["debugfs", "-w", "-R", command, self.device], self.target.description,
                          timeout_s=TOOL_TIMEOUT_S, heartbeat=self.heartbeat)
        errors = [line for line in result.stderr.decode("utf-8", "replace").splitlines()
                  if line.strip() and not line.startswith("debugfs ")]
        if errors and not quiet:
            raise InstallError(f"debugfs {command.split()[0]} failed: {errors[-1].strip()}", self.target.description)
        return result.stdout.decode("utf-8", "replace"), errors

    def stat(self, path: str) -> Optional[Tuple[str, int, int, int]]:
        """(type, mode, uid, gid) of `path`, None if it does not exist."""
        out, errors = self.run(f'stat "{path}"', quiet=True)
        if errors or "Type:" not in out:
            return None
        words = out.replace(":", " ").split()
        kind = words[words.index("Type") + 1]
        mode = int(words[words.index("Mode") + 1], 8)
        uid, gid = int(words[words.index("User") + 1]), int(words[words.index("Group") + 1])
        return kind, mode, uid, gid

    def write_file(self, spooled: str) -> None:
        dest = self.target.dest
        parent = posixpath.dirname(dest)
        if self.target.create_destination:
            for depth in range(2, len(parent.split("/")) + 1):
                directory = "/".join(parent.split("/")[:depth])
                if self.stat(directory) is None:
                    self.run(f'mkdir "{directory}"')
        found = self.stat(parent)
        if found is None or found[0] != "directory":
            raise file_error(self.target.entry, f"directory {parent} does not exist in {self.device} (set "
                                                "properties.create-destination = \"true\" to create it)")
        old = self.stat(dest)
        if old is not None and old[0] != "regular":
            raise file_error(self.target.entry, f"path {dest} exists in {self.device} and is a {old[0]}")
        if old is not None:
            self.run(f'rm "{dest}"')
        self.run(f'write "{spooled}" "{dest}"')
        mode, uid, gid = (old[1], old[2], old[3]) if old is not None and not self.target.atomic else \
            (NEW_FILE_MODE, 0, 0)
        self.run(f'sif "{dest}" mode 0{stat.S_IFREG | mode:o}')
        self.run(f'sif "{dest}" uid {uid}')
        self.run(f'sif "{dest}" gid {gid}')
