"""The `files` handlers: `rawfile` writes one file at `path`, `archive` (alias `tar`) unpacks a
tar stream under `path`. With `device` + `filesystem`, `path` lies inside that filesystem,
mounted on a private directory (or used where it is mounted already); without root, a rawfile
on ext2/3/4 is written with `debugfs -w` instead. Unless the entry says `installed-directly`,
nothing becomes visible before its sha256 passed. Owns the checks on tar members.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

from otad.durable import fsync_dir
from otad.errors import ImageError, InstallError
from otad.install.handlers.raw import resolve_device
from otad.install.pipeline import Reader, Sink, ZstdReader
from otad.install.scripts import Heartbeat, run_tool
from otad.swu.manifest import File

if TYPE_CHECKING:  # the registry imports this module; options are only annotated here
    import tarfile

    from otad.install.handlers import HandlerOptions

log = logging.getLogger(__name__)

DEBUGFS_FS = ("ext2", "ext3", "ext4")
VIA = ("auto", "mount", "debugfs")
NEW_FILE_MODE = 0o600  # SWUpdate's openfileoutput(): O_CREAT with S_IRUSR | S_IWUSR
DIR_MODE = 0o755  # SWUpdate's mkpath() for create-destination
TOOL_TIMEOUT_S = 300.0
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_CHUNK = 1 << 18


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


def _flag(entry: File, key: str) -> bool:
    text = entry.properties.get(key)
    return text is not None and text.strip().lower() in ("true", "yes", "1", "y")


def _fail(entry: str, what: str) -> ImageError:
    return ImageError(what, entry, where=f"file {entry!r}")


def _check_path(entry: File) -> str:
    path = entry.path
    if not path:
        raise _fail(entry.filename, "no path: expected path = \"/absolute/destination\"")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise _fail(entry.filename, f"path: control character in {path!r}")
    if ".." in path.split("/"):
        raise _fail(entry.filename, f"path: expected no '..' component, got {path!r}")
    if not entry.device and not path.startswith("/"):
        raise _fail(entry.filename, f"path: expected an absolute path (no device given), got {path!r}")
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
            raise _fail(entry.filename, "path: expected a file name, got '/'")
        if bool(entry.device) != bool(entry.filesystem):
            given, missing = ("device", "filesystem") if entry.device else ("filesystem", "device")
            raise _fail(entry.filename, f"{given} given without {missing}: expected both (mount {missing} "
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
            raise _fail(entry.filename, f"device {device}: {exc.strerror}") from exc
        if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise _fail(entry.filename, f"device {device}: neither a block device nor a regular file")
        from otad.install.mount import can_mount, mounted_at  # lazy: only entries with a device mount

        wanted = self.options.files_via if self.options is not None else "auto"
        mounted = mounted_at(device, self.options.mountinfo if self.options else "/proc/self/mountinfo")
        if mounted is not None and wanted != "debugfs":
            return "mount"
        if wanted == "mount" or (wanted == "auto" and can_mount(device)):
            return "mount"
        ext = entry.filesystem in DEBUGFS_FS
        if mounted is not None:
            raise _fail(entry.filename, f"device {device} is mounted at {mounted}: debugfs must not write to a "
                                        "mounted filesystem")
        if not ext or self.kind != "rawfile":
            raise _fail(entry.filename, f"cannot mount {device} (not root, or install.files_via = \"debugfs\") "
                                        f"and without mounting otad writes only rawfile entries to ext2/3/4 "
                                        f"(got {self.kind} on {entry.filesystem})")
        if shutil.which("debugfs") is None:
            raise _fail(entry.filename, "debugfs not found (install e2fsprogs)")
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


class _FdSink:
    def __init__(self, fd: int, capacity: Optional[int]) -> None:
        self._fd = fd
        self.capacity = capacity

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


def _free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@contextmanager
def _spool(work_dir: str, entry: str) -> Iterator[Tuple[_FdSink, str]]:
    """A private temporary file in `work_dir` (on disk) holding a member until it is verified.
    Removed on failure; on success the caller removes it after use."""
    try:
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="spool-", dir=work_dir)
    except OSError as exc:
        raise InstallError(f"cannot create a spool file: {exc.strerror}", work_dir) from exc
    ok = False
    try:
        yield _FdSink(fd, _free_bytes(work_dir)), path
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
            raise _fail(target.entry, f"path {target.dest} is a directory")
        if os.path.lexists(target.dest) and not os.path.isfile(target.dest):
            raise _fail(target.entry, f"path {target.dest} exists and is not a regular file")
        if not target.create_destination and not os.path.isdir(parent):
            raise _fail(target.entry, f"directory {parent} does not exist (set properties.create-destination "
                                      "= \"true\" to create it)")

    @contextmanager
    def open(self, target: FileTarget, *, dry_run: bool) -> Iterator[Sink]:
        if dry_run:
            yield _NullSink()
        elif target.via == "debugfs":
            with _spool(self._work_dir(), target.entry) as (sink, spooled):
                yield sink
            try:
                _Debugfs(target, self._heartbeat).write_file(spooled)
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
    in_place = target.streamed and not target.atomic
    try:
        if target.create_destination:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        old = os.stat(dest) if os.path.lexists(dest) else None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise _fail(target.entry, f"path {target.dest} exists and is not a regular file")
        if in_place or target.atomic:
            temp = dest if in_place else dest + ".tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, NEW_FILE_MODE)
        else:
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".otad", dir=parent)
    except FileNotFoundError:
        raise _fail(target.entry, f"directory {posixpath.dirname(target.dest)} does not exist (set "
                                  "properties.create-destination = \"true\" to create it)") from None
    except OSError as exc:
        raise InstallError(f"cannot create {dest}: {exc.strerror}", target.description) from exc
    try:
        yield _FdSink(fd, _free_bytes(parent) + (old.st_size if old is not None else 0))
        if old is not None and not target.atomic:
            os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        else:
            os.fchmod(fd, NEW_FILE_MODE)
        os.fsync(fd)
        if temp != dest:
            os.replace(temp, dest)
        fsync_dir(parent)
    except BaseException as exc:
        if temp != dest:
            _unlink_quietly(temp)
        if isinstance(exc, OSError):
            raise InstallError(f"writing failed: {exc.strerror}", target.description) from exc
        raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _Debugfs:
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
            raise _fail(target.entry, f"path {target.dest!r}: debugfs cannot write names with quotes, "
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
            raise _fail(self.target.entry, f"directory {parent} does not exist in {self.device} (set "
                                           "properties.create-destination = \"true\" to create it)")
        old = self.stat(dest)
        if old is not None and old[0] != "regular":
            raise _fail(self.target.entry, f"path {dest} exists in {self.device} and is a {old[0]}")
        if old is not None:
            self.run(f'rm "{dest}"')
        self.run(f'write "{spooled}" "{dest}"')
        mode, uid, gid = (old[1], old[2], old[3]) if old is not None and not self.target.atomic else \
            (NEW_FILE_MODE, 0, 0)
        self.run(f'sif "{dest}" mode 0{stat.S_IFREG | mode:o}')
        self.run(f'sif "{dest}" uid {uid}')
        self.run(f'sif "{dest}" gid {gid}')


class ArchiveHandler(FilesHandler):
    """A tar stream unpacked under `path` (a directory). Compression inside the member is
    detected (gzip, bzip2, xz by tarfile; zstd here) besides sw-description's `compressed`.
    Refused before they are written: absolute names, `..`, links whose target leaves `path`,
    device nodes, and any member whose path walks through a symlink."""

    kind = "archive"

    def _check_direct(self, target: FileTarget) -> None:
        if os.path.lexists(target.dest) and not os.path.isdir(target.dest):
            raise _fail(target.entry, f"path {target.dest} exists and is not a directory")
        if not target.create_destination and not os.path.isdir(target.dest):
            raise _fail(target.entry, f"directory {target.dest} does not exist (set "
                                      "properties.create-destination = \"true\" to create it)")

    @contextmanager
    def open(self, target: FileTarget, *, dry_run: bool) -> Iterator[Sink]:
        if dry_run:
            yield _NullSink()
            return
        window = self.options.zstd_max_window if self.options is not None else 1 << 27
        if target.streamed:
            with self._root(target) as root:
                extractor = _Extractor(self._directory(root, target), target, window)
                with _StreamingSink(extractor.extract) as sink:
                    yield sink
        else:
            with _spool(self._work_dir(), target.entry) as (sink, spooled):
                yield sink
            try:
                with open(spooled, "rb") as f:
                    _Extractor("", target, window).check(f)  # all of it, before mounting or writing
                with self._root(target) as root:
                    extractor = _Extractor(self._directory(root, target), target, window, self._heartbeat)
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
            raise _fail(target.entry, f"directory {target.dest} does not exist (set "
                                      "properties.create-destination = \"true\" to create it)")
        return directory


class _Full:
    """read(n) returns n bytes unless the stream ends: tarfile detects compression from one
    read of 512 bytes, and a pushed stream hands out whatever chunk came last."""

    def __init__(self, head: bytes, source: Reader) -> None:
        self._head = head
        self._source = source

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n < 0 else n
        parts, have = [self._head[:n]], len(self._head[:n])
        self._head = self._head[n:]
        while have < n:
            data = self._source.read(n - have)
            if not data:
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)


def _umask() -> int:
    """This process's umask, read without changing it (another thread may create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class _Extractor:
    """Unpacks one tar stream into `directory` (tarfile in streaming mode `r|*`)."""

    def __init__(self, directory: str, target: FileTarget, zstd_max_window: int,
                 heartbeat: Optional[Heartbeat] = None) -> None:
        self.directory = directory
        self.target = target
        self.zstd_max_window = zstd_max_window
        self._heartbeat = heartbeat  # unpacking a spooled rootfs takes minutes: keep the watchdog fed
        self._beat = time.monotonic()
        self._dirs: List[Tuple[List[str], tarfile.TarInfo]] = []  # attributes applied last
        self.count = 0
        self._umask = _umask()

    def fail(self, what: str) -> ImageError:
        return _fail(self.target.entry, what)

    def _open(self, source: Any) -> tarfile.TarFile:
        import tarfile  # lazy: only archive entries unpack tar streams

        head = _Full(b"", source).read(len(ZSTD_MAGIC))
        reader: Reader = _Full(head, source)
        if head == ZSTD_MAGIC:
            reader = _Full(b"", ZstdReader(reader, self.target.entry, self.zstd_max_window))
        return tarfile.open(fileobj=reader, mode="r|*")  # type: ignore[call-overload,no-any-return]

    def check(self, source: Any) -> None:
        """Every member's header, without writing: a spooled archive is refused as a whole
        before its first member is unpacked. A member below a symlink of the archive counts
        as walking through it (unpacking would refuse it)."""
        import tarfile

        links: List[str] = []
        try:
            with self._open(source) as tar:
                for member in tar:
                    parts = self._check_member(member)
                    for depth in range(1, len(parts)):
                        if "/".join(parts[:depth]) in links:
                            raise self.fail(f"tar member {member.name!r}: {'/'.join(parts[:depth])!r} on its path "
                                            "is a symlink")
                    if member.issym():
                        links.append("/".join(parts))
        except tarfile.TarError as exc:
            raise self.fail(f"not a readable tar stream: {exc}") from exc

    def extract(self, source: Any) -> None:
        import tarfile

        root_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with self._open(source) as tar:
                for member in tar:
                    self._member(tar, member, root_fd)
                    if self._heartbeat is not None and time.monotonic() - self._beat >= 1.0:
                        self._heartbeat()
                        self._beat = time.monotonic()
            for parts, member in reversed(self._dirs):
                self._finish_dir(root_fd, parts, member)
            os.fsync(root_fd)
        except tarfile.TarError as exc:
            raise self.fail(f"not a readable tar stream: {exc}") from exc
        except OSError as exc:
            raise InstallError(f"unpacking failed: {exc.strerror or exc} (after {self.count} members)",
                               self.target.description) from exc
        finally:
            os.close(root_fd)
        os.sync()  # many files: one sync instead of an fsync each
        log.debug("%s: %d members unpacked", self.target.entry, self.count)

    def _parts(self, name: str, what: str = "member") -> List[str]:
        if not name or "\0" in name or any(ord(c) < 0x20 for c in name):
            raise self.fail(f"tar {what} name {name!r}: empty or with control characters")
        if name.startswith("/"):
            raise self.fail(f"tar {what} {name!r}: absolute name")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.fail(f"tar {what} {name!r}: '..' component")
        return parts

    def _check_symlink(self, parts: List[str], link: str) -> None:
        """A link target, read where the link lies inside the filesystem (an absolute one from
        its root), must stay under `path`."""
        if not link or "\0" in link:
            raise self.fail(f"tar member {'/'.join(parts)!r}: empty symlink target")
        here = posixpath.join(self.target.dest, *parts[:-1])
        resolved = posixpath.normpath(posixpath.join(here, link))
        base = self.target.dest.rstrip("/") + "/"
        if resolved != self.target.dest and not resolved.startswith(base) and base != "/":
            raise self.fail(f"tar member {'/'.join(parts)!r}: symlink to {link!r} leaves {self.target.dest}")

    def _check_member(self, member: tarfile.TarInfo) -> List[str]:
        parts = self._parts(member.name)
        if member.ischr() or member.isblk():
            raise self.fail(f"tar member {member.name!r}: device nodes are not installed")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk() or member.isfifo()):
            raise self.fail(f"tar member {member.name!r}: unsupported type {member.type!r}")
        if member.issym() and parts:
            self._check_symlink(parts, member.linkname)
        if member.islnk():
            self._parts(member.linkname, "hardlink target")
        return parts

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int) -> None:
        parts = self._check_member(member)
        if not parts:
            return  # the archive's own root ("./")
        source = self._parts(member.linkname, "hardlink target") if member.islnk() else []
        parent = self._walk(root_fd, parts[:-1], member.name)
        try:
            if member.isdir():
                self._make_dir(parent, parts, member)
            else:
                self._replace(parent, parts[-1], member.name)
                self._make(tar, member, parent, parts[-1], source, root_fd)
        finally:
            os.close(parent)
        self.count += 1

    def _walk(self, root_fd: int, parts: List[str], name: str) -> int:
        """An fd for the directory `parts` under the root, created as needed; never through a symlink."""
        fd = os.dup(root_fd)
        for part in parts:
            try:
                try:
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                    next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                raise self.fail(f"tar member {name!r}: {part!r} on its path is a symlink or not a directory "
                                f"({exc.strerror})") from exc
            os.close(fd)
            fd = next_fd
        return fd

    def _replace(self, parent: int, leaf: str, name: str) -> None:
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise self.fail(f"tar member {name!r}: a directory of that name exists")
        os.unlink(leaf, dir_fd=parent)

    def _mode(self, member: tarfile.TarInfo) -> int:
        # As libarchive does for SWUpdate: with preserve-attributes (ARCHIVE_EXTRACT_PERM) the mode
        # as it is, setuid bits included; without, the permission bits minus the umask.
        if self.target.preserve_attributes:
            return member.mode & 0o7777
        return member.mode & 0o777 & ~self._umask

    def _make_dir(self, parent: int, parts: List[str], member: tarfile.TarInfo) -> None:
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise self.fail(f"tar member {member.name!r}: exists and is not a directory")
        self._dirs.append((parts, member))  # mode and times once its contents are in place

    def _finish_dir(self, root_fd: int, parts: List[str], member: tarfile.TarInfo) -> None:
        fd = self._walk(root_fd, parts, member.name)
        try:
            self._attributes(fd, member)
        finally:
            os.close(fd)

    def _attributes(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.target.preserve_attributes:
            os.fchown(fd, member.uid, member.gid)  # numeric ids: names mean nothing outside that rootfs
        os.fchmod(fd, self._mode(member))  # after chown, which clears setuid
        if self.target.preserve_attributes:
            os.utime(fd, (member.mtime, member.mtime))

    def _make(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, leaf: str,
              source: List[str], root_fd: int) -> None:
        if member.isreg():
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            try:
                data = tar.extractfile(member)
                assert data is not None
                while True:
                    chunk = data.read(COPY_CHUNK)
                    if not chunk:
                        break
                    _FdSink(fd, None).write(chunk)
                self._attributes(fd, member)
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, leaf, dir_fd=parent)
            if self.target.preserve_attributes:
                os.chown(leaf, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                os.utime(leaf, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            source_dir = self._walk(root_fd, source[:-1], member.name)
            try:
                st = os.stat(source[-1], dir_fd=source_dir, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise self.fail(f"tar member {member.name!r}: hardlink to {member.linkname!r}, not a file")
                os.link(source[-1], leaf, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(source_dir)
        else:
            os.mkfifo(leaf, self._mode(member), dir_fd=parent)


class _Aborted(Exception):
    """The stream feeding a worker was abandoned (an error on the writing side)."""


_EOF = b""


class _StreamingSink:
    """A Sink whose bytes a worker thread consumes as a file (tarfile pulls; the pipeline pushes).
    The queue is short, so memory stays at a few chunks. Bytes after the consumer is done (the
    zero padding after a tar's end) are dropped; the consumer's error is raised on the writing
    side at the next write or at the end."""

    def __init__(self, consume: Callable[[Any], None], depth: int = 4) -> None:
        self.capacity: Optional[int] = None
        import queue  # lazy: only archive entries stream through a worker

        self._consume = consume
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=depth)
        self._pending = b""
        self._eof = False
        self._error: Optional[BaseException] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otad-unpack", daemon=True)

    def __enter__(self) -> _StreamingSink:
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._put(_EOF if exc_type is None else None)  # end of data, or: give up
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._consume(self)
        except _Aborted:
            pass
        except BaseException as exc:  # handed to the writing thread
            self._error = exc
        finally:
            self._done.set()

    def read(self, n: int = -1) -> bytes:
        """The worker's side."""
        while not self._pending:
            if self._eof:
                return b""
            item = self._queue.get()
            if item is None:
                raise _Aborted()
            self._eof = not item
            self._pending = item
        n = len(self._pending) if n < 0 else n
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def write(self, data: bytes) -> None:
        if data and not self._put(bytes(data)) and self._error is not None:
            raise self._error

    def _put(self, item: Optional[bytes]) -> bool:
        """False when the worker has finished (then the item is dropped)."""
        import queue

        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
