"""otad's persistent state: the transition table, the JSON file, and refusing to lose it."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest

from otad import durable
from otad.errors import StateError
from otad.state import (
    TRANSITIONS,
    LastResult,
    Outcome,
    Phase,
    State,
    StateStore,
)

RESULT = LastResult(Outcome.CONFIRMED, "b", "2.0", "slot b committed", 1700000000.5)


class PowerCut(BaseException):
    """The power goes away: nothing after it runs."""


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(str(tmp_path / "state"), clock=lambda: 1700000000.0)


def arm(store: StateStore, **extra: Any) -> State:
    store.transition(Phase.ARMING, target_slot="b", previous_slot="a", version="2.0", armed_at=store.now(), **extra)
    return store.transition(Phase.TRIAL_ARMED)


def write_json(store: StateStore, body: Any) -> None:
    os.makedirs(store.state_dir, exist_ok=True)
    Path(store.path).write_text(json.dumps(body))


def valid_body(**changes: Any) -> Dict[str, Any]:
    body = State(Phase.TRIAL_ARMED, "b", "a", "2.0", 1.0, None, RESULT).to_dict()
    body.update(changes)
    return body


# ----------------------------------------------------------------------------- the table


def test_every_phase_has_a_row_and_only_phases_in_it() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert all(isinstance(p, Phase) for targets in TRANSITIONS.values() for p in targets)


def test_every_phase_can_get_back_to_idle() -> None:
    for phase in Phase:
        seen, todo = {phase}, [phase]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert Phase.IDLE in seen, phase


def test_the_local_install_path_is_allowed(store: StateStore) -> None:
    assert store.load() == State()
    armed = arm(store)
    assert armed.phase is Phase.TRIAL_ARMED and armed.target_slot == "b" and armed.armed_at == 1700000000.0
    done = store.transition(Phase.IDLE, last_result=RESULT)
    assert done == State(last_result=RESULT)


def test_the_daemon_path_is_allowed(store: StateStore) -> None:
    store.transition(Phase.DOWNLOADING, action_id="42", version="2.0", target_slot="b", previous_slot="a")
    store.transition(Phase.DOWNLOADED)
    store.transition(Phase.INSTALLED)
    store.transition(Phase.ARMING)
    store.transition(Phase.TRIAL_ARMED)
    pending = store.transition(Phase.FINAL_PENDING, last_result=RESULT)
    assert pending.action_id == "42" and pending.last_result == RESULT and pending.target_slot == "b"
    assert store.transition(Phase.IDLE) == State(last_result=RESULT)


@pytest.mark.parametrize("current, to", [
    (c, t) for c in Phase for t in Phase if t not in TRANSITIONS[c]
])
def test_illegal_transitions_name_both_phases_and_write_nothing(tmp_path: Path, current: Phase, to: Phase) -> None:
    store = StateStore(str(tmp_path))
    fields: Dict[str, Any] = {"target_slot": "b", "previous_slot": "a"}
    if current is Phase.FINAL_PENDING:
        fields.update(action_id="1", last_result=RESULT)
    state = State(current, **fields) if current is not Phase.IDLE else State()
    Path(store.path).write_text(json.dumps(state.to_dict()))
    before = Path(store.path).read_bytes()
    with pytest.raises(StateError, match=f"illegal transition {current.value} → {to.value}") as info:
        store.transition(to)
    assert info.value.where == store.path
    assert Path(store.path).read_bytes() == before


def test_idle_drops_the_update_fields_and_keeps_the_last_result(store: StateStore) -> None:
    store.transition(Phase.IDLE, last_result=RESULT)
    arm(store, action_id="7")
    state = store.transition(Phase.IDLE)
    assert state == State(last_result=RESULT)


def test_trial_phases_need_both_slots(store: StateStore) -> None:
    with pytest.raises(StateError, match="idle → arming: phase arming: expected target_slot and previous_slot"):
        store.transition(Phase.ARMING, target_slot="b")
    with pytest.raises(StateError, match="target and previous slot are both 'a'"):
        store.transition(Phase.ARMING, target_slot="a", previous_slot="a")
    assert not Path(store.path).exists()


def test_final_pending_needs_an_action_and_a_result(store: StateStore) -> None:
    arm(store)
    with pytest.raises(StateError, match="final_pending: expected action_id and last_result"):
        store.transition(Phase.FINAL_PENDING, last_result=RESULT)


def test_unknown_field_is_a_state_error(store: StateStore) -> None:
    with pytest.raises(StateError, match="idle → arming"):
        store.transition(Phase.ARMING, target_slot="b", previous_slot="a", colour="red")


# ----------------------------------------------------------------------------- the file


def test_state_round_trips_through_a_fresh_store(store: StateStore) -> None:
    arm(store, action_id="99")
    again = StateStore(store.state_dir).load()
    assert again == State(Phase.TRIAL_ARMED, "b", "a", "2.0", 1700000000.0, "99", None)
    body = json.loads(Path(store.path).read_text())
    assert body["format"] == 1 and body["phase"] == "trial_armed"


def test_writes_go_through_atomic_write(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []
    real = durable.atomic_write

    def spy(path: str, data: bytes, mode: Any = None) -> None:
        written.append(path)
        real(path, data, mode)

    monkeypatch.setattr("otad.state.atomic_write", spy)
    arm(store)
    assert written == [store.path, store.path]


def test_power_cut_during_a_write_keeps_the_old_state(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    arm(store)

    def cut(path: str, data: bytes, mode: Any = None) -> None:
        raise PowerCut()

    monkeypatch.setattr("otad.state.atomic_write", cut)
    with pytest.raises(PowerCut):
        store.transition(Phase.IDLE, last_result=RESULT)
    assert StateStore(store.state_dir).load().phase is Phase.TRIAL_ARMED


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "expected UTF-8, got byte 0xff at offset 0"),
    (b"", "not JSON"),
    (b"[" * 100000 + b"]" * 100000, "expected JSON nested at most 16 deep"),
    (json.dumps({"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}).encode(), "expected JSON nested at most 16 deep"),
    (json.dumps(valid_body(armed_at=float("nan"))).encode(), "not JSON: NaN is not a JSON number"),
    (b"[]", "expected a JSON object, got list"),
    (json.dumps(valid_body(format=2)).encode(), "format: expected 1, got 2"),
    (json.dumps(valid_body(phase="confirming")).encode(), "phase: expected one of idle, .*got 'confirming'"),
    (json.dumps(valid_body(extra=1)).encode(), "unknown field 'extra'"),
    (json.dumps(valid_body(target_slot=3)).encode(), "target_slot: expected text or null, got 3"),
    (json.dumps(valid_body(armed_at="now")).encode(), "armed_at: expected a number or null"),
    (json.dumps(valid_body(target_slot=None)).encode(), "expected target_slot and previous_slot"),
    (json.dumps(valid_body(last_result={"outcome": "confirmed"})).encode(), "last_result: expected outcome, slot"),
    (json.dumps(valid_body(last_result=dict(RESULT.to_dict(), outcome="great"))).encode(),
     "last_result.outcome: expected one of confirmed, .*got 'great'"),
    (json.dumps(valid_body(last_result=dict(RESULT.to_dict(), at=True))).encode(), "last_result: expected text"),
    (json.dumps(dict(State().to_dict(), version="1")).encode(), "phase idle: expected no update fields"),
])
def test_corrupt_state_is_an_error_naming_the_file_and_is_kept(store: StateStore, content: bytes, message: str) -> None:
    os.makedirs(store.state_dir)
    Path(store.path).write_bytes(content)
    with pytest.raises(StateError, match=message) as info:
        store.load()
    assert info.value.where == store.path
    assert "kept as it is" in str(info.value)
    with pytest.raises(StateError):
        store.transition(Phase.IDLE)
    assert Path(store.path).read_bytes() == content


def test_oversized_state_file_is_refused(store: StateStore) -> None:
    os.makedirs(store.state_dir)
    Path(store.path).write_bytes(b" " * (2 << 20))
    with pytest.raises(StateError, match="expected a JSON object of at most 1048576 bytes"):
        store.load()


def test_unreadable_state_path_is_a_state_error(store: StateStore) -> None:
    os.makedirs(store.path)  # a directory where the file should be
    with pytest.raises(StateError, match="cannot read") as info:
        store.load()
    assert info.value.where == store.path


def test_state_path_under_a_file_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="Not a directory"):
        StateStore(str(blocker / "state")).transition(Phase.IDLE)


def test_failed_write_is_a_state_error_and_keeps_the_old_state(store: StateStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arm(store)

    def full(path: str, data: bytes, mode: Any = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("otad.state.atomic_write", full)
    with pytest.raises(StateError, match="cannot write: No space left on device") as info:
        store.transition(Phase.IDLE)
    assert info.value.where == store.path
    assert StateStore(store.state_dir).load().phase is Phase.TRIAL_ARMED


def test_reset_sets_a_corrupt_file_aside_and_starts_idle(store: StateStore) -> None:
    os.makedirs(store.state_dir)
    Path(store.path).write_bytes(b"garbage")
    assert store.set_aside_unreadable() == store.path + ".corrupt"
    assert Path(store.path + ".corrupt").read_bytes() == b"garbage"
    assert store.load() == State()


def test_reset_leaves_a_readable_state_as_it_is(store: StateStore) -> None:
    armed = arm(store)
    before = Path(store.path).read_bytes()
    assert store.set_aside_unreadable() is None
    assert store.load() == armed and Path(store.path).read_bytes() == before
    assert not Path(store.path + ".corrupt").exists()


def test_lock_is_exclusive_across_open_files(store: StateStore) -> None:
    with store.lock():
        fd = os.open(store.lock_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(store.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_outcome_failed_is_everything_but_confirmed() -> None:
    assert [o for o in Outcome if not o.failed] == [Outcome.CONFIRMED]
