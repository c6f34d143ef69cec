"""What `otad status` shows, as one typed report: the slots and the writer lock's holder
(otad.update), what the daemon publishes (otad.hawkbit.publish), where an interrupted download
goes on (otad.hawkbit.journal), and the warnings among them. It reads and never writes or takes a
lock; a part that cannot be read is a warning. Above update.py and hawkbit/, as it reads both.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from otad import update
from otad.boot.slotstatus import SlotStatusReport
from otad.config import Config
from otad.errors import StateError
from otad.hawkbit.journal import DownloadJournal
from otad.hawkbit.publish import DaemonStatus, read_status
from otad.lock import Holder


@dataclass(frozen=True)
class ResumeReport:
    """The download an interrupted deployment goes on with: `offset` of `size` bytes of `artifact`."""

    action_id: str
    artifact: str
    offset: int
    size: int


@dataclass(frozen=True)
class StatusReport:
    """Everything `otad status` shows. `daemon` is None when no daemon ever published (or its
    file is unreadable: `daemon_problem`); `next_poll_in_s` counts from when the report was made."""

    slots: SlotStatusReport
    daemon: Optional[DaemonStatus]
    daemon_problem: Optional[str]
    resume: Optional[ResumeReport]
    next_poll_in_s: Optional[float]
    warnings: Tuple[str, ...]

    @property
    def writer(self) -> Optional[Holder]:
        return self.slots.writer

    def to_dict(self) -> Dict[str, Any]:
        doc = self.slots.to_dict()
        doc["daemon"] = self.daemon.to_dict() if self.daemon else None
        doc["daemon_problem"] = self.daemon_problem
        doc["resume"] = dataclasses.asdict(self.resume) if self.resume else None
        return doc


def status_report(cfg: Config, *, clock: Callable[[], float] = time.time) -> StatusReport:
    """The report for `cfg`'s device now; never fails on a broken env, state or daemon file."""
    slots = update.slot_status(cfg)
    saved = DownloadJournal(cfg.system.state_dir).load(remove_unusable=False)
    daemon_problem = None
    try:
        daemon = read_status(cfg.system.status_file)
    except StateError as exc:
        daemon, daemon_problem = None, str(exc)
    resume = ResumeReport(saved.action_id, saved.filename, saved.point.offset, saved.size) if saved else None
    next_poll = None
    if daemon is not None and daemon.next_poll_in_s is not None and daemon.running:
        next_poll = max(0.0, daemon.next_poll_in_s - max(0.0, clock() - daemon.updated_at))
    problems = (slots.mismatch, slots.booted_problem, slots.env_problem, slots.state_problem, daemon_problem)
    return StatusReport(slots, daemon, daemon_problem, resume, next_poll, tuple(p for p in problems if p))
