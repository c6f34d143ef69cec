"""The feedback outbox: hawkBit hears every final result, across outages and reboots.

Owns `<state_dir>/outbox.json`, a small queue written through `durable.atomic_write` before
`put` returns. Only the latest intermediate feedback of an action is kept; finals are kept
until the server took them (200, or 410 for a closed action). Sending is the caller's `send`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from otad.durable import atomic_write
from otad.errors import OtadError, StateError
from otad.hawkbit.ddi import (EXECUTIONS, FINISHED, Conflict, Gone, NotFound, QuotaExceeded, Rejected,
                              ServerUnavailable, trim_details)
from otad.statefile import read_record

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.json"  # in state_dir
FORMAT = 1
_MAX_BYTES = 1 << 20  # a few entries of at most 10 short lines each; anything huge is not ours
_FIELDS = ("seq", "action_id", "execution", "finished", "details", "progress", "cancel", "final", "queued_at")


@dataclass(frozen=True)
class PendingFeedback:
    """One queued feedback; `queued_at` is wall-clock (informational: no RTC before NTP)."""

    seq: int
    action_id: str
    execution: str
    finished: str
    details: Tuple[str, ...]
    progress: Optional[Tuple[int, Optional[int]]]
    cancel: bool  # cancelAction/{id}/feedback instead of deploymentBase/{id}/feedback
    final: bool  # closes the action: never replaced or dropped before the server has it
    queued_at: float

    def to_dict(self) -> Dict[str, Any]:
        body = dataclasses.asdict(self)
        body["details"] = list(self.details)
        body["progress"] = list(self.progress) if self.progress is not None else None
        return body


class Outbox:
    """`<state_dir>/outbox.json`. Thread-safe: the download thread may `put` while `flush` sends."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()  # guards the queue and the file
        self._flushing = threading.Lock()  # one flush at a time, so entries go out in order
        self._quota_hit: Set[str] = set()  # actions whose intermediate feedback hawkBit refuses
        self._entries, self._next_seq = self._load()

    def put(self, action_id: str, execution: str, finished: str, details: Sequence[str] = (),
            progress: Optional[Tuple[int, Optional[int]]] = None, *, cancel: bool = False,
            final: bool = False) -> PendingFeedback:
        """Queue one feedback and persist the queue before returning it.

        An intermediate entry replaces the queued intermediate ones of the same action and
        endpoint (only the latest progress matters). Details are trimmed as they will be sent.
        """
        if execution not in EXECUTIONS:
            raise ValueError(f"execution: expected one of {', '.join(EXECUTIONS)}, got {execution!r}")
        if finished not in FINISHED:
            raise ValueError(f"finished: expected one of {', '.join(FINISHED)}, got {finished!r}")
        with self._lock:
            entry = PendingFeedback(self._next_seq, str(action_id), execution, finished,
                                    tuple(trim_details(details)), _progress(progress), cancel, final,
                                    float(self._clock()))
            kept = self._entries if final else [
                e for e in self._entries if e.final or (e.action_id, e.cancel) != (entry.action_id, cancel)]
            self._save(kept + [entry], self._next_seq + 1)
        log.debug("outbox: queued #%d %s/%s for action %s%s", entry.seq, execution, finished, action_id,
                  " (final)" if final else "")
        return entry

    def pending(self) -> Tuple[PendingFeedback, ...]:
        """The queue, oldest first."""
        with self._lock:
            return tuple(self._entries)

    def has_final(self, action_id: str) -> bool:
        """A final feedback for `action_id` waits to be delivered."""
        with self._lock:
            return any(e.final and e.action_id == action_id for e in self._entries)

    def flush(self, send: Callable[[PendingFeedback], None]) -> int:
        """Send the queue in order; return how many entries the server took (or made moot).

        Stops at the first network trouble (the rest stays queued). An entry the server refuses
        for good is handled by its kind: an intermediate one is dropped; a final one gets its
        details trimmed after a quota 429, else stays queued while later actions go ahead.
        Network errors are logged, not raised; StateError only if the queue cannot be written.
        """
        with self._flushing:
            delivered = 0
            held: Set[Tuple[str, bool]] = set()  # endpoints with an entry kept: later ones wait behind it
            for entry in self.pending():
                if (entry.action_id, entry.cancel) in held:
                    continue
                outcome = self._deliver(entry, send)
                if outcome == "stop":
                    break
                if outcome == "keep":
                    held.add((entry.action_id, entry.cancel))
                    continue
                self._remove(entry.seq)
                delivered += outcome == "delivered"
            return delivered

    # internals

    def _deliver(self, entry: PendingFeedback, send: Callable[[PendingFeedback], None]) -> str:
        """Try one entry: "delivered", "dropped", "keep" (skip for now) or "stop" (network trouble)."""
        what = f"outbox: #{entry.seq} {entry.execution}/{entry.finished} for action {entry.action_id}"
        if not entry.final and entry.action_id in self._quota_hit:
            log.debug("%s dropped: the action's feedback quota is used up", what)
            return "dropped"
        try:
            send(entry)
        except Gone:
            log.info("%s: the action is closed on the server (410); counted as delivered", what)
        except (ServerUnavailable, OSError) as exc:
            log.warning("%s not sent (will retry): %s", what, exc)
            return "stop"
        except QuotaExceeded as exc:
            return self._over_quota(entry, send, what, exc)
        except (NotFound, Rejected) as exc:
            if not entry.final or getattr(exc, "status", None) == 405:  # 405: cancel feedback not wanted
                log.warning("%s dropped: %s", what, exc)
                return "dropped"
            log.error("%s refused, kept for a later try: %s", what, exc)
            return "keep"
        except Conflict as exc:
            log.info("%s: %s; retrying later", what, exc)
            return "keep"
        except OtadError as exc:  # 401, 403, a malformed answer: nothing else would get through either
            log.warning("%s not sent (will retry): %s", what, exc)
            return "stop"
        else:
            log.debug("%s delivered", what)
        if entry.final:
            self._quota_hit.discard(entry.action_id)
        return "delivered"

    def _over_quota(self, entry: PendingFeedback, send: Callable[[PendingFeedback], None], what: str,
                    exc: QuotaExceeded) -> str:
        if not entry.final:
            log.warning("%s dropped, and further progress of this action: %s", what, exc)
            self._quota_hit.add(entry.action_id)
            return "dropped"
        # `closed` is exempt from the status quota, not from the message quota (ddi notes §3).
        short = dataclasses.replace(entry, details=tuple(entry.details[:1]))
        if short == entry:
            log.error("%s refused over quota even with one line of details, kept: %s", what, exc)
            return "keep"
        self._replace(short)  # a resend after a restart starts from the short form
        log.warning("%s over the message quota; resending with one line of details", what)
        return self._deliver(short, send)

    def _remove(self, seq: int) -> None:
        with self._lock:
            if any(e.seq == seq for e in self._entries):  # a `put` may have replaced it meanwhile
                self._save([e for e in self._entries if e.seq != seq], self._next_seq)

    def _replace(self, entry: PendingFeedback) -> None:
        with self._lock:
            self._save([entry if e.seq == entry.seq else e for e in self._entries], self._next_seq)

    def _save(self, entries: List[PendingFeedback], next_seq: int) -> None:
        """Write the file, then adopt the new queue (a failed write changes nothing)."""
        body = {"format": FORMAT, "next_seq": next_seq, "entries": [e.to_dict() for e in entries]}
        data = json.dumps(body, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            raise StateError(f"cannot write the feedback queue: {exc.strerror or exc}", self.path) from exc
        self._entries, self._next_seq = entries, next_seq

    def _load(self) -> Tuple[List[PendingFeedback], int]:
        """The queue on disk (a record: an unreadable file stops the daemon and is kept)."""
        loaded = read_record(self.path, _parse, limit=_MAX_BYTES,
                             consequence=" and the queue starts empty (its final results are then never reported)")
        return loaded if loaded is not None else ([], 1)


def _progress(progress: Optional[Tuple[int, Optional[int]]]) -> Optional[Tuple[int, Optional[int]]]:
    if progress is None:
        return None
    count, of = progress
    if not _count(count) or not (of is None or _count(of)):
        raise ValueError(f"progress: expected (count, total or None) of integers >= 0, got {progress!r}")
    return count, of


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(body: Dict[str, Any]) -> Tuple[List[PendingFeedback], int]:
    """The queue in a decoded document; StateError saying what is wrong."""
    if body.get("format") != FORMAT:
        raise StateError(f"format: expected {FORMAT}, got {body.get('format')!r}")
    next_seq, items = body.get("next_seq"), body.get("entries")
    if not isinstance(next_seq, int) or not _count(next_seq) or not isinstance(items, list):
        raise StateError("expected next_seq (an integer) and entries (a list)")
    entries = [_entry(item, index) for index, item in enumerate(items)]
    seqs = [e.seq for e in entries]
    if seqs != sorted(set(seqs)) or any(s >= next_seq for s in seqs):
        raise StateError("entries: expected increasing seq numbers below next_seq")
    return entries, next_seq


def _entry(item: object, index: int) -> PendingFeedback:
    if not isinstance(item, dict) or set(item) != set(_FIELDS):
        raise StateError(f"entries[{index}]: expected the fields {', '.join(_FIELDS)}")
    ok = (_count(item["seq"]) and isinstance(item["action_id"], str) and item["execution"] in EXECUTIONS
          and item["finished"] in FINISHED and isinstance(item["details"], list)
          and all(isinstance(d, str) for d in item["details"])
          and isinstance(item["cancel"], bool) and isinstance(item["final"], bool)
          and isinstance(item["queued_at"], (int, float)) and not isinstance(item["queued_at"], bool)
          and (item["progress"] is None or isinstance(item["progress"], list) and len(item["progress"]) == 2))
    if not ok:
        raise StateError(f"entries[{index}]: a field has the wrong type: {item!r}")
    pair = item["progress"]
    try:
        progress = _progress((pair[0], pair[1])) if pair is not None else None
    except ValueError as exc:
        raise StateError(f"entries[{index}]: {exc}") from None
    return PendingFeedback(item["seq"], item["action_id"], item["execution"], item["finished"],
                           tuple(item["details"]), progress, item["cancel"], item["final"],
                           float(item["queued_at"]))
