"""init.d/S98otad run by sh (dash) and BusyBox sh against a fake otad, with and without the
optional tools (start-stop-daemon, timeout, logger) that a minimal BusyBox system may lack."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "init.d" / "S98otad"
BUSYBOX = shutil.which("busybox")

FAKE_OTAD = """#!/bin/sh
# Fake otad: records its arguments; "confirm" exits $FAKE_CONFIRM_RC (or hangs), "run" idles.
echo "$*" >>"$FAKE_LOG"
case " $* " in
*" confirm "*)
	echo "health check: disk ok"
	echo "confirmed slot b"
	[ "$FAKE_CONFIRM_RC" = hang ] && exec sleep 60
	exit "${FAKE_CONFIRM_RC:-0}"
	;;
*" run "*)
	if [ "$FAKE_IGNORE_TERM" = 1 ]; then trap '' TERM; else trap 'exit 0' TERM; fi
	while :; do sleep 0.1; done
	;;
esac
"""
FAKE_LOGGER = """#!/bin/sh
# Fake logger: appends the message instead of writing to this machine's syslog.
while [ $# -gt 0 ]; do case "$1" in -t) shift 2 ;; --) shift; break ;; *) break ;; esac; done
echo "$*" >>"$FAKE_SYSLOG"
"""
# What the script needs from PATH beyond the shell's builtins.
CORE_TOOLS = ("tr", "grep", "cat", "rm", "sleep")
OPTIONAL_TOOLS = ("start-stop-daemon", "timeout")


class InitScript:
    """S98otad in a sandbox: tmp pid file, fake otad and logger, a chosen shell and PATH."""

    def __init__(self, root: Path, shell: List[str], tools: str) -> None:
        self.root = root
        self.shell = [shutil.which(shell[0]) or shell[0]] + shell[1:]  # PATH below is the sandbox's
        self.log = root / "otad.calls"
        self.syslog = root / "syslog"
        self.pidfile = root / "run" / "otad.pid"
        self.pidfile.parent.mkdir()
        self.bin = root / "bin"
        self.bin.mkdir()
        self._write_exec(self.bin / "otad", FAKE_OTAD)
        self._write_exec(self.bin / "logger", FAKE_LOGGER)
        self._link_tools(tools)
        self.defaults = root / "default-otad"
        self.set_defaults()
        self.env: Dict[str, str] = {
            "PATH": str(self.bin),
            "OTAD_DEFAULTS": str(self.defaults),
            "FAKE_LOG": str(self.log),
            "FAKE_SYSLOG": str(self.syslog),
        }

    @staticmethod
    def _write_exec(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def _link_tools(self, tools: str) -> None:
        """"host": the machine's tools; "busybox": BusyBox applets; "minimal": no optional ones."""
        names = CORE_TOOLS + (OPTIONAL_TOOLS if tools != "minimal" else ()) + ("sh",)
        for name in names:
            target = BUSYBOX if tools == "busybox" else shutil.which(name)
            assert target, f"{name} not found"
            (self.bin / name).symlink_to(target)

    def set_defaults(self, **extra: str) -> None:
        values = {"OTAD": str(self.bin / "otad"), "PIDFILE": str(self.pidfile),
                  "CONFIG": str(self.root / "otad.conf"), "OTAD_ARGS": "-v", **extra}
        self.defaults.write_text("".join(f"{k}='{v}'\n" for k, v in values.items()))

    def __call__(self, action: str, **env: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            self.shell + [str(SCRIPT), action], env={**self.env, **env}, capture_output=True,
            text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        )

    def calls(self, expect: int = 0) -> List[str]:
        """The fake's recorded calls, after waiting (5 s at most) for `expect` of them: a daemon
        that start-stop-daemon backgrounds may record its call after the script has returned."""
        deadline = time.monotonic() + 5
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if len(lines) >= expect or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def start(self, **env: str) -> "subprocess.CompletedProcess[str]":
        """Run "start" and wait until the daemon has recorded its call and its pid file exists."""
        runs = sum(" run " in f" {c} " for c in self.calls())
        result = self("start", **env)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if sum(" run " in f" {c} " for c in self.calls()) > runs and self.pid() is not None:
                break
            time.sleep(0.02)
        return result

    def pid(self) -> Optional[int]:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def daemons(self) -> List[int]:
        """Live fake daemons: processes whose command line is the fake otad's run, less the
        fake's own children between fork and exec of its `sleep` (same command line)."""
        found: Dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if str(self.bin / "otad").encode() in cmdline and b"run" in cmdline:
                found[int(entry.name)] = ppid
        return sorted(pid for pid, ppid in found.items() if ppid not in found)

    def cleanup(self) -> None:
        for pid in self.daemons():
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; only its parent (not us) could reap it.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


SHELLS = [pytest.param((["sh"], "host"), id="sh"), pytest.param((["sh"], "minimal"), id="sh-minimal")]
SHELLS += [
    pytest.param(([BUSYBOX or "busybox", "sh"], "busybox"), id="busybox", marks=pytest.mark.skipif(
        BUSYBOX is None, reason="busybox not installed (apt-get install busybox)")),
    pytest.param(([BUSYBOX or "busybox", "sh"], "minimal"), id="busybox-minimal", marks=pytest.mark.skipif(
        BUSYBOX is None, reason="busybox not installed (apt-get install busybox)")),
]


@pytest.fixture(params=SHELLS)
def init(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InitScript]:
    shell, tools = request.param
    script = InitScript(tmp_path, shell, tools)
    yield script
    script.cleanup()


def test_start_confirms_then_runs_the_daemon(init: InitScript) -> None:
    result = init.start()
    assert result.returncode == 0, result.stdout + result.stderr
    config = str(init.root / "otad.conf")
    assert init.calls(expect=2) == [f"--config {config} -v confirm", f"--config {config} -v run"]
    pid = init.pid()
    assert pid is not None and alive(pid)
    assert init.daemons() == [pid]
    assert "confirm: confirmed slot b" in init.syslog.read_text()
    status = init("status")
    assert status.returncode == 0 and f"running (pid {pid})" in status.stdout


def test_stop_ends_the_daemon_and_status_says_3(init: InitScript) -> None:
    init.start()
    pid = init.pid()
    assert pid is not None
    result = init("stop")
    assert result.returncode == 0, result.stderr
    assert not alive(pid) and init.daemons() == []
    assert not init.pidfile.exists()
    assert init("status").returncode == 3


def test_start_twice_keeps_one_daemon(init: InitScript) -> None:
    init.start()
    first = init.pid()
    result = init("start")
    assert result.returncode == 0 and "already running" in result.stdout
    assert init.pid() == first and init.daemons() == [first]
    assert [c.split()[-1] for c in init.calls()] == ["confirm", "run"]  # no second confirm either


def test_restart_replaces_the_daemon(init: InitScript) -> None:
    init.start()
    first = init.pid()
    result = init("restart")
    assert result.returncode == 0, result.stderr
    init.calls(expect=4)
    second = init.pid()
    assert second is not None and second != first
    assert init.daemons() == [second]
    assert [c.split()[-1] for c in init.calls()] == ["confirm", "run", "confirm", "run"]


def test_failed_confirm_still_starts_the_daemon_to_report_it(init: InitScript) -> None:
    result = init.start(FAKE_CONFIRM_RC="3")
    assert result.returncode == 0
    assert "confirm failed (exit 3)" in result.stdout
    assert len(init.daemons()) == 1 and init("status").returncode == 0


def test_hanging_confirm_is_cut_off_when_timeout_exists(init: InitScript) -> None:
    if not (init.bin / "timeout").exists():
        pytest.skip("this PATH has no timeout(1): confirm is not bounded there")
    init.set_defaults(CONFIRM_TIMEOUT="1")
    started = time.monotonic()
    result = init.start(FAKE_CONFIRM_RC="hang")
    assert time.monotonic() - started < 20
    assert "confirm failed" in result.stdout
    assert len(init.daemons()) == 1


def test_stop_kills_a_daemon_that_ignores_term(init: InitScript) -> None:
    init.set_defaults(STOP_TIMEOUT="1")
    init.start(FAKE_IGNORE_TERM="1")
    pid = init.pid()
    assert pid is not None
    result = init("stop")
    assert "killing pid" in result.stdout
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_stale_pid_file_is_not_running(init: InitScript) -> None:
    init.pidfile.write_text("999999\n")
    assert init("status").returncode == 1  # LSB: dead, pid file exists
    assert init("stop").returncode == 0 and not init.pidfile.exists()
    assert init("status").returncode == 3


def test_pid_file_naming_another_process_is_never_signalled(init: InitScript) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        init.pidfile.write_text(f"{other.pid}\n")
        assert init("status").returncode == 1
        init("stop")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_unknown_action_prints_usage(init: InitScript) -> None:
    result = init("bogus")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_script_parses_with_dash_n() -> None:
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(SCRIPT)], check=True)


def test_start_without_otad_installed_does_not_fail_the_boot(init: InitScript) -> None:
    # A removed (not purged) package leaves the script behind; BusyBox's rcS runs it anyway.
    init.set_defaults(OTAD=str(init.root / "bin" / "no-such-otad"))
    result = init("start")
    assert result.returncode == 0, result.stderr
    assert "not installed" in result.stdout
    assert init.calls() == [] and init.pid() is None
