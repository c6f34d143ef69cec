"""The daemon's memory of hawkBit actions: which ones ended, and the one written but not armed.

`<state_dir>/actions.json`, replaced atomically. An action id that ended (success, failure,
canceled, downloaded) is never installed again while it is remembered (the last 50). The
unarmed one keeps what arming needs later (slot, version, the bundle's bootenv).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from otad.durable import atomic_write
from otad.errors import StateError
from otad.statefile import JsonObject, read_record

ACTIONS_FILE = "actions.json"  # in state_dir
KEEP_ENDED = 50
_MAX_BYTES = 1 << 20  # 50 ids and one waiting action: a few KiB


@dataclass(frozen=True)
class WaitingAction:
    """Written into the inactive slot and verified, not armed yet (window closed, or not yet done)."""

    action_id: str
    version: str
    target_slot: str
    bootenv: Dict[str, Optional[str]] = field(default_factory=dict)


@dataclass
class ActionLog:
    path: str
    ended: Dict[str, str] = field(default_factory=dict)  # action id → how it ended
    waiting: Optional[WaitingAction] = None

    @classmethod
    def load(cls, path: str) -> "ActionLog":
        """The log on disk (a record: an unreadable file stops the daemon and is kept)."""
        loaded = read_record(path, _parse, limit=_MAX_BYTES,
                             consequence=" and the log starts empty (an ended action could then be installed again)")
        return cls(path, *loaded) if loaded is not None else cls(path)

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        body = {"ended": self.ended, "waiting": asdict(self.waiting) if self.waiting else None}
        atomic_write(self.path, json.dumps(body, indent=1).encode("utf-8") + b"\n")

    def end(self, action_id: str, how: str) -> None:
        self.ended[action_id] = how
        if self.waiting is not None and self.waiting.action_id == action_id:
            self.waiting = None
        for old in list(self.ended)[:-KEEP_ENDED]:
            del self.ended[old]
        self.save()

    def wait(self, action: WaitingAction) -> None:
        self.waiting = action
        self.save()

    def clear_waiting(self) -> None:
        if self.waiting is not None:
            self.waiting = None
            self.save()

    def ended_how(self, action_id: str) -> Optional[str]:
        return self.ended.get(action_id)

    def ids(self) -> List[str]:
        return list(self.ended)


def _parse(body: Dict[str, Any]) -> Tuple[Dict[str, str], Optional[WaitingAction]]:
    """(ended, waiting) in a decoded document; StateError saying what is wrong."""
    unknown = sorted(set(body) - {"ended", "waiting"})
    if unknown:
        raise StateError(f"unknown field {unknown[0]!r}")
    ended = body.get("ended", {})
    if not isinstance(ended, dict) or not all(isinstance(v, str) for v in ended.values()):
        raise StateError(f"ended: expected an object of action id → how it ended, got {ended!r}")
    return ended, _waiting(body.get("waiting"))


def _waiting(body: Any) -> Optional[WaitingAction]:
    if not body:
        return None
    fields = JsonObject(body, "waiting")
    bootenv = fields.get("bootenv", dict) if "bootenv" in body else {}  # older files have none
    if not all(v is None or isinstance(v, str) for v in bootenv.values()):
        raise StateError(f"waiting.bootenv: expected names → text or null, got {bootenv!r}")
    return WaitingAction(fields.get("action_id", str), fields.get("version", str), fields.get("target_slot", str),
                         bootenv)
