"""What otad last did to each install target: installing, installed, failed or interrupted.

One small JSON file in the state directory, replaced atomically on every change. A target is
marked `installing` before its first byte is written and `installed` only after it was
written, hashed and synced, so after a crash or a failed install the record says the target
holds no valid image; a stop request (SIGINT, SIGTERM, SIGHUP) marks it `interrupted`. A record
still `installing` while no writer holds the lock (otad.lock) is an install that was killed:
`shown_state` calls it `interrupted` too. otad.update hands what they say to the A/B slot
model as `SlotInstall`s: boot/ reads no records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional

from otad.durable import atomic_write

log = logging.getLogger(__name__)

INSTALLING = "installing"
INSTALLED = "installed"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_INSTALLED = (INSTALLING, FAILED, INTERRUPTED)  # the target holds no valid image


def shown_state(record: Optional["TargetRecord"], *, being_written: bool) -> Optional[str]:
    """The state to show for a target: `installing` exactly while a writer holding the lock
    installs into it (`being_written`, whatever the record says yet); an `installing` record
    nobody writes is `interrupted`."""
    if being_written:
        return INSTALLING
    if record is not None and record.state == INSTALLING:
        return INTERRUPTED
    return record.state if record is not None else None


@dataclass(frozen=True)
class TargetRecord:
    target: str
    state: str
    version: Optional[str] = None
    sha256: Optional[str] = None
    reason: Optional[str] = None
    updated_at: Optional[float] = None  # wall clock, informational only


class TargetStatusStore:
    """The records, keyed by target path. `path=None` keeps them in memory (dry runs)."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self._records: Dict[str, TargetRecord] = self._load()

    def _load(self) -> Dict[str, TargetRecord]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            return {key: TargetRecord(**value) for key, value in data.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Advisory data: keep the bad file for a post-mortem and start afresh rather than
            # refusing every future update on an unattended device.
            aside = f"{self.path}.corrupt"
            log.warning("%s: unreadable (%s); moved to %s", self.path, exc, aside)
            os.replace(self.path, aside)
            return {}

    def get(self, target: str) -> Optional[TargetRecord]:
        return self._records.get(target)

    def all(self) -> Dict[str, TargetRecord]:
        return dict(self._records)

    def mark(self, target: str, state: str, *, version: Optional[str] = None,
             sha256: Optional[str] = None, reason: Optional[str] = None) -> None:
        self._records[target] = TargetRecord(target, state, version, sha256, reason, time.time())
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        body = {key: asdict(record) for key, record in sorted(self._records.items())}
        atomic_write(self.path, json.dumps(body, indent=1).encode("utf-8") + b"\n")
