"""Crash points: named places where a test cuts otad's power to prove its write order.

`reached(name)` does nothing unless `OTAD_CRASH_AT` or `OTAD_CRASH_LIST` was set when this
module was imported (read once: the disabled cost is one call and one test of a global).
`OTAD_CRASH_AT=name` makes the process SIGKILL itself the first time `name` is reached,
`name#k` the k-th time. `OTAD_CRASH_LIST=path` appends each point reached to `path` as
``name#k<TAB>where``, so tests discover the points instead of listing them. The tests and
what each point guards: tests/reliability/test_power_cut.py, docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Dict, List, Optional, Tuple

CRASH_AT = "OTAD_CRASH_AT"
CRASH_LIST = "OTAD_CRASH_LIST"


def parse_target(text: Optional[str]) -> Optional[Tuple[str, int]]:
    """`name` or `name#k` (k ≥ 1) → (name, k); None for an unset or empty value."""
    if not text:
        return None
    name, sep, count = text.rpartition("#")
    if sep and name and count.isdigit() and int(count) >= 1:
        return name, int(count)
    return text, 1


_AT = parse_target(os.environ.get(CRASH_AT))
_LIST = os.environ.get(CRASH_LIST) or None
_ACTIVE = _AT is not None or _LIST is not None
_counts: Dict[str, int] = {}
_lock = threading.Lock()


def reached(name: str) -> None:
    """Mark crash point `name`; kills the process (SIGKILL, no cleanup) when it is the target."""
    if not _ACTIVE:
        return
    _hit(name)


def _hit(name: str) -> None:
    with _lock:
        count = _counts[name] = _counts.get(name, 0) + 1
        if _LIST is not None:
            _append(_LIST, f"{name}#{count}\t{_where()}\n")
        if _AT == (name, count):
            # A power cut as far as otad's own files go: no finally, no atexit, no flush.
            os.kill(os.getpid(), signal.SIGKILL)


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def _where() -> str:
    """Which file a durable write is replacing and the otad functions that led here (only
    computed while listing): ``state.json: state.transition < boot.trial.arm_after_install``."""
    frame: Optional[FrameType] = sys._getframe(3)  # _where ← _hit ← reached ← the caller
    assert frame is not None
    path = frame.f_locals.get("path") if frame.f_code.co_name == "replacing" else None
    chain: List[str] = []
    while frame is not None and len(chain) < 4:
        module = str(frame.f_globals.get("__name__", "?"))
        if module.startswith("otad.") and module != "otad.durable":
            chain.append(f"{module[len('otad.'):]}.{frame.f_code.co_name}")
        frame = frame.f_back
    head = f"{os.path.basename(os.fspath(path))}: " if isinstance(path, (str, os.PathLike)) else ""
    return head + " < ".join(chain)
