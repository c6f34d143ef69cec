"""`otad status` during and after an install, and stop requests mid-install, with real processes on
the simulated device (issue 9 §4): installing (lock held: pid, percent), interrupted (after
SIGKILL, or SIGTERM/SIGHUP/SIGINT: exit 130, one line, record marked), installed."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from otad.hawkbit.deployment import HEAD_BYTES
from otad.install.status import TargetState, TargetStatusStore
from otad.lock import RECORD_FILE, Holder, WriterLock
from otad.sim.device import SimDevice, make_image, otad_command
from tests.hawkbit_fakes import DdiFake, wait_until
from tests.pki import Pki
from tests.unit.hawkbit.test_agent import IMAGE_BYTES, Rig, make_rig, sim_bundle

ACTION = "8"
HOLD_AT = 0.5  # the stalled download and the stdin feed stop at half the bundle


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f


@pytest.fixture
def rig(tmp_path: Path, fake: DdiFake, pki: Pki) -> Rig:
    # A stall longer than the read timeout would end in a reconnect: the hold must outlast the test.
    return make_rig(tmp_path, fake, pki, read_timeout_s=60)


def otad(sim: SimDevice, *args: str, **kw: Any) -> "subprocess.Popen[str]":
    return subprocess.Popen(otad_command() + ["--config", str(sim.layout.config), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def status(sim: SimDevice) -> Tuple[str, Dict[str, Any]]:
    text = sim.otad("status", check=True).stdout
    doc = json.loads(sim.otad("status", "--json", check=True).stdout)
    return text, doc


def slot_line(text: str, name: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(f"slot {name} ")]
    return line


def slot_doc(doc: Dict[str, Any], name: str) -> Dict[str, Any]:
    [slot] = [s for s in doc["slots"] if s["name"] == name]
    return slot


def holder_at_work(sim: SimDevice) -> Holder:
    """The writer lock's holder once it reports progress."""
    lock = WriterLock(str(sim.layout.state_dir))
    assert wait_until(lambda: (lock.holder() or Holder(0, "", "")).done_bytes, 30), "no install made progress"
    holder = lock.holder()
    assert holder is not None
    return holder


def stalled_daemon(rig: Rig) -> "subprocess.Popen[str]":
    data = rig.bundle("2.0")
    rig.fake.offer(ACTION, data, version="2.0")
    rig.fake.fault("artifact")  # the bundle's head comes first, as asked; the rest stalls
    rig.fake.fault("artifact", stall_after=int(len(data) * HOLD_AT) - HEAD_BYTES, stall_s=60,
                   release=threading.Event())
    return otad(rig.sim, "run", "--once", "--no-reboot")


def test_status_shows_the_install_in_progress_then_interrupted_after_sigkill_then_installed(rig: Rig) -> None:
    daemon = stalled_daemon(rig)
    try:
        holder = holder_at_work(rig.sim)
        assert (holder.pid, holder.slot, holder.activity) == (daemon.pid, "b", "installing into slot b")
        text, doc = status(rig.sim)
        percent = holder.percent
        assert percent is not None and 10 <= percent <= 60
        assert slot_line(text, "b").startswith(f"slot b /dev/mmcblk0p3: installing (pid {daemon.pid}, ")
        assert f"writer:  pid {daemon.pid} (otad --config {rig.sim.layout.config} run --once --no-reboot) " \
               f"is installing into slot b since " in text
        b = slot_doc(doc, "b")
        assert (b["state"], b["install_state"], b["installed_version"]) == ("installing", "installing", None)
        assert doc["writer"]["pid"] == daemon.pid and doc["writer"]["slot"] == "b"
        after = WriterLock(str(rig.sim.layout.state_dir)).holder()  # status took nothing away from the daemon
        assert after is not None and after.pid == daemon.pid and daemon.poll() is None
    finally:
        daemon.kill()
        daemon.communicate()

    text, doc = status(rig.sim)
    b = slot_doc(doc, "b")
    assert (b["state"], b["install_state"], b["installed_version"]) == ("interrupted", "interrupted", None)
    assert "half-written" in slot_line(text, "b") and doc["writer"] is None and "writer:" not in text

    rig.fake.clear_faults()
    assert rig.sim.otad("run", "--once", "--no-reboot").returncode == 0  # the lock died with the daemon
    text, doc = status(rig.sim)
    b = slot_doc(doc, "b")
    assert (b["state"], b["install_state"], b["installed_version"]) == ("trial", "installed", "2.0")
    assert slot_line(text, "b").endswith("version 2.0 [next]")


def test_sigterm_stops_the_daemons_install_cleanly_and_it_exits_0(rig: Rig) -> None:
    daemon = stalled_daemon(rig)
    holder_at_work(rig.sim)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err  # the init script's stop
    assert "terminated while installing slot b; slot b marked not installed" in err and "Traceback" not in err
    record = TargetStatusStore(str(rig.sim.layout.state_dir / "targets.json")).get(str(rig.sim.layout.slot_path("b")))
    assert record is not None and (record.state, record.version) == (TargetState.INTERRUPTED, "2.0")
    assert not rig.closed(), "a stop request is not a failed install"
    assert not (rig.sim.layout.state_dir / RECORD_FILE).exists()

    rig.fake.clear_faults()
    assert rig.sim.otad("run", "--once", "--no-reboot").returncode == 0
    assert rig.sim.read_slot("b", IMAGE_BYTES) == make_image("2.0", size=IMAGE_BYTES)


@pytest.mark.parametrize("signum,line", [
    (signal.SIGTERM, "otad: terminated while installing slot b; slot b marked not installed"),
    (signal.SIGHUP, "otad: terminated while installing slot b; slot b marked not installed"),
    (signal.SIGINT, "otad: interrupted while installing slot b; slot b marked not installed"),
])
def test_a_stop_signal_mid_install_exits_130_with_one_line_and_marks_the_slot(
        tmp_path: Path, pki: Pki, signum: int, line: str) -> None:
    sim = SimDevice.create(tmp_path / "sim", trust_file=pki.ca_pem)
    sim.boot()
    data = sim_bundle(tmp_path, pki, "2.0")
    install = subprocess.Popen(otad_command() + ["--config", str(sim.layout.config), "install", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert install.stdin is not None
    install.stdin.write(data[:int(len(data) * HOLD_AT)])
    install.stdin.flush()
    holder = holder_at_work(sim)
    assert holder.pid == install.pid and holder.slot == "b"
    text, _ = status(sim)
    assert slot_line(text, "b").startswith(f"slot b /dev/mmcblk0p3: installing (pid {install.pid}, ")
    install.send_signal(signum)
    _, err_bytes = install.communicate(timeout=30)
    err = err_bytes.decode()
    assert install.returncode == 130, err
    problems: List[str] = [x for x in err.splitlines() if not x.startswith(("otad: INFO:", "otad: WARNING:"))]
    assert problems == [line]
    record = TargetStatusStore(str(sim.layout.state_dir / "targets.json")).get(str(sim.layout.slot_path("b")))
    assert record is not None and record.state is TargetState.INTERRUPTED
    text, doc = status(sim)
    b = slot_doc(doc, "b")
    assert (b["state"], b["install_state"], b["installed_version"]) == ("interrupted", "interrupted", None)
    assert doc["writer"] is None and sim.env()["rootpart"] == "2" and sim.env()["upgrade_available"] == "0"


def test_an_idle_daemon_holds_no_lock_so_env_set_works_and_sigterm_exits_0(tmp_path: Path, fake: DdiFake,
                                                                            pki: Pki) -> None:
    from otad.hawkbit.publish import DaemonPhase, read_status

    rig = make_rig(tmp_path, fake, pki, poll_max_s=2)  # the first poll comes soon, then it sleeps
    daemon = otad(rig.sim, "run", "--no-reboot")
    try:
        status_file = str(rig.sim.layout.state_dir / "daemon.json")
        assert wait_until(lambda: (read_status(status_file) or _starting()).phase is DaemonPhase.IDLE, 30)
        done = rig.sim.otad("env", "set", "admin_note=set beside the daemon")
        assert done.returncode == 0, done.stderr
        assert rig.sim.env()["admin_note"] == "set beside the daemon"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0 and "Traceback" not in err, err
    assert read_status(status_file).phase is DaemonPhase.STOPPED  # type: ignore[union-attr]


def _starting() -> Any:
    from otad.hawkbit.publish import DaemonPhase, DaemonStatus

    return DaemonStatus(pid=0, phase=DaemonPhase.STARTING)
