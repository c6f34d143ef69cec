"""The `files` handlers: `rawfile` writes one file at `path`, `archive` (alias `tar`) unpacks a
tar stream under `path`. With `device` + `filesystem`, `path` lies inside that filesystem,
mounted on a private directory (or used where it is mounted already); without root, a rawfile
on ext2/3/4 is written with `debugfs -w` instead (otad.install.debugfs). Unless the entry says
`installed-directly`, nothing becomes visible before its sha256 passed. The tar stream itself is
unpacked and checked by otad.install.tar.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, ContextManager, Iterator, Optional, Tuple

from otad.durable import fsync_dir, replacing
from otad.errors import InstallError
from otad.install.debugfs import Debugfs
from otad.install.filetarget import DIR_MODE, NEW_FILE_MODE, FileTarget, file_error
from otad.install.handlers.raw import resolve_device
from otad.install.pipeline import FdSink, Sink
from otad.install.tar import Extractor, StreamingSink
from otad.process import Heartbeat
from otad.swu.manifest import File

if TYPE_CHECKING:  # the registry imports this module; options are only annotated here
    from otad.install.handlers import HandlerOptions

# FileTarget moved to otad.install.filetarget; handed on for the installer, which imports it from here.
__all__ = ["ArchiveHandler", "FileTarget", "FilesHandler", "RawFileHandler"]

log = logging.getLogger(__name__)

DEBUGFS_FS = ("ext2", "ext3", "ext4")
VIA = ("auto", "mount", "debugfs")


def _flag(entry: File, key: str) -> bool:
    text = entry.properties.get(key)
    return text is not None and text.strip().lower() in ("true", "yes", "1", "y")


def _check_path(entry: File) -> str:
    path = entry.path
    if not path:
        raise file_error(entry.filename, "no path: expected path = \"/absolute/destination\"")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise file_error(entry.filename, f"path: control character in {path!r}")
    if ".." in path.split("/"):
        raise file_error(entry.filename, f"path: expected no '..' component, got {path!r}")
    if not entry.device and not path.startswith("/"):
        raise file_error(entry.filename, f"path: expected an absolute path (no device given), got {path!r}")
    return posixpath.normpath("/" + path.lstrip("/"))  # normpath keeps a leading "//"


class FilesHandler:
    """What rawfile and archive share: planning the destination and finding its filesystem."""

    kind = ""

    def __init__(self, device_dir: str = "/dev", options: Optional[HandlerOptions] = None) -> None:
        self.device_dir = device_dir
        self.options = options

    @property
    def _heartbeat(self) -> Optional[Heartbeat]:
        return self.options.heartbeat if self.options is not None else None

    def _work_dir(self) -> str:
        if self.options is None or self.options.work_dir is None:
            raise InstallError("no work directory for temporary files (system.state_dir)")
        return self.options.work_dir

    def plan(self, entry: File) -> FileTarget:
        dest = _check_path(entry)
        if self.kind == "rawfile" and dest == "/":
            raise file_error(entry.filename, "path: expected a file name, got '/'")
        if bool(entry.device) != bool(entry.filesystem):
            given, missing = ("device", "filesystem") if entry.device else ("filesystem", "device")
            raise file_error(entry.filename, f"{given} given without {missing}: expected both (mount {missing} "
                                             "and write inside it) or neither (write to the running system)")
        device = resolve_device(entry.device, self.device_dir) if entry.device else None
        via = "direct" if device is None else self._via(entry, device)
        target = FileTarget(entry.filename, self.kind, device or dest, dest, device, entry.filesystem, via,
                            _flag(entry, "atomic-install"), _flag(entry, "create-destination"),
                            entry.preserve_attributes, entry.extra.get("installed-directly") is True)
        if via == "direct":
            self._check_direct(target)
        if via != "direct" or (self.kind == "archive" and not target.streamed):
            self._work_dir()  # mount points and spooled members need it: fail now, not half-way
        return target

    def _via(self, entry: File, device: str) -> str:
        try:
            st = os.stat(device)
        except OSError as exc:
            raise file_error(entry.filename, f"device {device}: {exc.strerror}") from exc
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise file_error(entry.filename, f"device {device}: neither a block device nor a regular file")
        from otad.install.mount import can_mount, mounted_at  # lazy: only entries with a device mount

        wanted = self.options.files_via if self.options is not None else "auto"
        mounted = mounted_at(device, self.options.mountinfo if self.options else "/proc/self/mountinfo")
        if mounted is not None and wanted != "debugfs":
            return "mount"
        if wanted == "mount" or (wanted == "auto" and can_mount(device)):
            return "mount"
        ext = entry.filesystem in DEBUGFS_FS
        if mounted is not None:
            raise file_error(entry.filename, f"device {device} is mounted at {mounted}: debugfs must not write to a "
                                             "mounted filesystem")
        if not ext or self.kind != "rawfile":
            raise file_error(entry.filename, f"cannot mount {device} (not root, or install.files_via = \"debugfs\") "
                                             f"and without mounting otad writes only rawfile entries to ext2/3/4 "
                                             f"(got {self.kind} on {entry.filesystem})")
        if shutil.which("debugfs") is None:
            raise file_error(entry.filename, "debugfs not found (install e2fsprogs)")
        return "debugfs"

    def _check_direct(self, target: FileTarget) -> None:
        raise NotImplementedError

    @contextmanager
    def _root(self, target: FileTarget) -> Iterator[str]:
        """The directory that stands for the root of the target's filesystem."""
        if target.via == "direct":
            yield "/"
            return
        from otad.install.mount import private_mount

        assert target.device is not None and target.filesystem is not None
        mountinfo = self.options.mountinfo if self.options is not None else "/proc/self/mountinfo"
        with private_mount(target.device, target.filesystem, self._work_dir(), heartbeat=self._heartbeat,
                           mountinfo=mountinfo) as root:
            yield root

    def _place(self, root: str, target: FileTarget) -> str:
        """`dest` on this machine: inside a mounted filesystem symlinks resolve within it."""
        if root == "/":
            return target.dest
        from otad.install.mount import resolve_in_root

        return resolve_in_root(root, target.dest)


class _NullSink:
    def __init__(self) -> None:
        self.capacity: Optional[int] = None

    def write(self, data: bytes) -> None:
        pass


def _free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@contextmanager
def _spool(work_dir: str, entry: str) -> Iterator[Tuple[FdSink, str]]:
    """A private temporary file in `work_dir` (on disk) holding a member until it is verified.
    Removed on failure; on success the caller removes it after use."""
    try:
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="spool-", dir=work_dir)
    except OSError as exc:
        raise InstallError(f"cannot create a spool file: {exc.strerror}", work_dir) from exc
    ok = False
    try:
        yield FdSink(fd, _free_bytes(work_dir)), path
        ok = True
    finally:
        os.close(fd)
        if not ok:
            os.unlink(path)


class RawFileHandler(FilesHandler):
    """One file at `path`. New files get mode 0600 (as SWUpdate); `create-destination` makes the
    parent directories (0755); `atomic-install` writes `path.tmp`, fsyncs and renames. Without
    atomic-install otad still writes a temp file and renames it after the sha256 check, keeping
    an existing file's mode and owner, which is what SWUpdate's in-place write keeps."""

    kind = "rawfile"

    def _check_direct(self, target: FileTarget) -> None:
        parent = os.path.dirname(target.dest)
        if os.path.isdir(target.dest):
            raise file_error(target.entry, f"path {target.dest} is a directory")
        if os.path.lexists(target.dest) and not os.path.isfile(target.dest):
            raise file_error(target.entry, f"path {target.dest} exists and is not a regular file")
        if not target.create_destination and not os.path.isdir(parent):
            raise file_error(target.entry, f"directory {parent} does not exist (set properties.create-destination "
                                           "= \"true\" to create it)")

    @contextmanager
    def open(self, target: FileTarget, *, dry_run: bool) -> Iterator[Sink]:
        if dry_run:
            yield _NullSink()
        elif target.via == "debugfs":
            with _spool(self._work_dir(), target.entry) as (sink, spooled):
                yield sink
            try:
                Debugfs(target, self._heartbeat).write_file(spooled)
            finally:
                os.unlink(spooled)
        else:
            with self._root(target) as root:
                with _write_file(self._place(root, target), target) as sink:
                    yield sink
        log.info("file %s installed at %s", target.entry, target.description)


@contextmanager
def _write_file(dest: str, target: FileTarget) -> Iterator[Sink]:
    """SWUpdate's semantics (new file 0600, an existing one keeps mode and owner unless
    atomic-install replaces it), but through a temp file renamed after the sha256 check,
    except for an installed-directly file without atomic-install, which is written in place."""
    parent = os.path.dirname(dest)
    try:
        if target.create_destination:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        old = os.stat(dest) if os.path.lexists(dest) else None
    except OSError as exc:
        raise InstallError(f"cannot create {parent}: {exc.strerror}", target.description) from exc
    if old is not None and not stat.S_ISREG(old.st_mode):
        raise file_error(target.entry, f"path {target.dest} exists and is not a regular file")
    keep_owner = old is not None and not target.atomic
    try:
        with _new_content(dest, target, stat.S_IMODE(old.st_mode) if keep_owner and old else NEW_FILE_MODE) as f:
            yield FdSink(f.fileno(), _free_bytes(parent) + (old.st_size if old is not None else 0))
            if keep_owner and old is not None:
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
    except FileNotFoundError as exc:
        if os.path.isdir(parent):
            raise InstallError(f"writing failed: {exc.strerror}", target.description) from exc
        raise file_error(target.entry, f"directory {posixpath.dirname(target.dest)} does not exist (set "
                                       "properties.create-destination = \"true\" to create it)") from None
    except OSError as exc:
        raise InstallError(f"writing failed: {exc.strerror}", target.description) from exc


def _new_content(dest: str, target: FileTarget, mode: int) -> ContextManager[BinaryIO]:
    """Where the member goes: a temp file renamed over `dest` (`dest.tmp` with atomic-install, as
    SWUpdate names it), or `dest` itself for an installed-directly file without atomic-install."""
    if target.streamed and not target.atomic:
        return _in_place(dest, mode)
    return replacing(dest, mode, temp=dest + ".tmp" if target.atomic else None)


@contextmanager
def _in_place(dest: str, mode: int) -> Iterator[BinaryIO]:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, NEW_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        yield f
        os.fchmod(fd, mode)
        os.fsync(fd)
    fsync_dir(os.path.dirname(dest))


class ArchiveHandler(FilesHandler):
    """A tar stream unpacked under `path` (a directory). Compression inside the member is
    detected (gzip, bzip2, xz by tarfile; zstd here) besides sw-description's `compressed`.
    Refused before they are written: absolute names, `..`, links whose target leaves `path`,
    device nodes, and any member whose path walks through a symlink."""

    kind = "archive"

    def _check_direct(self, target: FileTarget) -> None:
        if os.path.lexists(target.dest) and not os.path.isdir(target.dest):
            raise file_error(target.entry, f"path {target.dest} exists and is not a directory")
        if not target.create_destination and not os.path.isdir(target.dest):
            raise file_error(target.entry, f"directory {target.dest} does not exist (set "
                                           "properties.create-destination = \"true\" to create it)")

    @contextmanager
    def open(self, target: FileTarget, *, dry_run: bool) -> Iterator[Sink]:
        if dry_run:
            yield _NullSink()
            return
        window = self.options.zstd_max_window if self.options is not None else 1 << 27
        if target.streamed:
            with self._root(target) as root:
                extractor = Extractor(self._directory(root, target), target, window)
                with StreamingSink(extractor.extract) as sink:
                    yield sink
        else:
            with _spool(self._work_dir(), target.entry) as (sink, spooled):
                yield sink
            try:
                with open(spooled, "rb") as f:
                    Extractor("", target, window).check(f)  # all of it, before mounting or writing
                with self._root(target) as root:
                    extractor = Extractor(self._directory(root, target), target, window, self._heartbeat)
                    with open(spooled, "rb") as f:
                        extractor.extract(f)
            finally:
                os.unlink(spooled)
        log.info("archive %s unpacked under %s", target.entry, target.description)

    def _directory(self, root: str, target: FileTarget) -> str:
        directory = self._place(root, target)
        if target.create_destination:
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        if not os.path.isdir(directory):
            raise file_error(target.entry, f"directory {target.dest} does not exist (set "
                                           "properties.create-destination = \"true\" to create it)")
        return directory
