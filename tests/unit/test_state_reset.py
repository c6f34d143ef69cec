"""`otad state reset`, the one way on after a record file became unreadable: it sets the file
aside as FILE.corrupt under the writer lock and otad goes on; readable files are left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from otad.lock import WriterLock
from tests.unit.test_update_ab import AbDevice, ab_bundle

GARBAGE = b'{"format": 1, "phase": "trial_armed", '


@pytest.fixture
def ab(tmp_path: Path, pki) -> AbDevice:
    return AbDevice(tmp_path / "ab", pki)


def test_a_corrupt_state_stops_confirm_until_state_reset_sets_it_aside(tmp_path: Path, pki, ab: AbDevice,
                                                                     capsys) -> None:
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    assert ab.power_on() == "3"
    state = ab.root / "state" / "state.json"
    state.write_bytes(GARBAGE)
    env_before = ab.env()
    rc, _, err = ab.otad(capsys, "confirm")
    assert rc == 1 and f"{state}: not JSON" in err
    assert "the file is kept as it is: `otad state reset` sets it aside" in err
    assert ab.env() == env_before and state.read_bytes() == GARBAGE

    rc, out, err = ab.otad(capsys, "state", "reset")
    assert rc == 0, err
    assert out == (f"{state}: unreadable, moved to {state}.corrupt; otad starts idle; an armed trial left in the "
                   "env is confirmed only if the slot is healthy\n")
    assert Path(f"{state}.corrupt").read_bytes() == GARBAGE and not state.exists()

    rc, out, err = ab.otad(capsys, "confirm")
    assert rc == 0, err
    assert ab.env()["upgrade_available"] == "0" and ab.env()["rootpart"] == "3"


def test_readable_state_files_are_left_as_they_are(tmp_path: Path, pki, ab: AbDevice, capsys) -> None:
    assert ab.otad(capsys, "install", ab_bundle(tmp_path, pki))[0] == 0
    state = ab.root / "state" / "state.json"
    before = state.read_bytes()
    rc, out, _ = ab.otad(capsys, "state", "reset")
    assert rc == 0 and out.startswith(f"nothing to reset: {state}, ")
    assert state.read_bytes() == before and not Path(f"{state}.corrupt").exists()


def test_the_daemons_records_are_set_aside_too(ab: AbDevice, capsys) -> None:
    (ab.root / "state").mkdir()
    (ab.root / "state" / "outbox.json").write_bytes(b"[" * 10000)
    (ab.root / "state" / "actions.json").write_bytes(b'{"ended": "all"}')
    rc, out, _ = ab.otad(capsys, "state", "reset")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "actions.json: unreadable, moved to" in lines[0] and "outbox.json" in lines[1]
    assert "feedback not yet delivered is lost" in lines[1]
    assert (ab.root / "state" / "outbox.json.corrupt").read_bytes() == b"[" * 10000


def test_state_reset_waits_for_no_writer(ab: AbDevice, capsys) -> None:
    (ab.root / "state").mkdir()
    state = ab.root / "state" / "state.json"
    state.write_bytes(GARBAGE)
    with WriterLock(str(ab.root / "state")).acquire("installing into slot b", slot="b", command="otad install x"):
        rc, _, err = ab.otad(capsys, "state", "reset")
    assert rc == 75 and "busy: pid" in err
    assert state.read_bytes() == GARBAGE
