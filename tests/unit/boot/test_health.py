"""Health checks run as real shell commands: exit status, output tail, timeouts, process groups."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

import pytest

from otad.boot.health import TAIL_BYTES, HealthResult, run_check, run_checks


def alive(pid: int) -> bool:
    """Running or stopped, not gone and not a zombie (a container's init may be slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_dead(pids: List[int], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def read_pids(path: Path) -> List[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return [int(p) for p in text.split()]
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


def test_no_checks_is_healthy() -> None:
    assert run_checks([], 1) == HealthResult(True, ())


def test_passing_checks_are_healthy() -> None:
    result = run_checks(["true", "test -d /", "exit 0"], 5)
    assert result.ok and result.failures == ()
    assert result.describe() == "all health checks passed"


def test_failing_check_reports_status_and_output_tail() -> None:
    result = run_checks(["true", "echo 'network down: no route' >&2; exit 3"], 5)
    assert not result.ok
    assert result.failures == ("\"echo 'network down: no route' >&2; exit 3\": exit status 3: network down: no route",)


def test_every_check_runs_and_every_failure_is_listed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run_checks(["false", f"touch {marker}", "exit 7"], 5)
    assert marker.exists()
    assert [f.split(": ")[1] for f in result.failures] == ["exit status 1", "exit status 7"]


def test_output_tail_is_bounded() -> None:
    problem = run_check("head -c 100000 /dev/zero | tr '\\0' x; echo END; exit 1", 10)
    assert problem is not None
    assert problem.endswith("END") and len(problem) < TAIL_BYTES + 100


def test_check_killed_by_a_signal_says_so() -> None:
    problem = run_check("kill -TERM $$", 5)
    assert problem == "'kill -TERM $$': killed by signal 15"


def test_missing_shell_is_a_failure_not_an_exception(tmp_path: Path) -> None:
    problem = run_check("true", 5, shell=str(tmp_path / "no-sh"))
    assert problem is not None and "cannot run" in problem and "no-sh" in problem


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = f"sleep 100 & a=$!; sleep 100 & echo $a $! > {pids}; wait"
    started = time.monotonic()
    problem = run_check(command, 0.5)
    elapsed = time.monotonic() - started
    assert problem is not None and "timed out after 0.5 s" in problem
    assert elapsed < 5
    children = read_pids(pids)
    assert len(children) == 2
    assert wait_dead(children), f"background children survived the timeout: {children}"


def test_timeout_of_a_check_that_ignores_sigterm() -> None:
    started = time.monotonic()
    problem = run_check("trap '' TERM; while :; do sleep 0.05; done", 0.3)
    assert problem is not None and "timed out" in problem
    assert time.monotonic() - started < 5


def test_background_children_left_by_a_passing_check_are_killed_not_waited_for(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    problem = run_check(f"sleep 100 & echo $! > {pids}; echo ok", 30)
    assert problem is None
    assert time.monotonic() - started < 5  # the child holds stdout open, yet nobody waits for it
    assert wait_dead(read_pids(pids))


def test_check_that_closes_stdout_is_still_timed(tmp_path: Path) -> None:
    problem = run_check("exec >&- 2>&-; sleep 100", 0.3)
    assert problem is not None and "timed out" in problem


def test_check_runs_without_stdin_in_root_dir() -> None:
    assert run_check('test "$(pwd)" = / && ! read line', 5) is None


@pytest.mark.parametrize("timeout_s", [0.2, 1])
def test_timeout_is_per_check(timeout_s: float) -> None:
    result = run_checks(["sleep 0.05", "sleep 0.05"], timeout_s)
    assert result.ok


def test_results_do_not_leak_file_descriptors() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run_check("echo hi; exit 1", 5)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_an_interrupted_otad_takes_the_running_check_with_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] > 3 and pids.exists() and pids.read_text().endswith("\n"):
            raise KeyboardInterrupt
        return time.monotonic()

    with pytest.raises(KeyboardInterrupt):
        run_check(f"sleep 100 & echo $! > {pids}; sleep 100", 30, clock=clock)
    assert wait_dead(read_pids(pids))
