"""`otad status`'s slot picture against real env and state files: each slot's state (trial, good,
installing, interrupted, bad, inactive) from the state, the env, the install records as
otad.update hands them over, and the writer lock's holder; unreadable parts become problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import pytest

from otad.boot import slotstatus
from otad.boot.slots import BootedSlot
from otad.install.status import INSTALLED, INSTALLING, INTERRUPTED, TargetStatusStore
from otad.lock import Holder
from otad.update import slot_installs
from tests.unit.boot.test_trial import SIZE, TABLE, A, Rig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_status_during_a_trial(rig: Rig, tmp_path: Path) -> None:
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark("/dev/mmcblk0p3", INSTALLED, version="2.0", sha256="ab" * 32)
    rig.arm("2.0")
    report = slotstatus.status(rig.store(), rig.chooser(), BootedSlot(A, "kernel command line otad.rootpart=2"),
                               installs=slot_installs(targets, TABLE, "/dev"))
    assert report.booted == "a" and report.booted_evidence == "kernel command line otad.rootpart=2"
    assert report.env_slot == "b" and report.phase == "trial_armed"
    assert dict(report.env) == {"rootpart": "3", "upgrade_available": "1", "bootcount": "0", "bootlimit": "3",
                                "otad_prev": "2"}
    assert report.pending_trial is not None and report.pending_trial["target_slot"] == "b"
    assert report.mismatch == ("the U-Boot env's rootpart='3' selects slot b for the next boot; the running slot "
                               "is a (kernel command line otad.rootpart=2)")
    a, b = report.slots
    assert (a.name, a.booted, a.next_boot, a.state) == ("a", True, False, "good")
    assert (b.name, b.booted, b.next_boot, b.state, b.installed_version, b.install_state) == (
        "b", False, True, "trial", "2.0", "installed")
    json.dumps(report.to_dict())


def test_status_after_a_fallback_shows_the_bad_slot_and_why(rig: Rig) -> None:
    rig.arm("2.0")
    for _ in range(4):
        rig.boot()
    rig.confirm(A)
    report = slotstatus.status(rig.store(), rig.chooser(), BootedSlot(A, "test"))
    a, b = report.slots
    assert a.state == "good" and b.state == "bad"
    assert b.note is not None and b.note.startswith("fell_back: the trial of slot b")
    assert report.last_result is not None and report.mismatch is None
    assert report.to_dict()["last_result"]["outcome"] == "fell_back"


def test_status_a_newer_install_clears_the_bad_mark(rig: Rig, tmp_path: Path) -> None:
    rig.arm("2.0")
    for _ in range(4):
        rig.boot()
    rig.confirm(A)
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark("/dev/mmcblk0p3", INSTALLED, version="2.1")
    b = slotstatus.status(rig.store(), rig.chooser(), BootedSlot(A, "test"),
                          installs=slot_installs(targets, TABLE, "/dev")).slots[1]
    assert (b.state, b.installed_version) == ("inactive", "2.1")


WRITER_B = Holder(4242, "otad install big.swu", "installing into slot b", "b", 0.0, 370, 1000)


@pytest.mark.parametrize("record,writer,shown", [
    (INSTALLING, WRITER_B, ("installing", "installing", None, "pid 4242, 37 %")),
    (INSTALLED, WRITER_B, ("installing", "installing", None, "pid 4242, 37 %")),  # planning, record not yet marked
    (INSTALLING, None, ("interrupted", "interrupted", None,
                        "version 2.0 half-written: its process ended mid-write (killed, crashed or power cut)")),
    (INTERRUPTED, None, ("interrupted", "interrupted", None, "version 2.0 half-written: terminated")),
    (INSTALLING, Holder(77, "otad env set a=1", "setting U-Boot env variables", None, 0.0),
     ("interrupted", "interrupted", None,
      "version 2.0 half-written: its process ended mid-write (killed, crashed or power cut)")),
    (INSTALLING, Holder(77, "otad run", "arming slot b", "b", 0.0),
     ("interrupted", "interrupted", None,
      "version 2.0 half-written: its process ended mid-write (killed, crashed or power cut)")),
    (INSTALLED, None, ("inactive", "installed", "2.0", None)),
])
def test_status_tells_installing_from_interrupted_from_installed(rig: Rig, tmp_path: Path, record: str,
                                                                 writer: Optional[Holder],
                                                                 shown: Tuple[str, str, Optional[str], str]) -> None:
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark("/dev/mmcblk0p3", record, version="2.0", reason="terminated" if record == INTERRUPTED else None)
    report = slotstatus.status(rig.store(), rig.chooser(), BootedSlot(A, "test"),
                               installs=slot_installs(targets, TABLE, "/dev", writer), writer=writer)
    b = report.slots[1]
    assert (b.state, b.install_state, b.installed_version, b.note) == shown
    assert report.writer == writer
    doc = report.to_dict()
    assert doc["slots"][1]["installed_version"] == shown[2]
    assert doc["writer"] == (None if writer is None else {**writer.to_dict()})
    json.dumps(doc)


def test_status_reports_unreadable_parts_instead_of_failing(rig: Rig) -> None:
    rig.env_path.write_bytes(b"\xff" * SIZE)
    Path(rig.state_dir).mkdir()
    Path(rig.store().path).write_text("nope")
    report = slotstatus.status(rig.store(), rig.chooser(), None, booted_problem="cannot tell which slot is booted")
    assert report.env_problem is not None and "erased" in report.env_problem
    assert report.state_problem is not None and "not JSON" in report.state_problem
    assert report.booted is None and report.booted_problem == "cannot tell which slot is booted"
    assert [s.state for s in report.slots] == ["inactive", "inactive"]
    json.dumps(report.to_dict())
