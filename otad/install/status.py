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
import os
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Dict, Optional

from otad.durable import atomic_write
from otad.errors import StateError
from otad.statefile import JsonObject, read_cache


class TargetState(Enum):
    """What otad last did to a target; the value is the word in targets.json and otad status."""

    INSTALLING = "installing"  # its first byte may be written: it holds no valid image
    INSTALLED = "installed"  # written, hashed and synced
    FAILED = "failed"  # the bundle failed after this target was touched
    INTERRUPTED = "interrupted"  # a stop request (or, as shown, a kill) ended the install half-way


INSTALLING, INSTALLED, FAILED, INTERRUPTED = (TargetState.INSTALLING, TargetState.INSTALLED, TargetState.FAILED,
                                              TargetState.INTERRUPTED)
NOT_INSTALLED = (INSTALLING, FAILED, INTERRUPTED)  # the target holds no valid image
_MAX_BYTES = 1 << 20  # a record per target: a few hundred bytes each


def shown_state(record: Optional["TargetRecord"], *, being_written: bool) -> Optional[TargetState]:
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
    state: TargetState
    version: Optional[str] = None
    sha256: Optional[str] = None
    reason: Optional[str] = None
    updated_at: Optional[float] = None  # wall clock, informational only


class TargetStatusStore:
    """The records, keyed by target path. `path=None` keeps them in memory (dry runs).

    A cache in otad.statefile's sense: unreadable records are a warning and start afresh rather
    than refusing every future update on an unattended device; the file is set aside for a
    post-mortem, except by a reader that only looks (`owner=False`: otad status)."""

    def __init__(self, path: Optional[str], *, owner: bool = True) -> None:
        self.path = path
        loaded = read_cache(path, _records, limit=_MAX_BYTES, owner=owner) if path is not None else None
        self._records: Dict[str, TargetRecord] = loaded or {}

    def get(self, target: str) -> Optional[TargetRecord]:
        return self._records.get(target)

    def all(self) -> Dict[str, TargetRecord]:
        return dict(self._records)

    def mark(self, target: str, state: TargetState, *, version: Optional[str] = None,
             sha256: Optional[str] = None, reason: Optional[str] = None) -> None:
        self._records[target] = TargetRecord(target, state, version, sha256, reason, time.time())
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        body = {key: dict(asdict(record), state=record.state.value) for key, record in sorted(self._records.items())}
        atomic_write(self.path, json.dumps(body, indent=1).encode("utf-8") + b"\n")


def _records(body: Dict[str, Any]) -> Dict[str, TargetRecord]:
    """The records in a decoded document; StateError naming the one that is wrong."""
    return {target: _record(target, value) for target, value in body.items()}


def _record(target: str, value: Any) -> TargetRecord:
    fields = JsonObject(value, f"target {target!r}")
    if fields.get("target", str) != target:
        raise StateError(f"target {target!r}: the record names another target")
    word = fields.get("state", str)
    try:
        state = TargetState(word)
    except ValueError:
        known = ", ".join(s.value for s in TargetState)
        raise StateError(f"target {target!r}: state: expected one of {known}, got {word!r}") from None
    texts = {key: _optional(value, key, target) for key in ("version", "sha256", "reason")}
    updated_at = value.get("updated_at")
    if updated_at is not None and (isinstance(updated_at, bool) or not isinstance(updated_at, (int, float))):
        raise StateError(f"target {target!r}: updated_at: expected a number or null, got {updated_at!r}")
    return TargetRecord(target, state, updated_at=updated_at, **texts)


def _optional(value: Dict[str, Any], key: str, target: str) -> Optional[str]:
    text = value.get(key)
    if text is not None and not isinstance(text, str):
        raise StateError(f"target {target!r}: {key}: expected text or null, got {text!r}")
    return text
