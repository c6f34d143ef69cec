"""otad.process runs real programs: output kept and logged, heartbeat, timeout, the group killed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List

import pytest

from otad.process import MAX_OUTPUT_BYTES, run_program


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_running_program_feeds_the_heartbeat_and_its_output_is_kept() -> None:
    """The watchdog is petted on progress events; a 300 s script must keep producing them."""
    beats: List[float] = []
    result = run_program(["/bin/sh", "-c", "echo out; echo err >&2; sleep 2.3"], timeout_s=10,
                         heartbeat=lambda: beats.append(time.monotonic()))
    assert result.status == 0 and not result.timed_out
    assert result.stdout == b"out\n" and result.stderr == b"err\n"
    assert len(beats) >= 2


def test_the_last_bytes_of_a_long_output_are_kept() -> None:
    result = run_program(["/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo END >&2; echo LAST"],
                         timeout_s=20)
    assert len(result.stdout) == MAX_OUTPUT_BYTES and result.stdout.endswith(b"xxLAST\n")
    assert result.tail().endswith("END")


def test_merged_output_keeps_the_order_it_was_written_in() -> None:
    result = run_program(["/bin/sh", "-c", "echo one; echo two >&2; echo three"], timeout_s=10, merge_output=True)
    assert result.stdout == b"one\ntwo\nthree\n" and result.stderr == b""


def test_each_line_is_logged_under_the_given_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="otad.process"):
        run_program(["/bin/sh", "-c", "printf 'a\\nb'"], timeout_s=10, log_as="postinst x.sh")
    assert [r.getMessage() for r in caplog.records] == ["postinst x.sh: a", "postinst x.sh: b"]


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    result = run_program(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout_s=1)
    assert result.timed_out and result.status == -9
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_a_missing_program_is_an_oserror_for_the_caller_to_name(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        run_program([str(tmp_path / "none")], timeout_s=1)
