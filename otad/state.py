"""otad's persistent state: one JSON file, `<state_dir>/state.json`, and its one state machine.

Owns the `Phase` enum, the one transition table and `StateStore.transition`, the only code that
writes the file (always through `durable.atomic_write`). An unreadable file is an error, never
silently reset: the trial record is what makes an honest confirm possible. What a phase means
for the boot env is `otad.boot.trial`'s business; install records are `otad.install.status`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, FrozenSet, Iterator, Mapping, Optional

from otad import crashpoint
from otad.durable import atomic_write
from otad.errors import StateError
from otad.statefile import read_record, set_aside_unreadable

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
FORMAT = 1
_MAX_BYTES = 1 << 20  # a state file is a few hundred bytes; anything huge is not ours


class Phase(Enum):
    """Where otad is in an update. The local `otad install` path uses IDLE → ARMING →
    TRIAL_ARMED → IDLE; DOWNLOADING, DOWNLOADED, INSTALLED and FINAL_PENDING are the daemon's
    (docs/architecture.md, "The daemon") and are in the table already so that the file format
    need not change."""

    IDLE = "idle"  # nothing in flight; `last_result` says how the last trial ended
    DOWNLOADING = "downloading"  # daemon: action persisted, bundle streaming (no slot written yet)
    DOWNLOADED = "downloaded"  # daemon: bundle verified and kept, waiting to install
    INSTALLED = "installed"  # daemon: images written and verified into the target slot
    ARMING = "arming"  # intent: about to switch the env to the target slot (see otad.boot.trial)
    TRIAL_ARMED = "trial_armed"  # env switched with the bootcount armed; waiting for reboot + confirm
    FINAL_PENDING = "final_pending"  # daemon: trial decided, final feedback for `action_id` not yet sent


# The one transition table: phase → the phases it may go to. A trial is decided into IDLE, or
# into FINAL_PENDING when a hawkBit action waits for the result.
TRANSITIONS: Mapping[Phase, FrozenSet[Phase]] = {
    Phase.IDLE: frozenset({Phase.IDLE, Phase.DOWNLOADING, Phase.ARMING}),
    Phase.DOWNLOADING: frozenset({Phase.DOWNLOADED, Phase.IDLE, Phase.FINAL_PENDING}),
    Phase.DOWNLOADED: frozenset({Phase.INSTALLED, Phase.IDLE, Phase.FINAL_PENDING}),
    Phase.INSTALLED: frozenset({Phase.ARMING, Phase.IDLE, Phase.FINAL_PENDING}),
    Phase.ARMING: frozenset({Phase.ARMING, Phase.TRIAL_ARMED, Phase.IDLE, Phase.FINAL_PENDING}),
    Phase.TRIAL_ARMED: frozenset({Phase.ARMING, Phase.IDLE, Phase.FINAL_PENDING}),
    Phase.FINAL_PENDING: frozenset({Phase.IDLE}),
}

# Phases that are about one update and so must name its target slot.
TRIAL_PHASES = frozenset({Phase.ARMING, Phase.TRIAL_ARMED})
# Fields that describe the update in flight: IDLE drops them, every other phase keeps them.
_UPDATE_FIELDS = ("target_slot", "previous_slot", "version", "armed_at", "action_id")


class Outcome(Enum):
    """How a trial (or a manual mark) ended, as recorded in `last_result`."""

    CONFIRMED = "confirmed"  # the target slot booted and passed its health checks: committed
    FELL_BACK = "fell_back"  # the previous slot runs again (U-Boot's bootcount ran out)
    MARKED_BAD = "marked_bad"  # someone ran `otad mark-bad`
    HEALTH_FAILED = "health_failed"  # the target booted but failed a health check: switched back
    ABORTED = "aborted"  # ended without a verdict on the target (interrupted, changed by hand)

    @property
    def failed(self) -> bool:
        return self is not Outcome.CONFIRMED


@dataclass(frozen=True)
class LastResult:
    """The end of the last trial: `slot` is the slot judged, `at` wall-clock (informational)."""

    outcome: Outcome
    slot: str
    version: Optional[str]
    reason: str
    at: float

    def to_dict(self) -> Dict[str, Any]:
        return {"outcome": self.outcome.value, "slot": self.slot, "version": self.version,
                "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class State:
    """The whole persistent state. `armed_at` is wall-clock and only informational (no RTC)."""

    phase: Phase = Phase.IDLE
    target_slot: Optional[str] = None
    previous_slot: Optional[str] = None
    version: Optional[str] = None
    armed_at: Optional[float] = None
    action_id: Optional[str] = None  # the daemon's hawkBit action; None for local installs
    last_result: Optional[LastResult] = None

    def __post_init__(self) -> None:
        problem = _state_problem(self)
        if problem:
            raise StateError(problem)

    @property
    def trial(self) -> bool:
        """An update is being switched to or tried out."""
        return self.phase in TRIAL_PHASES

    def to_dict(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {"format": FORMAT, "phase": self.phase.value}
        for name in _UPDATE_FIELDS:
            body[name] = getattr(self, name)
        body["last_result"] = self.last_result.to_dict() if self.last_result else None
        return body


def _state_problem(state: State) -> Optional[str]:
    if not isinstance(state.phase, Phase):
        return f"phase: expected a Phase, got {state.phase!r}"
    for name in ("target_slot", "previous_slot", "version", "action_id"):
        value = getattr(state, name)
        if value is not None and not isinstance(value, str):
            return f"{name}: expected text or null, got {value!r}"
    if state.armed_at is not None and (isinstance(state.armed_at, bool)
                                       or not isinstance(state.armed_at, (int, float))):
        return f"armed_at: expected a number or null, got {state.armed_at!r}"
    if state.phase in TRIAL_PHASES and not (state.target_slot and state.previous_slot):
        return f"phase {state.phase.value}: expected target_slot and previous_slot"
    if state.phase in TRIAL_PHASES and state.target_slot == state.previous_slot:
        return f"phase {state.phase.value}: target and previous slot are both {state.target_slot!r}"
    if state.phase is Phase.FINAL_PENDING and (state.action_id is None or state.last_result is None):
        return "phase final_pending: expected action_id and last_result"
    if state.phase is Phase.IDLE and any(getattr(state, n) is not None for n in _UPDATE_FIELDS):
        return "phase idle: expected no update fields"
    return None


def state_from_dict(body: Any) -> State:
    """The state in a decoded JSON document; StateError saying what is wrong."""
    if not isinstance(body, dict):
        raise StateError(f"expected a JSON object, got {type(body).__name__}")
    if body.get("format") != FORMAT:
        raise StateError(f"format: expected {FORMAT}, got {body.get('format')!r} (written by another otad version?)")
    unknown = sorted(set(body) - {"format", "phase", "last_result", *_UPDATE_FIELDS})
    if unknown:
        raise StateError(f"unknown field {unknown[0]!r}")
    try:
        phase = Phase(body.get("phase"))
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise StateError(f"phase: expected one of {known}, got {body.get('phase')!r}") from None
    fields = {name: body.get(name) for name in _UPDATE_FIELDS}
    return State(phase=phase, last_result=_result_from_dict(body.get("last_result")), **fields)


def _result_from_dict(body: Any) -> Optional[LastResult]:
    if body is None:
        return None
    if not isinstance(body, dict) or set(body) != {"outcome", "slot", "version", "reason", "at"}:
        raise StateError(f"last_result: expected outcome, slot, version, reason, at; got {body!r}")
    try:
        outcome = Outcome(body["outcome"])
    except ValueError:
        known = ", ".join(o.value for o in Outcome)
        raise StateError(f"last_result.outcome: expected one of {known}, got {body['outcome']!r}") from None
    ok = (isinstance(body["slot"], str) and isinstance(body["reason"], str)
          and (body["version"] is None or isinstance(body["version"], str))
          and isinstance(body["at"], (int, float)) and not isinstance(body["at"], bool))
    if not ok:
        raise StateError(f"last_result: expected text slot/reason/version and a number at, got {body!r}")
    return LastResult(outcome, body["slot"], body["version"], body["reason"], float(body["at"]))


class StateStore:
    """`<state_dir>/state.json`: read it fresh, change it only through `transition`.

    Callers that read, decide and then change env and state hold `lock()` around all of it,
    so two otad processes (the daemon and `otad confirm`) never decide on the same state.
    """

    def __init__(self, state_dir: str, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.lock_path = os.path.join(state_dir, LOCK_FILE)
        self.clock = clock

    def load(self) -> State:
        """The stored state; IDLE if the file was never written. StateError if it cannot be
        opened, StateCorrupt if its content is unreadable (a record: the file is kept)."""
        return read_record(self.path, state_from_dict, limit=_MAX_BYTES) or State()

    def transition(self, to: Phase, **fields: Any) -> State:
        """Check `current → to` against TRANSITIONS, persist the new state, return it.

        Fields not given are kept, except that IDLE drops the update fields. An illegal
        transition or an inconsistent state raises StateError naming both phases; nothing
        is written then.
        """
        current = self.load()
        if to not in TRANSITIONS[current.phase]:
            allowed = ", ".join(sorted(p.value for p in TRANSITIONS[current.phase]))
            raise StateError(f"illegal transition {current.phase.value} → {to.value} "
                             f"(from {current.phase.value} otad may go to: {allowed})", self.path)
        base = {n: None for n in _UPDATE_FIELDS} if to is Phase.IDLE else {}
        try:
            new = dataclasses.replace(current, phase=to, **{**base, **fields})
        except TypeError as exc:
            raise StateError(f"transition {current.phase.value} → {to.value}: {exc}", self.path) from None
        except StateError as exc:
            raise StateError(f"transition {current.phase.value} → {to.value}: {exc.what}", self.path) from None
        crashpoint.reached("state.before_persist")
        self._write(new)
        crashpoint.reached("state.persisted")
        log.info("state: %s → %s%s", current.phase.value, to.value,
                 f" (slot {new.target_slot})" if new.target_slot else "")
        return new

    def set_aside_unreadable(self) -> Optional[str]:
        """`otad state reset`: unreadable content is renamed to `state.json.corrupt` (no file
        reads as IDLE); a readable file stays. The new name, or None."""
        return set_aside_unreadable(self.path, self.load)

    def now(self) -> float:
        return self.clock()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive flock on `<state_dir>/state.lock` (not re-entrant: take it once)."""
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open lock file: {exc.strerror or exc}", self.lock_path) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise StateError(f"cannot lock: {exc.strerror or exc}", self.lock_path) from exc
            yield
        finally:
            os.close(fd)

    def _write(self, state: State) -> None:
        data = json.dumps(state.to_dict(), indent=1, sort_keys=True).encode("utf-8") + b"\n"
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            atomic_write(self.path, data)
        except OSError as exc:
            raise StateError(f"cannot write: {exc.strerror or exc}", self.path) from exc
