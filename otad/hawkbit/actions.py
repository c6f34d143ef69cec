"""The daemon's memory of hawkBit actions: which ones ended, and the one written but not armed.

`<state_dir>/actions.json`, replaced atomically. An action id that ended (success, failure,
canceled, downloaded) is never installed again while it is remembered (the last 50). The
unarmed one keeps what arming needs later (slot, version, the bundle's bootenv).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from otad.durable import atomic_write
from otad.errors import StateError

KEEP_ENDED = 50


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
        if not os.path.exists(path):
            return cls(path)
        try:
            with open(path, "rb") as f:
                body = json.loads(f.read().decode("utf-8"))
            waiting = WaitingAction(**body["waiting"]) if body.get("waiting") else None
            ended = {str(k): str(v) for k, v in body.get("ended", {}).items()}
            return cls(path, ended, waiting)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(f"unreadable action log ({exc}); move it aside to start afresh", path) from exc

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
