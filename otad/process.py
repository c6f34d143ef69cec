"""Programs otad runs: health checks, bundle scripts and system tools (mount, e2fsck, debugfs).

Owns running one program: in its own session, with a timeout, its output read as it comes (the
last bytes kept, each line logged if asked), a heartbeat fed meanwhile, and its whole process
group killed when it ends, times out or otad is stopped. What an exit status means is the
caller's (otad.boot.health, otad.install.scripts). A leaf: imports nothing of otad.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Set, Tuple

log = logging.getLogger(__name__)

Heartbeat = Callable[[], None]

MAX_OUTPUT_BYTES = 64 << 10  # the last bytes of a program's stdout and stderr kept for the caller
HEARTBEAT_S = 1.0
_POLL_S = 0.1


@dataclass(frozen=True)
class ProgramResult:
    status: int  # exit status; negative: killed by that signal
    stdout: bytes  # the last MAX_OUTPUT_BYTES of each (stdout holds both with merge_output)
    stderr: bytes
    timed_out: bool

    def tail(self, limit: int = 300) -> str:
        text = " ".join((self.stderr or self.stdout).decode("utf-8", "replace").split())
        return text[-limit:]


def run_program(argv: Sequence[str], *, timeout_s: float, heartbeat: Optional[Heartbeat] = None,
                env: Optional[Mapping[str, str]] = None, log_as: Optional[str] = None,
                merge_output: bool = False, clock: Callable[[], float] = time.monotonic) -> ProgramResult:
    """Run `argv` (no shell) in its own session; kill its process group after `timeout_s`.

    Output is read as it comes (a chatty program never blocks on a full pipe); with `log_as`
    each line is logged at INFO under that name; `merge_output` sends stderr into stdout, in
    the order written. `heartbeat` is called about once a second. OSError (no such program)
    propagates for the caller to name.
    """
    import subprocess  # lazy: an install without scripts or tools runs no program

    full_env = dict(os.environ, **env) if env is not None else None
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                            start_new_session=True, cwd="/", env=full_env)
    pipes = [p for p in (proc.stdout, proc.stderr) if p is not None]
    streams = _Streams([p.fileno() for p in pipes], log_as)
    timed_out = False
    try:
        with contextlib.ExitStack() as open_pipes:
            for pipe in pipes:
                open_pipes.enter_context(pipe)
            try:
                timed_out = _watch(proc.pid, streams, clock() + timeout_s, heartbeat, clock)
            finally:
                # Also when otad itself is interrupted: a program must not outlive it. The leader
                # has exited at most, not been reaped, so its pid still names this group only.
                _kill_group(proc.pid)
            streams.drain()
    finally:
        status = proc.wait()
    kept = [bytes(k) for k in streams.kept] + [b""]
    return ProgramResult(status, kept[0], kept[1], timed_out)


class _Streams:
    """A program's output pipes: the last bytes of each kept, logged line by line if asked."""

    def __init__(self, fds: Sequence[int], log_as: Optional[str]) -> None:
        self.fds = list(fds)
        self.open: Set[int] = set(fds)
        self.kept: Tuple[bytearray, ...] = tuple(bytearray() for _ in fds)
        self._partial: List[bytes] = [b"" for _ in fds]
        self._log_as = log_as

    def read(self, fd: int) -> None:
        chunk = os.read(fd, 4096)
        index = self.fds.index(fd)
        if not chunk:
            self.open.discard(fd)
            self._log_line(self._partial[index])
            self._partial[index] = b""
            return
        kept = self.kept[index]
        kept += chunk
        del kept[:-MAX_OUTPUT_BYTES]
        if self._log_as is not None:
            *lines, self._partial[index] = (self._partial[index] + chunk).split(b"\n")
            for line in lines:
                self._log_line(line)
            self._partial[index] = self._partial[index][-4096:]

    def _log_line(self, line: bytes) -> None:
        if self._log_as is not None and line.strip():
            log.info("%s: %s", self._log_as, line.decode("utf-8", "replace").rstrip()[:500])

    def drain(self) -> None:
        """What is left in the pipes; never waits for a writer that escaped the group."""
        import select

        for _ in range(64):
            ready = select.select(sorted(self.open), [], [], 0)[0] if self.open else []
            if not ready:
                return
            for fd in ready:
                self.read(fd)


def _watch(pid: int, streams: _Streams, deadline: float, heartbeat: Optional[Heartbeat],
           clock: Callable[[], float]) -> bool:
    """Read output until the process exits (left unreaped); True if the deadline passed first."""
    import select

    beat = clock()
    while not _exited(pid):
        now = clock()
        if now >= deadline:
            return True
        if heartbeat is not None and now - beat >= HEARTBEAT_S:
            heartbeat()
            beat = now
        wait = min(deadline - now, _POLL_S)
        if not streams.open:
            time.sleep(wait)
            continue
        for fd in select.select(sorted(streams.open), [], [], wait)[0]:
            streams.read(fd)
    return False


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (WNOWAIT)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (apart from the unreaped leader)
