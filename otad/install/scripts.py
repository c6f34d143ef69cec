"""Programs run during an install: the bundle's shell scripts at their phase, and the tools
(e2fsck, resize2fs, debugfs, mount) the handlers call. Each runs in its own session with a
timeout, its process group killed when it ends, its output logged, a heartbeat fed meanwhile.
Which script runs in which phase with which arguments is SWUpdate 2022.12's
(handlers/shell_scripthandler.c); when a phase comes is the installer's decision.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from otad.errors import ImageError, InstallError
from otad.swu.manifest import Script

log = logging.getLogger(__name__)

Heartbeat = Callable[[], None]

PREINST = "preinst"
POSTINST = "postinst"
# type -> the phases it runs in. `shellscript` gets the phase name as $1 (SWUpdate's
# "preinst"/"postinst"); `preinstall`/`postinstall` get no phase argument. All of them get the
# words of the entry's `data` after that (SWUpdate appends `data` to the command line).
SCRIPT_TYPES: Mapping[str, Tuple[str, ...]] = {
    "shellscript": (PREINST, POSTINST),
    "preinstall": (PREINST,),
    "postinstall": (POSTINST,),
}
MAX_SCRIPT_BYTES = 1 << 20  # a script is small; the cap also bounds what is spooled to disk
MAX_OUTPUT_BYTES = 64 << 10  # of a program's stdout/stderr kept for the caller
HEARTBEAT_S = 1.0
_POLL_S = 0.1
# SWUpdate's run_system_cmd() hands a script two extra log pipes on fd 3 and fd 4 and names
# them in the environment; scripts write `echo msg >&$SWUPDATE_INFO_FD`. otad points both at
# the script's stdout/stderr, which go to its log.
_FD_WRAPPER = 'exec "$0" "$@" 3>&1 4>&2'
SCRIPT_ENV = {"SWUPDATE_INFO_FD": "3", "SWUPDATE_WARN_FD": "4"}


@dataclass(frozen=True)
class ProgramResult:
    status: int  # exit status; negative: killed by that signal
    stdout: bytes  # at most MAX_OUTPUT_BYTES of each
    stderr: bytes
    timed_out: bool

    def tail(self, limit: int = 300) -> str:
        text = " ".join((self.stderr or self.stdout).decode("utf-8", "replace").split())
        return text[-limit:]


def run_program(argv: Sequence[str], *, timeout_s: float, heartbeat: Optional[Heartbeat] = None,
                env: Optional[Mapping[str, str]] = None, log_as: Optional[str] = None,
                clock: Callable[[], float] = time.monotonic) -> ProgramResult:
    """Run `argv` (no shell) in its own session; kill its process group after `timeout_s`.

    Output is read as it comes (a chatty program never blocks on a full pipe); with `log_as`
    each line is logged at INFO under that name. `heartbeat` is called about once a second.
    OSError (no such program) propagates for the caller to name.
    """
    import subprocess  # lazy: an install without scripts or tools runs no program

    full_env = dict(os.environ, **env) if env is not None else None
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, cwd="/", env=full_env)
    assert proc.stdout is not None and proc.stderr is not None
    streams = _Streams(proc.stdout.fileno(), proc.stderr.fileno(), log_as)
    timed_out = False
    try:
        with proc.stdout, proc.stderr:
            try:
                timed_out = _watch(proc.pid, streams, clock() + timeout_s, heartbeat, clock)
            finally:
                # Also when otad itself is interrupted: a program must not outlive it. The leader
                # has exited at most, not been reaped, so its pid still names this group only.
                _kill_group(proc.pid)
            streams.drain()
    finally:
        status = proc.wait()
    return ProgramResult(status, bytes(streams.kept[0]), bytes(streams.kept[1]), timed_out)


class _Streams:
    """stdout and stderr of one program: kept up to a cap, logged line by line if asked."""

    def __init__(self, out_fd: int, err_fd: int, log_as: Optional[str]) -> None:
        self.fds = [out_fd, err_fd]
        self.open = {out_fd, err_fd}
        self.kept = (bytearray(), bytearray())
        self._partial = [b"", b""]
        self._log_as = log_as

    def read(self, fd: int) -> None:
        chunk = os.read(fd, 4096)
        index = self.fds.index(fd)
        if not chunk:
            self.open.discard(fd)
            self._log_line(self._partial[index])
            self._partial[index] = b""
            return
        kept = self.kept[index]
        kept += chunk[:max(0, MAX_OUTPUT_BYTES - len(kept))]
        if self._log_as is not None:
            *lines, self._partial[index] = (self._partial[index] + chunk).split(b"\n")
            for line in lines:
                self._log_line(line)
            self._partial[index] = self._partial[index][-4096:]

    def _log_line(self, line: bytes) -> None:
        if self._log_as is not None and line.strip():
            log.info("%s: %s", self._log_as, line.decode("utf-8", "replace").rstrip()[:500])

    def drain(self) -> None:
        """What is left in the pipes; never waits for a writer that escaped the group."""
        import select

        for _ in range(64):
            ready = select.select(sorted(self.open), [], [], 0)[0] if self.open else []
            if not ready:
                return
            for fd in ready:
                self.read(fd)


def _watch(pid: int, streams: _Streams, deadline: float, heartbeat: Optional[Heartbeat],
           clock: Callable[[], float]) -> bool:
    """Read output until the process exits (left unreaped); True if the deadline passed first."""
    import select

    beat = clock()
    while not _exited(pid):
        now = clock()
        if now >= deadline:
            return True
        if heartbeat is not None and now - beat >= HEARTBEAT_S:
            heartbeat()
            beat = now
        wait = min(deadline - now, _POLL_S)
        if not streams.open:
            time.sleep(wait)
            continue
        for fd in select.select(sorted(streams.open), [], [], wait)[0]:
            streams.read(fd)
    return False


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (WNOWAIT)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty (apart from the unreaped leader)


def run_tool(argv: Sequence[str], what: str, *, timeout_s: float, heartbeat: Optional[Heartbeat] = None,
             ok_status: Tuple[int, ...] = (0,)) -> ProgramResult:
    """Run a system tool; InstallError naming `what` (the target) unless it exits in `ok_status`."""
    try:
        result = run_program(argv, timeout_s=timeout_s, heartbeat=heartbeat)
    except OSError as exc:
        raise InstallError(f"cannot run {argv[0]}: {exc.strerror or exc}", what) from exc
    if result.timed_out:
        raise InstallError(f"{argv[0]} did not finish within {timeout_s:g} s", what)
    if result.status not in ok_status:
        raise InstallError(f"{' '.join(argv[:2])} failed (exit status {result.status}): {result.tail()}", what)
    return result


class SpoolSink:
    """Writes a member to a new private file; refuses more than `capacity` bytes."""

    def __init__(self, fd: int, capacity: int) -> None:
        self._fd = fd
        self.capacity: Optional[int] = capacity

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


class _CountingSink:
    def __init__(self, capacity: int) -> None:
        self.capacity: Optional[int] = capacity

    def write(self, data: bytes) -> None:
        pass


def script_phases(script: Script) -> Tuple[str, ...]:
    """The phases `script` runs in; ImageError naming it for a type otad does not run."""
    phases = SCRIPT_TYPES.get(script.type)
    if phases is not None:
        return phases
    if script.type == "lua":
        why = ("Lua scripts are not supported: otad runs no Lua (`lua` is also the default when "
               "`type` is missing); expected type = \"shellscript\", \"preinstall\" or \"postinstall\"")
    else:
        why = f"no script handler for type {script.type!r} (have: {', '.join(sorted(SCRIPT_TYPES))})"
    raise ImageError(why, script.filename, where=f"script {script.filename!r}")


def script_argv(path: str, script: Script, phase: str) -> List[str]:
    """SWUpdate runs `sh -c "<path> <phase> <data>"` (phase empty for preinstall/postinstall).
    otad runs the file itself (a file without #! still runs under /bin/sh) and splits `data`
    with shell quoting rules, but expands nothing: no $VAR, no $(...)."""
    import shlex

    args = [phase] if script.type == "shellscript" else []
    return ["/bin/sh", "-c", _FD_WRAPPER, path, *args, *shlex.split(script.data or "")]


class ScriptRunner:
    """Spools the bundle's scripts into a private directory and runs them phase by phase.

    The directory (mode 0700) is made under `work_dir` (the state directory, on disk: /tmp is
    RAM on the target) when the first script arrives, and removed with everything in it when
    the runner closes. A script runs only after its member passed the sha256 check.
    """

    def __init__(self, work_dir: Optional[str], *, timeout_s: float, heartbeat: Optional[Heartbeat] = None,
                 dry_run: bool = False) -> None:
        self._work_dir = work_dir
        self._timeout_s = timeout_s
        self._heartbeat = heartbeat
        self._dry_run = dry_run
        self._dir: Optional[str] = None
        self._spooled: Dict[str, str] = {}
        self.ran: List[Tuple[str, str]] = []  # (filename, phase), in order

    def __enter__(self) -> ScriptRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _private_dir(self, filename: str) -> str:
        if self._dir is None:
            if self._work_dir is None:
                raise InstallError("no work directory for scripts (system.state_dir)", f"script {filename!r}")
            try:
                os.makedirs(self._work_dir, mode=0o700, exist_ok=True)
                self._dir = tempfile.mkdtemp(prefix="scripts-", dir=self._work_dir)
            except OSError as exc:
                raise InstallError(f"cannot create a private directory for scripts: {exc.strerror}",
                                   self._work_dir) from exc
        return self._dir

    @contextmanager
    def open(self, filename: str) -> Iterator[SpoolSink | _CountingSink]:
        """A sink for the member `filename`; the spooled file is kept only if the stream (and
        with it the sha256 check) completes without an exception."""
        if self._dry_run:
            yield _CountingSink(MAX_SCRIPT_BYTES)
            return
        path = os.path.join(self._private_dir(filename), filename.replace("/", "_"))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
        except OSError as exc:
            raise InstallError(f"cannot spool the script: {exc.strerror}", path) from exc
        done = False
        try:
            yield SpoolSink(fd, MAX_SCRIPT_BYTES)
            done = True
        finally:
            os.close(fd)
            if done:
                self._spooled[filename] = path
            else:
                os.unlink(path)

    def run_phase(self, phase: str, scripts: Sequence[Script]) -> None:
        """Run every script of `phase` in sw-description order; the first failure raises."""
        for script in scripts:
            if phase not in script_phases(script):
                continue
            if self._dry_run:
                log.info("dry run: not running %s script %s", phase, script.filename)
                continue
            path = self._spooled.get(script.filename)
            assert path is not None, f"script {script.filename} run before it was received"
            self._run(script, path, phase)

    def _run(self, script: Script, path: str, phase: str) -> None:
        where = f"script {script.filename!r}"
        log.info("running %s script %s (%s)", phase, script.filename, script.type)
        argv = script_argv(path, script, phase)
        try:
            result = run_program(argv, timeout_s=self._timeout_s, heartbeat=self._heartbeat, env=SCRIPT_ENV,
                                 log_as=f"{phase} {script.filename}")
        except OSError as exc:
            raise InstallError(f"cannot run /bin/sh: {exc.strerror or exc}", where) from exc
        self.ran.append((script.filename, phase))
        if result.timed_out:
            raise InstallError(f"{phase} script did not finish within {self._timeout_s:g} s "
                               "(install.script_timeout_s); it was killed", where)
        if result.status != 0:
            how = f"was killed by signal {-result.status}" if result.status < 0 else f"exited with {result.status}"
            tail = result.tail()
            raise InstallError(f"{phase} script {how}" + (f": {tail}" if tail else ""), where)
