"""The daemon status file: throttled writes on a fake clock, phase changes at once, the transfer
rate, and read_status telling a live daemon from a dead or silent one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from otad import durable
from otad.errors import StateError
from otad.hawkbit import publish
from otad.hawkbit.publish import NOT_RUNNING, DaemonPhase, DaemonStatus, StatusPublisher, read_status


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "daemon.json")  # the directory is created on the first write


def on_disk(path: str) -> Dict[str, Any]:
    body: Dict[str, Any] = json.loads(Path(path).read_text())
    return body


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> List[bytes]:
    writes: List[bytes] = []
    real = durable.atomic_write

    def spy(target: Any, data: bytes, mode: Any = None) -> None:
        writes.append(data)
        real(target, data, mode)

    monkeypatch.setattr(publish, "atomic_write", spy)
    return writes


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this pid now (reuse within the test is unlikely)


# ----------------------------------------------------------------------------- publishing


def test_the_first_publish_writes_at_once_with_pid_and_server(path: str, clock: Clock) -> None:
    pub = StatusPublisher(path, clock=clock, wall_clock=lambda: 1_800_000_000.0)
    pub.publish(phase=DaemonPhase.STARTING, server="https://hawkbit.example.com")
    body = on_disk(path)
    assert body["pid"] == os.getpid() and body["phase"] == "starting"
    assert body["server"] == "https://hawkbit.example.com" and body["updated_at"] == 1_800_000_000.0
    assert read_status(path, clock=clock) == pub.status


def test_writes_are_throttled_to_one_per_interval(path: str, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = counting_writes(monkeypatch)
    pub = StatusPublisher(path, min_interval_s=1.0, clock=clock)
    pub.publish(phase=DaemonPhase.DOWNLOADING, action_id="7", bytes_done=0, bytes_total=1000)
    for step in range(1, 10):
        clock.now += 0.1
        pub.publish(bytes_done=step * 10)
    assert len(writes) == 1 and on_disk(path)["bytes_done"] == 0
    clock.now += 0.1  # one second after the first write
    pub.publish(bytes_done=100)
    assert len(writes) == 2 and on_disk(path)["bytes_done"] == 100


def test_a_phase_change_is_written_at_once(path: str, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = counting_writes(monkeypatch)
    pub = StatusPublisher(path, min_interval_s=60.0, clock=clock)
    pub.publish(phase=DaemonPhase.POLLING)
    clock.now += 0.01
    pub.publish(phase=DaemonPhase.DOWNLOADING, action_id="7")
    clock.now += 0.01
    pub.publish(last_error="throttled")  # same phase: held back
    assert len(writes) == 2 and on_disk(path)["phase"] == "downloading" and on_disk(path)["last_error"] is None
    pub.flush()
    assert len(writes) == 3 and on_disk(path)["last_error"] == "throttled"
    pub.flush()
    assert len(writes) == 3  # nothing new


def test_the_rate_comes_from_bytes_over_a_sliding_window(path: str, clock: Clock) -> None:
    pub = StatusPublisher(path, clock=clock)
    pub.publish(phase=DaemonPhase.DOWNLOADING, bytes_done=0)
    assert pub.status.rate_bps is None  # one sample
    for _ in range(5):
        clock.now += 1.0
        pub.publish(bytes_done=pub.status.bytes_done + 100_000)
    assert pub.status.rate_bps == pytest.approx(100_000)
    for _ in range(20):  # a slower link: the window forgets the fast start
        clock.now += 1.0
        pub.publish(bytes_done=pub.status.bytes_done + 10_000)
    assert pub.status.rate_bps == pytest.approx(10_000)
    clock.now += 10.0
    pub.publish()  # a stall: no new bytes for a whole window
    assert pub.status.rate_bps == pytest.approx(0.0)


def test_the_rate_survives_callers_that_report_every_chunk(path: str, clock: Clock) -> None:
    pub = StatusPublisher(path, clock=clock)
    pub.publish(phase=DaemonPhase.DOWNLOADING, bytes_done=0)
    for _ in range(10_000):
        clock.now += 0.001
        pub.publish(bytes_done=pub.status.bytes_done + 1_000)  # 1 MB/s in 1 kB chunks
    assert pub.status.rate_bps == pytest.approx(1_000_000)
    assert len(pub._samples) <= 50


def test_the_rate_restarts_with_a_new_transfer_and_is_none_outside_one(path: str, clock: Clock) -> None:
    pub = StatusPublisher(path, clock=clock)
    pub.publish(phase=DaemonPhase.DOWNLOADING, bytes_done=0)
    clock.now += 1.0
    pub.publish(bytes_done=5000)
    assert pub.status.rate_bps == pytest.approx(5000)
    clock.now += 1.0
    pub.publish(bytes_done=0)  # restarted from 0 (a 200 to a Range request)
    assert pub.status.rate_bps is None
    pub.publish(phase=DaemonPhase.IDLE)
    assert pub.status.rate_bps is None


def test_close_writes_stopped_at_once(path: str, clock: Clock) -> None:
    pub = StatusPublisher(path, min_interval_s=3600, clock=clock)
    pub.publish(phase=DaemonPhase.IDLE, next_poll_in_s=300.0)
    pub.close()
    status = read_status(path, clock=clock)
    assert status is not None and status.phase is DaemonPhase.STOPPED and not status.running
    assert status.next_poll_in_s is None


def test_unknown_fields_and_phases_are_caller_bugs(path: str) -> None:
    pub = StatusPublisher(path)
    with pytest.raises(ValueError, match="unknown field 'pid'"):
        pub.publish(pid=1)
    with pytest.raises(ValueError, match="phase: expected a DaemonPhase the daemon can be in, got 'idle'"):
        pub.publish(phase="idle")  # the word, not the phase
    with pytest.raises(ValueError, match="got <DaemonPhase.NOT_RUNNING"):
        pub.publish(phase=NOT_RUNNING)


def test_daemon_phases_are_written_and_read_as_the_same_words(path: str) -> None:
    """daemon.json keeps its words: a file of the previous otad still reads."""
    pub = StatusPublisher(path)
    pub.publish(phase=DaemonPhase.WAITING_WINDOW, action_id="7")
    assert json.loads(Path(path).read_text())["phase"] == "waiting_window"
    body = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps(dict(body, phase="backoff")))
    status = read_status(path)
    assert status is not None and status.phase is DaemonPhase.BACKOFF
    Path(path).write_text(json.dumps(dict(body, phase="not running")))
    with pytest.raises(StateError, match="phase: expected one of starting, idle, .*got 'not running'"):
        read_status(path)


def test_a_failed_write_is_logged_once_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pub = StatusPublisher(str(blocker / "daemon.json"), min_interval_s=0)
    pub.publish(phase=DaemonPhase.IDLE)
    pub.publish(phase=DaemonPhase.POLLING)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot write" in caplog.text


# ----------------------------------------------------------------------------- reading


def test_no_file_means_no_status(path: str) -> None:
    assert read_status(path) is None


def test_a_dead_pid_reads_as_not_running(path: str, clock: Clock) -> None:
    StatusPublisher(path, clock=clock).publish(phase=DaemonPhase.DOWNLOADING, action_id="7", bytes_done=10)
    body = on_disk(path)
    body["pid"] = dead_pid()
    Path(path).write_text(json.dumps(body))
    status = read_status(path, clock=clock)
    assert status is not None and status.phase == NOT_RUNNING and not status.running
    assert status.action_id == "7" and status.bytes_done == 10  # the last known progress stays visible


def test_a_file_from_an_earlier_boot_reads_as_not_running(path: str, clock: Clock) -> None:
    StatusPublisher(path, clock=clock).publish(phase=DaemonPhase.IDLE)
    body = on_disk(path)
    body["boot_id"] = "00000000-0000-0000-0000-000000000000"  # our pid, but another boot
    Path(path).write_text(json.dumps(body))
    status = read_status(path, clock=clock)
    assert status is not None and status.phase == NOT_RUNNING


def test_a_live_daemon_is_stale_only_after_its_announced_poll_plus_the_margin(path: str, clock: Clock) -> None:
    StatusPublisher(path, clock=clock).publish(phase=DaemonPhase.IDLE, next_poll_in_s=3600.0)
    clock.now += 3600 + 599
    assert read_status(path, clock=clock, stale_after_s=600).phase is DaemonPhase.IDLE  # type: ignore[union-attr]
    clock.now += 2
    assert read_status(path, clock=clock, stale_after_s=600).phase == NOT_RUNNING  # type: ignore[union-attr]


@pytest.mark.parametrize("content, message", [
    (b"{", "daemon.json: not JSON"),
    (b'{"format": 1, "pid": 1}', "phase: expected str"),
    (b'{"format": 1, "pid": "1", "phase": "idle"}', "pid: expected int"),
    (b'{"format": 9}', "unreadable daemon status: format: expected 1, got 9"),
])
def test_a_corrupt_status_is_a_state_error_naming_the_file(path: str, content: bytes, message: str) -> None:
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(content)
    with pytest.raises(StateError, match=message) as info:
        read_status(path)
    assert info.value.where == path


def test_a_newer_writer_with_more_fields_is_still_read(path: str, clock: Clock) -> None:
    StatusPublisher(path, clock=clock).publish(phase=DaemonPhase.IDLE)
    body = on_disk(path)
    body["temperature_c"] = 51.5
    Path(path).write_text(json.dumps(body))
    assert isinstance(read_status(path, clock=clock), DaemonStatus)
