"""Durable writes: the one way otad replaces a file so that a power cut leaves old or new.

`replacing` streams the new content into a temp file in the same directory, fsyncs it, renames
it over the target and fsyncs the directory (as borg's SaveFile does); `atomic_write` does that
with bytes in memory. `fsync_dir` is exposed for callers that create or rename by themselves.
Nothing here knows what the bytes mean.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator, Optional, Union

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
    """Replace `path` with `data`: temp file, fsync, rename, fsync dir (see `replacing`)."""
    with replacing(path, mode, sync=sync) as f:
        f.write(data)


@contextlib.contextmanager
def replacing(path: PathLike, mode: Optional[int] = None, *, sync: bool = True,
              temp: Optional[str] = None) -> Iterator[BinaryIO]:
    """The new content of `path`, written in chunks to the file this yields; when the `with`
    ends without an exception: chmod, fsync, rename over `path`, fsync the directory.

    The temp file sits in the same directory: `temp` names it (SWUpdate's atomic-install writes
    `path.tmp`), else a fresh ``.NAME.XXXXXX.tmp``. `mode` defaults to the mode of the file
    being replaced (0644 for a new one), so a replaced file keeps its permissions; the caller
    may fchown the yielded file's fd before the `with` ends. On any error (the caller's too)
    the temp file is removed and `path` is untouched. `sync=False` skips both fsyncs: readers
    still see the old or the new file, never half of it, but a power cut may lose it (for files
    that mean nothing after a reboot, rewritten often).
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    if temp is None:
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    else:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            crashpoint.reached("durable.temp_created")
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            if sync:
                os.fsync(f.fileno())
        crashpoint.reached("durable.temp_synced")
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    crashpoint.reached("durable.renamed")
    if sync:
        fsync_dir(directory)
    crashpoint.reached("durable.dir_synced")
