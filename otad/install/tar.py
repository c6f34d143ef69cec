"""Unpacking one tar stream under a directory (an `archive` entry), refusing what would leave it.

tarfile reads the stream in streaming mode (`r|*`; zstd inside the member is detected here);
every member is made relative to directory fds, never through a symlink. Refused before they are
written: absolute names, `..`, links whose target leaves the destination, device nodes. Where the
directory is (mounts, create-destination) and when the stream arrives is the files handler's.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from otad.errors import ImageError, InstallError
from otad.install.filetarget import DIR_MODE, FileTarget, file_error
from otad.install.pipeline import FdSink, Reader, ZstdReader
from otad.process import Heartbeat
from otad.smallfile import peek_text

if TYPE_CHECKING:  # loaded when an archive entry is unpacked
    import tarfile

log = logging.getLogger(__name__)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COPY_CHUNK = 1 << 18


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
    for line in (peek_text("/proc/self/status") or "").splitlines():
        if line.startswith("Umask:"):
            try:
                return int(line.split()[1], 8)
            except (IndexError, ValueError):
                break
    return 0o022


class Extractor:
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
        return file_error(self.target.entry, what)

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
                    FdSink(fd, None).write(chunk)
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


class StreamingSink:
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

    def __enter__(self) -> StreamingSink:
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
