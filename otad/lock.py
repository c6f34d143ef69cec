"""The writer lock: one otad process at a time changes a slot, the U-Boot env or otad's state.

Owns `<state_dir>/writer.lock`, flock()ed (exclusive, never waiting) through an fd that stays
open for a whole operation, so a crash or kill -9 releases it, and the holder record beside it,
`<state_dir>/writer.json`: pid, command line, what it does, target slot, start, progress. The
record is replaced by rename (readers see the old or the new one, never half of it; a lock file
cannot be renamed over, as flock belongs to the inode) and believed only while /proc/locks shows
the lock held by its pid, so a record left by a crash blocks nobody. Readers never take the lock.
Lock order: this one first, then otad.state's state.lock, then fw_printenv's (otad.boot.ubootenv).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, Union

from otad.durable import atomic_write
from otad.errors import BusyError, StateError
from otad.progress import Progress
from otad.smallfile import peek_text
from otad.statefile import read_object

log = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
RECORD_FILE = "writer.json"
PROC_LOCKS = "/proc/locks"
PROGRESS_INTERVAL_S = 1.0  # progress of a bundle of unknown size is written at most this often
_MAX_RECORD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Holder:
    """Who holds the lock and what it does. `activity` reads after "is" ("installing into slot
    b"); `started_at` is wall-clock (shown, never compared); bytes are the bundle's, if known."""

    pid: int
    command: str
    activity: str
    slot: Optional[str] = None
    started_at: float = 0.0
    done_bytes: Optional[int] = None
    total_bytes: Optional[int] = None

    @property
    def percent(self) -> Optional[int]:
        if self.done_bytes is None or not self.total_bytes:
            return None
        return min(100, self.done_bytes * 100 // self.total_bytes)

    def installing_into(self, slot: str) -> bool:
        return self.slot == slot and self.activity.startswith("installing")

    def describe(self) -> str:
        """``pid 4242 (otad install big.swu) is installing into slot b since 12:01:07``"""
        since = time.strftime("%H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid} ({self.command}) is {self.activity} since {since}"

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "percent": self.percent}


def holder_from_dict(body: Any) -> Optional[Holder]:
    """The record in a decoded JSON document; None if it is not one (a reader only shows it)."""
    kinds: Dict[str, Union[type, Tuple[type, ...]]] = {
        "pid": int, "command": str, "activity": str, "slot": (str, type(None)), "started_at": (int, float),
        "done_bytes": (int, type(None)), "total_bytes": (int, type(None))}
    if not isinstance(body, dict):
        return None
    for name, kind in kinds.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            return None
    return Holder(**{name: body[name] for name in kinds})


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """This process's command line as the record shows it: ``otad install big.swu``."""
    args = list(sys.argv if argv is None else argv)
    return shlex.join(["otad", *args[1:]])


class WriterLock:
    """The lock of one state directory. `acquire` takes it or raises BusyError naming the holder;
    `holder` says who holds it without taking it."""

    def __init__(self, state_dir: str, *, proc_locks: str = PROC_LOCKS) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, LOCK_FILE)
        self.record_path = os.path.join(state_dir, RECORD_FILE)
        self.proc_locks = proc_locks

    def acquire(self, activity: str, *, slot: Optional[str] = None, create: bool = True,
                command: Optional[str] = None) -> "HeldLock":
        """Take the lock now or raise BusyError; use the result in a `with`.

        `create=False` for a command that may run where otad keeps no state (`otad env set -c`
        on a build host): without the state directory no other otad writer can exist, as every
        one creates it first, so nothing is locked then.
        """
        if not create and not os.path.isdir(self.state_dir):
            return HeldLock(self, None, None)
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the writer lock: {exc.strerror or exc}", self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BusyError(self._busy_text()) from None
            raise StateError(f"cannot lock: {exc.strerror or exc}", self.path) from exc
        record = Holder(os.getpid(), command or command_line(), activity, slot, time.time())
        held = HeldLock(self, fd, record)
        try:
            held.write()
        except BaseException:
            held.release()
            raise
        return held

    def holder(self) -> Optional[Holder]:
        """Who holds the lock now (None: nobody), read without taking it. The record counts only
        while its pid holds the flock; a holder without a readable record is shown as such."""
        pid = self.locked_by()
        if pid is None:
            return None
        record = self.read_record()
        if record is not None and (record.pid == pid or pid == 0):
            return record
        return Holder(pid, "?", "holding the writer lock (no record yet)")

    def locked_by(self) -> Optional[int]:
        """The pid whose flock is on the lock file (0: held by a process this pid namespace
        cannot see), None when it is free. From /proc/locks; without it, the record's pid alive."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot stat the writer lock: {exc.strerror or exc}", self.path) from exc
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        table = peek_text(self.proc_locks)
        if table is None:
            record = self.read_record()
            return record.pid if record is not None and pid_alive(record.pid) else None
        return _flock_owner(table.splitlines(), key)

    def read_record(self) -> Optional[Holder]:
        """The holder record; None if there is none or it cannot be read (a view: only shown)."""
        try:
            body = read_object(self.record_path, limit=_MAX_RECORD_BYTES)
        except StateError:
            return None
        return holder_from_dict(body) if body is not None else None

    def _busy_text(self) -> str:
        holder = self.holder()
        if holder is None:  # released between our try and this look
            return f"another otad process held the writer lock {self.path} a moment ago; try again"
        if holder.command == "?":
            return f"pid {holder.pid} holds the writer lock {self.path}"
        return holder.describe()


def _flock_owner(lines: Sequence[str], key: str) -> Optional[int]:
    """The pid of the FLOCK on `key` ("maj:min:inode") in /proc/locks lines, e.g.
    ``1: FLOCK  ADVISORY  WRITE 4242 fe:00:5359863 0 EOF``; ``1: -> FLOCK ...`` lines are waiters."""
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
            try:
                return int(fields[4])
            except ValueError:
                return 0
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (it may be another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


class HeldLock:
    """The lock while it is held: say what is being done (`doing`), feed progress to the record
    (`progress`, a ProgressListener), and `release` (or leave the `with`). Without an fd (see
    `WriterLock.acquire(create=False)`) it holds nothing and records nothing."""

    def __init__(self, lock: WriterLock, fd: Optional[int], record: Optional[Holder], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = lock
        self._fd = fd
        self.record = record
        self._clock = clock
        self._progress_at = float("-inf")  # when progress was last written

    @property
    def held(self) -> bool:
        return self._fd is not None

    def doing(self, activity: str, *, slot: Optional[str] = None) -> None:
        """What the holder does now, written at once: ``installing into slot b``."""
        if self.record is not None:
            self.record = replace(self.record, activity=activity, slot=slot, done_bytes=None, total_bytes=None)
            self._progress_at = float("-inf")
            self.write()

    def progress(self, event: Progress) -> None:
        """A ProgressListener: bundle bytes into the record, written once per percent (at most
        about 100 small renames an install), or once a second while the size is unknown (stdin)."""
        record = self.record
        if record is None or self._fd is None or event.phase not in ("image", "busy", "delta"):
            return
        self.record = replace(record, done_bytes=event.done_bytes, total_bytes=event.total_bytes)
        if self.record.percent is not None:
            due = self.record.percent != record.percent
        else:
            due = self._clock() - self._progress_at >= PROGRESS_INTERVAL_S
        if due:
            self._progress_at = self._clock()
            self.write()

    def write(self) -> None:
        if self.record is None or self._fd is None:
            return
        data = json.dumps(self.record.to_dict(), sort_keys=True).encode("utf-8") + b"\n"
        try:
            # No fsync: the record means nothing after a reboot, and it is rewritten during installs.
            atomic_write(self.lock.record_path, data, 0o644, sync=False)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.lock.record_path, exc.strerror or exc)

    def release(self) -> None:
        """Remove the record, then let go of the lock (a crash in between leaves a record that
        nobody believes). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.lock.record_path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()
