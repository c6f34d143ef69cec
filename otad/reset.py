"""`otad state reset`: the record files otad cannot read, set aside so that otad can go on.

A record (otad.statefile: state.json, outbox.json, actions.json) whose content is unreadable
stops every command that needs it, and its file is kept as it is; this is the one way on.
Under the writer lock, each unreadable record is renamed to FILE.corrupt (kept for a
post-mortem, never deleted) and its store starts empty; a readable file is left as it is.
Above update.py and hawkbit/, as it knows the records of both (like report.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Tuple

from otad.config import Config
from otad.hawkbit.actions import ACTIONS_FILE, ActionLog
from otad.hawkbit.outbox import OUTBOX_FILE, Outbox
from otad.lock import HeldLock
from otad.state import STATE_FILE, StateStore
from otad.statefile import set_aside_unreadable


@dataclass(frozen=True)
class SetAside:
    """One record that was unreadable: where it went, and what starting it empty gives up."""

    path: str
    aside: str
    consequence: str


@dataclass(frozen=True)
class ResetResult:
    set_aside: Tuple[SetAside, ...]
    readable: Tuple[str, ...]  # the records left as they are (readable or absent)


def reset_state(cfg: Config, *, writer: HeldLock) -> ResetResult:
    """Set every unreadable record of `cfg`'s state directory aside; `writer` proves the lock."""
    writer.doing("setting unreadable state files aside")
    done: List[SetAside] = []
    readable: List[str] = []
    for path, load, consequence in _records(cfg.system.state_dir):
        aside = set_aside_unreadable(path, load)
        if aside is None:
            readable.append(path)
        else:
            done.append(SetAside(path, aside, consequence))
    return ResetResult(tuple(done), tuple(readable))


def _records(state_dir: str) -> Tuple[Tuple[str, Callable[[], object], str], ...]:
    state, actions, outbox = (os.path.join(state_dir, name) for name in (STATE_FILE, ACTIONS_FILE, OUTBOX_FILE))
    return (
        (state, StateStore(state_dir).load,
         "otad starts idle; an armed trial left in the env is confirmed only if the slot is healthy"),
        (actions, lambda: ActionLog.load(actions),
         "the daemon forgets which actions ended: one the server offers again is installed again"),
        (outbox, lambda: Outbox(outbox),
         "feedback not yet delivered is lost: those actions stay open on the server"),
    )
