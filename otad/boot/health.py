"""Health checks of a freshly booted slot: shell commands that must exit 0 in time.

Owns running each check (``/bin/sh -c`` through otad.process: own session, bounded output,
the whole process group killed after it) and turning failures into short reasons. What a
failed check means for the slots is `otad.boot.trial`'s; which commands to run is the config's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from otad.process import run_program

log = logging.getLogger(__name__)

SHELL = "/bin/sh"
TAIL_BYTES = 200  # of a failed check's output, for the failure reason


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
    try:
        result = run_program([shell, "-c", command], timeout_s=timeout_s, merge_output=True, clock=clock)
    except OSError as exc:
        return f"{command!r}: cannot run {shell}: {exc.strerror or exc}"
    output = _shown(result.stdout[-TAIL_BYTES:])
    if result.timed_out:
        return f"{command!r}: timed out after {timeout_s:g} s{output}"
    if result.status < 0:
        return f"{command!r}: killed by signal {-result.status}{output}"
    if result.status != 0:
        return f"{command!r}: exit status {result.status}{output}"
    return None


def _shown(tail: bytes) -> str:
    text = " ".join(tail.decode("utf-8", "replace").split())
    return f": {text}" if text else ""
