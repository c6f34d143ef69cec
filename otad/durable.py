"""Durable writes: the one way otad replaces a file so that a power cut leaves old or new.

`atomic_write` writes a temp file in the same directory, fsyncs it, renames it over the
target and fsyncs the directory (as borg's SaveFile does). `fsync_dir` is exposed for callers
that rename by themselves. Nothing here knows what the bytes mean.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Union

from otad import crashpoint

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(directory: PathLike) -> None:
    """Make a rename or create inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, data: bytes, mode: Optional[int] = None, *, sync: bool = True) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync dir.

    `mode` defaults to the mode of the file being replaced (0644 for a new one), so a
    replaced file keeps its permissions. On any error the temp file is removed and the
    old file is untouched. `sync=False` skips both fsyncs: readers still see the old or the
    new file, never half of it, but a power cut may lose it (for files that mean nothing
    after a reboot, rewritten often).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            crashpoint.reached("durable.temp_created")
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if sync:
                os.fsync(f.fileno())
        crashpoint.reached("durable.temp_synced")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    crashpoint.reached("durable.renamed")
    if sync:
        fsync_dir(directory)
    crashpoint.reached("durable.dir_synced")
