"""Health checks of a freshly booted slot: shell commands that must exit 0 in time.

Owns running each check (``/bin/sh -c``, own session, bounded output, the whole process group
killed after it) and turning failures into short reasons. What a failed check means for the
slots is `otad.boot.trial`'s; which commands to run is the config's.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
TAIL_BYTES = 200  # of a failed check's output, for the failure reason
_POLL_S = 0.05  # how often a check is looked at when its output says nothing


@dataclass(frozen=True)
class HealthResult:
    """`ok` when every check passed; otherwise one line per failed check."""

    ok: bool
    failures: Tuple[str, ...] = ()

    def describe(self) -> str:
        return "all health checks passed" if self.ok else "; ".join(self.failures)


def run_checks(commands: Sequence[str], timeout_s: float, *, shell: str = SHELL,
               clock: Callable[[], float] = time.monotonic) -> HealthResult:
    """Run every command (all of them, so the result lists every failure); none = healthy."""
    failures = []
    for command in commands:
        problem = run_check(command, timeout_s, shell=shell, clock=clock)
        if problem is None:
            log.info("health check passed: %s", command)
        else:
            log.warning("health check failed: %s", problem)
            failures.append(problem)
    return HealthResult(not failures, tuple(failures))


def run_check(command: str, timeout_s: float, *, shell: str = SHELL,
              clock: Callable[[], float] = time.monotonic) -> Optional[str]:
    """None if `command` exits 0 within `timeout_s`, else why not (quoting its output's tail).

    The check runs in its own session; when it ends or times out, its process group is
    killed, so neither a hung check nor the background children it left behind survive it.
    """
    import subprocess  # lazy: `otad install` imports this module but runs no check

    try:
        proc = subprocess.Popen([shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    except OSError as exc:
        return f"{command!r}: cannot run {shell}: {exc.strerror or exc}"
    assert proc.stdout is not None
    try:
        with proc.stdout:
            try:
                tail, timed_out = _watch(proc.pid, proc.stdout.fileno(), clock() + timeout_s, clock)
            finally:
                # Also when otad itself is interrupted: a check must not outlive it. The leader
                # has exited at most, not been reaped, so its pid still names this group only.
                _kill_group(proc.pid)
            tail += _drain(proc.stdout.fileno())
    finally:
        status = proc.wait()
    output = _shown(tail[-TAIL_BYTES:])
    if timed_out:
        return f"{command!r}: timed out after {timeout_s:g} s{output}"
    if status < 0:
        return f"{command!r}: killed by signal {-status}{output}"
    if status != 0:
        return f"{command!r}: exit status {status}{output}"
    return None


def _watch(pid: int, fd: int, deadline: float, clock: Callable[[], float]) -> Tuple[bytes, bool]:
    """Collect output until the process exits (left unreaped) or the deadline passes."""
    import select

    tail = b""
    open_ = True
    while not _exited(pid):
        remaining = deadline - clock()
        if remaining <= 0:
            return tail, True
        if not open_:
            time.sleep(min(remaining, _POLL_S))
            continue
        ready, _, _ = select.select([fd], [], [], min(remaining, _POLL_S))
        if ready:
            chunk = os.read(fd, 4096)
            open_ = bool(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
    return tail, False


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (WNOWAIT)."""
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return result is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (apart from the unreaped leader)


def _drain(fd: int) -> bytes:
    """What is left in the pipe; never waits for a writer that escaped the group."""
    import select

    out = b""
    while len(out) < 65536 and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out


def _shown(tail: bytes) -> str:
    text = " ".join(tail.decode("utf-8", "replace").split())
    return f": {text}" if text else ""
