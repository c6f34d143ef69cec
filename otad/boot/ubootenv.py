"""The U-Boot environment on disk: its copies read, the active one chosen, one verified write.

Owns reading each copy, choosing the active one by its redundant flags, and one locked,
verified read-modify-write, compatible with U-Boot and libubootenv. Where the copies live is
fwenvconfig's and a copy's bytes envimage's; what to set (slots, bootcount) is the slot
logic's; argparse and output are cli.py's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from otad import crashpoint, durable
from otad.boot.envimage import build_image, check_change, decode_copy
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout
from otad.errors import EnvCorrupt, EnvError

log = logging.getLogger(__name__)

# Filesystems on which renaming a file over another is not atomic across a power cut. On FAT the
# rename frees the old file's clusters, marks the temp file's entry deleted and points the old
# entry at the new clusters: writes that reach the card in any order. A power cut between them
# on the emulated Pi (tests/pi, scenario 6) left uboot.env pointing at freed clusters, which
# U-Boot cannot read and fsck.fat truncates to 0 bytes. There an existing env file is written in
# place, as libubootenv 0.3.2's fw_setenv and U-Boot's saveenv write it (a torn write is a bad
# CRC, and U-Boot boots on its default env, not a corrupt boot partition).
NO_ATOMIC_RENAME = frozenset({"vfat", "msdos", "fat", "exfat", "fuseblk"})
MOUNTINFO = "/proc/self/mountinfo"

# libubootenv 0.3.2 flock()s this file (O_WRONLY|O_CREAT|O_TRUNC, LOCK_EX) around every read and
# write, as U-Boot's tools/env did before v2023.07 (/run/fw_printenv.lock since).
DEFAULT_LOCK_PATH = "/var/lock/fw_printenv.lock"

__all__ = [
    "DEFAULT_LOCK_PATH",
    "EnvSnapshot",
    "UBootEnv",
]


@dataclass(frozen=True)
class EnvSnapshot:
    """The env as read: the active copy's variables, its index and flags, and which copies are valid."""

    variables: Mapping[str, str]
    active_copy: int
    flags: Optional[int]
    valid_copies: Tuple[int, ...]


@dataclass(frozen=True)
class _CopyState:
    variables: Optional[Dict[str, str]]  # None: not a valid copy
    flags: Optional[int]
    problem: str


def _newer_copy(flags0: int, flags1: int) -> int:
    """Incremental flags (files, block devices): the larger wins, 0 beats 255 (wrap), a tie is copy 0."""
    if flags0 == 0xFF and flags1 == 0:
        return 1
    if flags1 == 0xFF and flags0 == 0:
        return 0
    return 1 if flags1 > flags0 else 0


def _select(layout: EnvLayout, states: Sequence[_CopyState]) -> EnvSnapshot:
    valid = tuple(i for i, s in enumerate(states) if s.variables is not None)
    if not valid:
        raise EnvCorrupt(_corrupt_message(layout, states), where=layout.describe())
    if len(valid) == 1:
        active = valid[0]
    else:
        f0, f1 = states[0].flags, states[1].flags
        assert f0 is not None and f1 is not None  # both valid redundant copies carry flags
        active = _newer_copy(f0, f1)
    chosen = states[active]
    assert chosen.variables is not None
    return EnvSnapshot(MappingProxyType(dict(chosen.variables)), active, chosen.flags, valid)


def _corrupt_message(layout: EnvLayout, states: Sequence[_CopyState]) -> str:
    if not layout.redundant:
        reasons = states[0].problem
    else:
        reasons = "; ".join(
            f"copy {i} ({loc.describe()}): {s.problem}" for i, (loc, s) in enumerate(zip(layout.copies, states))
        )
    return f"no valid U-Boot environment: {reasons}; U-Boot would boot its built-in default env"


def _env_os_error(action: str, loc: EnvCopyLocation, exc: OSError) -> EnvError:
    return EnvError(f"cannot {action}: {exc.strerror or exc}", where=loc.describe())


def _resolve_offset(fd: int, loc: EnvCopyLocation) -> int:
    """The absolute offset of `loc` in the open `fd`; refuses what would hang or corrupt."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISCHR(mode):
        raise EnvError(
            "character device (MTD/UBI?): expected a regular file or a block device", where=loc.device
        )
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise EnvError("expected a regular file or a block device", where=loc.device)
    if loc.offset >= 0:
        return loc.offset
    if not stat.S_ISBLK(mode):
        raise EnvError(
            f"offset {loc.offset:#x}: a negative offset counts from the end of a block device, "
            "but this is a regular file",
            where=loc.device,
        )
    start = os.lseek(fd, 0, os.SEEK_END) + loc.offset
    if start < 0:
        raise EnvError(f"offset {loc.offset:#x} is before the start of the device", where=loc.device)
    return start


def _pread_full(fd: int, size: int, start: int) -> bytes:
    chunks: List[bytes] = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, start + got)
        if not chunk:  # end of file: a short copy, never a wait
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _pwrite_full(fd: int, data: bytes, start: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(data):
        written = os.pwrite(fd, view[done:], start + done)
        if written <= 0:
            raise OSError(0, f"device took no more bytes after {done} of {len(data)}")
        done += written


def _read_copy(loc: EnvCopyLocation, redundant: bool) -> _CopyState:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; _resolve_offset refuses it.
        fd = os.open(loc.device, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _CopyState(None, None, "missing: no such file")
    except OSError as exc:
        raise _env_os_error("open for reading", loc, exc) from exc
    try:
        start = _resolve_offset(fd, loc)
        with contextlib.suppress(OSError, AttributeError):
            # Drop clean cached pages so a read-back after fsync sees the medium.
            os.posix_fadvise(fd, start, loc.size, os.POSIX_FADV_DONTNEED)
        blob = _pread_full(fd, loc.size, start)
    except OSError as exc:
        raise _env_os_error("read", loc, exc) from exc
    finally:
        os.close(fd)
    decoded = decode_copy(blob, loc.size, redundant)
    if isinstance(decoded, str):
        return _CopyState(None, None, decoded)
    return _CopyState(decoded.variables, decoded.flags, "")


class UBootEnv:
    """A U-Boot env as laid out by fw_env.config: read it, or change it with one verified write.

    Every access holds flock() on `lock_path`, the lock fw_printenv/fw_setenv take, so otad
    and the fw tools never interleave a read-modify-write.
    """

    def __init__(self, layout: EnvLayout, *, lock_path: str = DEFAULT_LOCK_PATH) -> None:
        self.layout = layout
        self.lock_path = lock_path

    def read(self) -> EnvSnapshot:
        """The active copy's variables; EnvCorrupt (naming each copy's problem) if none is valid."""
        with self._locked(fcntl.LOCK_SH):
            return _select(self.layout, self._read_all())

    def update(
        self,
        changes: Mapping[str, Optional[str]],
        *,
        allow_default: Optional[Mapping[str, str]] = None,
        keep_empty: bool = False,
    ) -> EnvSnapshot:
        """Apply `changes` (None or "" deletes) in one atomic, verified write; return the new env.

        With `keep_empty`, "" is stored as an empty value (``name=``, as ``fw_setenv name ""``
        does) and only None deletes.

        Single copy: replace a file that holds only the env (temp + fsync + rename), else write
        in place (also an existing file on FAT: NO_ATOMIC_RENAME). Redundant: write the inactive copy with flags + 1; the active one is never
        touched. With no valid copy, raise EnvCorrupt unless `allow_default` is given, which then
        is the base (like ``fw_setenv -f``). Nothing is written if nothing changes.
        """
        wanted = {name: check_change(name, value, keep_empty=keep_empty) for name, value in changes.items()}
        with self._locked(fcntl.LOCK_EX):
            current = self._current(allow_default)
            base = dict(current.variables) if current else dict(allow_default or {})
            new = _apply(base, wanted)
            if current is not None and new == base:
                log.debug("env unchanged, nothing written")
                return current
            target, flags = self._target(current)
            image = build_image(new, self.layout.size, redundant=self.layout.redundant, flags=flags)
            crashpoint.reached("env.before_write")
            snapshot = self._write_verified(target, image, new, flags)
            crashpoint.reached("env.written")
        log.info("env: wrote copy %d (%s)", target, ", ".join(sorted(wanted)) or "default env")
        return snapshot

    def check_update(self, changes: Mapping[str, Optional[str]]) -> None:
        """Raise what `update(changes)` would raise before its write, writing nothing: a bad name
        or value, no valid copy (EnvCorrupt), a copy otad may not write, a result too big."""
        wanted = {name: check_change(name, value) for name, value in changes.items()}
        current = self.read()
        target, flags = self._target(current)
        device = self.layout.copies[target].device
        if os.path.exists(device) and not os.access(device, os.W_OK):
            raise EnvError("not writable", where=self.layout.copies[target].describe())
        build_image(_apply(dict(current.variables), wanted), self.layout.size, redundant=self.layout.redundant,
                    flags=flags)

    # -- steps

    def _current(self, allow_default: Optional[Mapping[str, str]]) -> Optional[EnvSnapshot]:
        try:
            return _select(self.layout, self._read_all())
        except EnvCorrupt:
            if allow_default is None:
                raise
            log.warning("env: no valid copy, starting from the given default env")
            return None

    def _target(self, current: Optional[EnvSnapshot]) -> Tuple[int, int]:
        """The copy to write and its flags byte (1 for a single copy, where it is not stored)."""
        if not self.layout.redundant:
            return 0, 1
        if current is None or current.flags is None:
            return 0, 1
        return 1 - current.active_copy, (current.flags + 1) & 0xFF

    def _write_verified(self, target: int, image: bytes, expected: Dict[str, str], flags: int) -> EnvSnapshot:
        problem = ""
        for attempt in (1, 2):
            self._write_copy(target, image)
            result = self._verify(target, expected, flags)
            if isinstance(result, EnvSnapshot):
                return result
            problem = result
            log.warning("env: copy %d did not read back as written (attempt %d): %s", target, attempt, problem)
        raise EnvError(
            f"copy {target} did not read back as written, also after one retry: {problem}",
            where=self.layout.copies[target].describe(),
        )

    def _verify(self, target: int, expected: Dict[str, str], flags: int) -> Union[EnvSnapshot, str]:
        states = self._read_all()
        state = states[target]
        if state.variables is None:
            return state.problem
        if state.variables != expected:
            differ = sorted(set(state.variables.items()) ^ set(expected.items()))
            return f"variables differ: {', '.join(name for name, _ in differ[:5])}"
        if self.layout.redundant and state.flags != flags:
            return f"flags: wrote {flags}, read {state.flags}"
        snapshot = _select(self.layout, states)
        if snapshot.active_copy != target:
            return f"copy {snapshot.active_copy} still wins over the written copy {target}"
        return snapshot

    def _read_all(self) -> Tuple[_CopyState, ...]:
        return tuple(_read_copy(loc, self.layout.redundant) for loc in self.layout.copies)

    def _write_copy(self, target: int, image: bytes) -> None:
        loc = self.layout.copies[target]
        if not self.layout.redundant and self._holds_only_env(loc) and _rename_is_atomic(loc.device):
            # realpath: replace the file a symlink points to, not the symlink.
            try:
                durable.atomic_write(os.path.realpath(loc.device), image)
            except OSError as exc:
                raise _env_os_error("replace", loc, exc) from exc
        else:
            self._write_in_place(loc, image)

    def _holds_only_env(self, loc: EnvCopyLocation) -> bool:
        """A regular file at offset 0 no longer than the env: safe to replace as a whole."""
        if loc.offset != 0:
            return False
        try:
            st = os.stat(loc.device)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise _env_os_error("stat", loc, exc) from exc
        return stat.S_ISREG(st.st_mode) and st.st_size <= loc.size

    def _write_in_place(self, loc: EnvCopyLocation, image: bytes) -> None:
        """pwrite + fsync at the copy's offset; the other bytes of the file or device stay."""
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK
        created = False
        try:
            try:
                fd = os.open(loc.device, flags)
            except FileNotFoundError:
                # The inactive copy of a redundant env may not exist yet (U-Boot creates it on its
                # first saveenv); the active copy is untouched, so creating it is safe.
                if not (self.layout.redundant and loc.offset == 0):
                    raise
                fd = os.open(loc.device, flags | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            try:
                _pwrite_full(fd, image, _resolve_offset(fd, loc))
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                durable.fsync_dir(os.path.dirname(os.path.abspath(loc.device)))
        except OSError as exc:
            raise _env_os_error("write", loc, exc) from exc

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        try:
            directory = os.path.dirname(self.lock_path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise EnvError(f"cannot open lock file: {exc.strerror or exc}", where=self.lock_path) from exc
        try:
            try:
                fcntl.flock(fd, operation)
            except OSError as exc:
                raise EnvError(f"cannot lock: {exc.strerror or exc}", where=self.lock_path) from exc
            yield
        finally:
            os.close(fd)  # also releases the flock


def _apply(base: Dict[str, str], changes: Mapping[str, Optional[str]]) -> Dict[str, str]:
    new = dict(base)
    for name, value in changes.items():
        if value is None:
            new.pop(name, None)
        else:
            new[name] = value
    return new


def _rename_is_atomic(path: str) -> bool:
    """False for an existing file on a filesystem of NO_ATOMIC_RENAME (by /proc/self/mountinfo:
    the longest mount point that holds the file's real path)."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return True  # a new file: nothing to lose if the rename does not land
    return filesystem_type(real) not in NO_ATOMIC_RENAME


def filesystem_type(path: str) -> Optional[str]:
    """The type of the filesystem mounted where `path` lies (mountinfo's fstype), or None."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: Tuple[int, Optional[str]] = (-1, None)
    for line in lines:
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest.split():
            continue
        point = _unescape(parts[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best[0]:  # later lines mount over earlier ones
            best = (len(point), rest.split()[0])
    return best[1]


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
