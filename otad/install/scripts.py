"""Programs run during an install: the bundle's shell scripts at their phase, and the tools
(e2fsck, resize2fs, debugfs, mount) the handlers call, a failure of either an InstallError.
Running a program (own session, timeout, process group killed, output logged, heartbeat) is
otad.process'. Which script runs in which phase with which arguments is SWUpdate 2022.12's
(handlers/shell_scripthandler.c); when a phase comes is the installer's decision.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from otad.errors import ImageError, InstallError
from otad.install.pipeline import FdSink
from otad.process import Heartbeat, ProgramResult, run_program
from otad.swu.manifest import Script

log = logging.getLogger(__name__)

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
# SWUpdate's run_system_cmd() hands a script two extra log pipes on fd 3 and fd 4 and names
# them in the environment; scripts write `echo msg >&$SWUPDATE_INFO_FD`. otad points both at
# the script's stdout/stderr, which go to its log.
_FD_WRAPPER = 'exec "$0" "$@" 3>&1 4>&2'
SCRIPT_ENV = {"SWUPDATE_INFO_FD": "3", "SWUPDATE_WARN_FD": "4"}


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
    def open(self, filename: str) -> Iterator[FdSink | _CountingSink]:
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
            yield FdSink(fd, MAX_SCRIPT_BYTES)
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
