"""The writer lock (otad.lock): busy at once with the holder named, holder records that are never
torn and never believed without the flock, and a lock that dies with its holder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otad.errors import BusyError
from otad.lock import RECORD_FILE, Holder, WriterLock, _flock_owner
from otad.progress import Progress

BUSY_LINE = re.compile(r"busy: pid (\d+) \((.*)\) is (.*) since \d\d:\d\d:\d\d")


def test_a_second_writer_is_busy_at_once_and_told_who_holds_the_lock(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "state"))
    with lock.acquire("installing", command="otad install big.swu") as held:
        held.doing("installing into slot b", slot="b")
        started = time.monotonic()
        with pytest.raises(BusyError) as info:
            WriterLock(str(tmp_path / "state")).acquire("setting U-Boot env variables")
        assert time.monotonic() - started < 5  # it does not wait for the holder
    assert info.value.exit_code == 75
    match = BUSY_LINE.fullmatch(str(info.value))
    assert match is not None, str(info.value)
    assert match.groups() == (str(os.getpid()), "otad install big.swu", "installing into slot b")
    assert lock.holder() is None and not (tmp_path / "state" / RECORD_FILE).exists()
    with lock.acquire("confirming the boot"):  # released: free for the next writer
        pass


def test_holder_is_read_without_taking_the_lock_and_shows_progress(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path))
    assert lock.holder() is None
    with lock.acquire("installing into slot b", slot="b", command="otad run") as held:
        held.progress(Progress("image", "rootfs.img", 37, 100))
        holder = lock.holder()
        assert holder is not None
        assert (holder.pid, holder.command, holder.slot, holder.percent) == (os.getpid(), "otad run", "b", 37)
        assert holder.installing_into("b") and not holder.installing_into("a")
        with pytest.raises(BusyError):  # reading the holder took nothing away from it
            lock.acquire("installing")
    assert lock.holder() is None


def test_progress_is_written_once_per_percent_or_once_a_second_for_an_unknown_size(tmp_path: Path) -> None:
    now = [100.0]
    lock = WriterLock(str(tmp_path))
    with lock.acquire("installing") as held:
        held._clock = lambda: now[0]  # a fake clock for the throttle
        record = tmp_path / RECORD_FILE

        def written() -> object:
            return json.loads(record.read_text())["done_bytes"]

        for done, shown in ((10, 10), (15, 10), (19, 10), (20, 20), (1000, 1000)):
            held.progress(Progress("image", None, done, 1000))
            assert written() == shown, done  # 10..19 are the same 1 %
        held.doing("installing into slot b", slot="b")
        for done, shown, later in ((10, 10, 0.0), (30, 10, 0.5), (35, 35, 0.6), (40, 35, 0.1)):
            now[0] += later
            held.progress(Progress("image", None, done, None))  # stdin: no size, so no percent
            assert written() == shown, done


def test_a_reader_never_sees_a_torn_record(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path))
    bad: list = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                text = (tmp_path / RECORD_FILE).read_text()
            except FileNotFoundError:
                bad.append("missing")
                continue
            try:
                json.loads(text)
            except ValueError:
                bad.append(text)

    with lock.acquire("installing into slot b", slot="b") as held:
        reader = threading.Thread(target=read)
        reader.start()
        try:
            for n in range(300):
                held.doing(f"installing into slot b ({'x' * (n % 97)})", slot="b")
        finally:
            stop.set()
            reader.join()
    assert not bad, bad[:3]


def test_a_stale_record_blocks_nobody_and_is_not_shown(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = Holder(int(dead.stdout), "otad install old.swu", "installing into slot b", "b", time.time())
    (tmp_path / RECORD_FILE).write_text(json.dumps(stale.to_dict()))
    (tmp_path / "writer.lock").touch()
    lock = WriterLock(str(tmp_path))
    assert lock.holder() is None
    with lock.acquire("installing", command="otad install new.swu"):
        holder = lock.holder()
        assert holder is not None and holder.command == "otad install new.swu"


def test_the_lock_dies_with_its_holder_under_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from otad.lock import WriterLock\n"
        "held = WriterLock(sys.argv[1]).acquire('installing into slot b', slot='b', command='otad install x.swu')\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        lock = WriterLock(str(tmp_path))
        holder = lock.holder()
        assert holder is not None and holder.pid == child.pid and holder.slot == "b"
        busy = f"busy: pid {child.pid} \\(otad install x.swu\\) is installing into slot b"
        with pytest.raises(BusyError, match=busy):
            lock.acquire("installing")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert (tmp_path / RECORD_FILE).exists()  # its record stays behind ...
    assert lock.holder() is None  # ... and is not believed
    with lock.acquire("installing"):
        pass


def test_a_holder_without_a_record_yet_is_named_by_its_pid(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path))
    with lock.acquire("installing"):
        (tmp_path / RECORD_FILE).unlink()  # as between another writer's flock and its first record
        with pytest.raises(BusyError, match=f"busy: pid {os.getpid()} holds the writer lock {tmp_path}/writer.lock"):
            lock.acquire("installing")


def test_proc_locks_lines_name_the_flock_holder_and_skip_waiters_and_posix_locks() -> None:
    lines = ["1: POSIX  ADVISORY  WRITE 77 fe:00:42 0 EOF",
             "2: FLOCK  ADVISORY  WRITE 4242 fe:00:42 0 EOF",
             "2: -> FLOCK  ADVISORY  WRITE 5151 fe:00:42 0 EOF",
             "3: FLOCK  ADVISORY  WRITE 99 fe:00:43 0 EOF"]
    assert _flock_owner(lines, "fe:00:42") == 4242
    assert _flock_owner(lines[2:3], "fe:00:42") is None  # a waiter does not hold it
    assert _flock_owner(lines, "fe:01:42") is None


def test_without_proc_locks_a_live_record_pid_counts(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path), proc_locks=str(tmp_path / "no-proc-locks"))
    with lock.acquire("installing", command="otad install x.swu"):
        holder = lock.holder()
        assert holder is not None and holder.pid == os.getpid()
    assert lock.holder() is None


def test_a_command_that_may_run_without_otads_state_dir_takes_no_lock_there(tmp_path: Path) -> None:
    missing = tmp_path / "no-state"
    with WriterLock(str(missing)).acquire("setting U-Boot env variables", create=False) as held:
        assert not held.held
    assert not missing.exists()
