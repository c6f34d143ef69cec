"""What the running daemon is doing, as a small JSON file for `otad status`, a UI or a technician.

`StatusPublisher` merges changes and writes them atomically, throttled (a phase change at once);
`read_status` reads the file and says "not running" when its writer is gone. Put the file on
tmpfs (/run/otad/daemon.json): during a download it is rewritten every `min_interval_s`.
The status is informational: nothing decides from it, and a failed write is only logged.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Deque, Dict, Mapping, Optional, Tuple

from otad.durable import atomic_write
from otad.errors import StateCorrupt, StateError
from otad.lock import pid_alive
from otad.smallfile import peek_text
from otad.statefile import read_object

log = logging.getLogger(__name__)



class DaemonPhase(Enum):
    """What the daemon is doing; the value is the word in daemon.json and `otad status`."""

    STARTING = "starting"
    IDLE = "idle"
    POLLING = "polling"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    WAITING_WINDOW = "waiting_window"
    DOWNLOADED = "downloaded"
    REBOOTING = "rebooting"
    BACKOFF = "backoff"
    ERROR = "error"
    STOPPED = "stopped"
    NOT_RUNNING = "not running"  # only `read_status` says this: the writer is gone or silent for too long

    @property
    def transferring(self) -> bool:
        """Bytes flow: `bytes_done` and `rate_bps` mean something."""
        return self in (DaemonPhase.DOWNLOADING, DaemonPhase.INSTALLING)


NOT_RUNNING = DaemonPhase.NOT_RUNNING
FORMAT = 1
RATE_WINDOW_S = 10.0  # rate_bps averages over about this long
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class DaemonStatus:
    """One snapshot. `next_poll_in_s` counts from `updated_at` (wall clock, informational only)."""

    pid: int
    phase: DaemonPhase  # NOT_RUNNING only from read_status
    action_id: Optional[str] = None
    version: Optional[str] = None
    bytes_done: int = 0
    bytes_total: Optional[int] = None
    rate_bps: Optional[float] = None
    last_error: Optional[str] = None
    next_poll_in_s: Optional[float] = None
    server: Optional[str] = None
    updated_at: float = 0.0

    @property
    def running(self) -> bool:
        return self.phase not in (DaemonPhase.STOPPED, NOT_RUNNING)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (daemon.json, `otad status --json`): the phase as its word."""
        return dict(dataclasses.asdict(self), phase=self.phase.value)


_SETTABLE = frozenset(f.name for f in dataclasses.fields(DaemonStatus)) - {"pid", "rate_bps", "updated_at"}


class StatusPublisher:
    """Keeps the daemon's DaemonStatus and writes it to `path` (thread-safe).

    Call `publish` at least once per poll cycle: a reader takes a file older than the promised
    next poll plus its `stale_after_s` as a daemon that stopped working.
    """

    def __init__(self, path: str, *, min_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._clock = clock  # monotonic: throttling and the rate
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._status = DaemonStatus(pid=os.getpid(), phase=DaemonPhase.STARTING)
        self._samples: Deque[Tuple[float, int]] = collections.deque()
        self._written_at: Optional[float] = None
        self._dirty = False
        self._failing = False
        self._boot_id = _boot_id()

    @property
    def status(self) -> DaemonStatus:
        with self._lock:
            return self._status

    def publish(self, **changes: Any) -> None:
        """Merge `changes` (DaemonStatus fields) and write if due: on a phase change, on the first
        call, or when `min_interval_s` has passed since the last write."""
        unknown = sorted(set(changes) - _SETTABLE)
        if unknown:
            raise ValueError(f"publish: unknown field {unknown[0]!r} (expected: {', '.join(sorted(_SETTABLE))})")
        if "phase" in changes and (not isinstance(changes["phase"], DaemonPhase) or changes["phase"] is NOT_RUNNING):
            raise ValueError(f"publish: phase: expected a DaemonPhase the daemon can be in, got {changes['phase']!r}")
        now = self._clock()
        with self._lock:
            new = dataclasses.replace(self._status, **changes)
            changed_phase = new.phase != self._status.phase
            new = dataclasses.replace(new, rate_bps=self._rate(now, new, reset=changed_phase))
            self._status = new
            if changed_phase or self._written_at is None or now - self._written_at >= self.min_interval_s:
                self._write(now)
            else:
                self._dirty = True

    def flush(self) -> None:
        """Write what a throttled `publish` held back."""
        with self._lock:
            if self._dirty:
                self._write(self._clock())

    def close(self) -> None:
        """The daemon ends: phase "stopped", written at once."""
        self.publish(phase=DaemonPhase.STOPPED, next_poll_in_s=None)

    def _rate(self, now: float, status: DaemonStatus, *, reset: bool) -> Optional[float]:
        """Bytes per second over the last RATE_WINDOW_S of transfer; None outside a transfer."""
        samples = self._samples
        if reset or not status.phase.transferring or (samples and status.bytes_done < samples[-1][1]):
            samples.clear()  # another phase or a restarted transfer
        if not status.phase.transferring:
            return None
        if len(samples) >= 2 and now - samples[-2][0] < RATE_WINDOW_S / 40:
            samples[-1] = (now, status.bytes_done)  # callers may report every chunk: keep the deque short
        else:
            samples.append((now, status.bytes_done))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()  # the oldest kept sample is the last one at or before the window start
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def _write(self, now: float) -> None:
        self._status = dataclasses.replace(self._status, updated_at=self._wall_clock())
        body: Dict[str, Any] = {"format": FORMAT, **self._status.to_dict(),
                                "monotonic": now, "boot_id": self._boot_id}
        data = json.dumps(body, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            atomic_write(self.path, data)
        except OSError as exc:
            if not self._failing:  # once per run of failures: a full /run must not flood the log
                log.warning("status: cannot write %s: %s", self.path, exc.strerror or exc)
            self._failing = True
            return
        self._failing = False
        self._written_at = now
        self._dirty = False


def read_status(path: str, *, stale_after_s: float = 600, clock: Callable[[], float] = time.monotonic,
                wall_clock: Callable[[], float] = time.time) -> Optional[DaemonStatus]:
    """The status at `path`; None if there is none. StateError if it is unreadable.

    Phase "not running" when the writer is gone: its pid is dead, the file is from an earlier
    boot (the pid may belong to another process now), or it was not rewritten for
    `stale_after_s` after the next poll it announced.
    """
    body = read_object(path, limit=_MAX_BYTES)  # a view: an unreadable file is only reported
    if body is None:
        return None
    try:
        status = _status_from(body)
    except StateError as exc:
        raise StateCorrupt(f"unreadable daemon status: {exc.what}", path) from None
    if status.phase is DaemonPhase.STOPPED or not _gone(status, body, stale_after_s, clock, wall_clock):
        return status
    return dataclasses.replace(status, phase=NOT_RUNNING, rate_bps=None, next_poll_in_s=None)


def _gone(status: DaemonStatus, body: Mapping[str, Any], stale_after_s: float, clock: Callable[[], float],
          wall_clock: Callable[[], float]) -> bool:
    if not pid_alive(status.pid):
        return True
    written_boot, written, this_boot = body.get("boot_id"), body.get("monotonic"), _boot_id()
    allowed = stale_after_s + (status.next_poll_in_s or 0.0)
    if written_boot and this_boot and written_boot != this_boot:
        return True  # written before this boot: the pid is someone else's now
    if written_boot and isinstance(written, (int, float)) and not isinstance(written, bool):
        return clock() - written > allowed  # same boot: the monotonic clock is shared and never jumps
    # No boot id (not Linux): the wall clock, which may jump at NTP sync on a device without RTC.
    return abs(wall_clock() - status.updated_at) > allowed


def _boot_id() -> Optional[str]:
    return (peek_text(_BOOT_ID) or "").strip() or None


def _status_from(body: Dict[str, Any]) -> DaemonStatus:
    """DaemonStatus from a decoded document; unknown fields are ignored (a newer writer)."""
    if body.get("format") != FORMAT:
        raise StateError(f"format: expected {FORMAT}, got {body.get('format')!r}")
    kinds = {"pid": (int,), "phase": (str,), "action_id": (str, type(None)), "version": (str, type(None)),
             "bytes_done": (int,), "bytes_total": (int, type(None)), "rate_bps": (int, float, type(None)),
             "last_error": (str, type(None)), "next_poll_in_s": (int, float, type(None)),
             "server": (str, type(None)), "updated_at": (int, float)}
    values: Dict[str, Any] = {}
    for name, allowed in kinds.items():
        value = body.get(name)
        if name not in body or isinstance(value, bool) or not isinstance(value, allowed):
            raise StateError(f"{name}: expected {' or '.join(t.__name__ for t in allowed)}, got {value!r}")
        values[name] = value
    try:
        values["phase"] = DaemonPhase(values["phase"])
    except ValueError:
        values["phase"] = NOT_RUNNING  # refused below
    if values["phase"] is NOT_RUNNING:
        known = ", ".join(p.value for p in DaemonPhase if p is not NOT_RUNNING)
        raise StateError(f"phase: expected one of {known}, got {body['phase']!r}")
    return DaemonStatus(**values)
