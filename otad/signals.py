"""Stop requests: SIGINT, SIGTERM and SIGHUP end a command the way Ctrl-C does.

Inside `handled()` (cli.main) each of them raises `Interrupted` in the main thread wherever the
command is: an install stops where it is, at the latest before its next chunk is written, and
a wait on a tool, a script or the network ends at once. Callers mark what they leave behind
(otad.install.installer, otad.update) and the CLI prints one line and exits 130. `shielded()`
holds a stop request back across writes that belong together (arming: state, env, state) and
raises it at their end. Only the first request raises; more, while the command winds down
(marking records, releasing the lock), are logged and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Any, Dict, Iterator, Optional

from otad.errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Requests:
    """What the handler knows: shield depth, a held-back request, whether one was raised."""

    def __init__(self) -> None:
        self.shield_depth = 0
        self.pending: Optional[int] = None
        self.raised = False

    def handler(self, signum: int, _frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if self.raised:
            log.warning("%s: already stopping", name)
            return
        if self.shield_depth:
            log.info("%s: stopping once the current write is complete", name)
            self.pending = self.pending or signum
            return
        self.raised = True
        raise Interrupted(signum)

    def take_pending(self) -> Optional[int]:
        signum, self.pending = self.pending, None
        if signum is not None:
            self.raised = True
        return signum


_requests = _Requests()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Stop requests raise Interrupted inside this block (main thread only; elsewhere, and
    outside, the handlers that were there before apply)."""
    global _requests
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requests = _Requests()
    previous: Dict[int, Any] = {signum: signal.signal(signum, _requests.handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """No Interrupted inside this block; a stop request that came meanwhile is raised at its end
    (also when the block fails: a failed write must not swallow a stop request)."""
    requests = _requests
    requests.shield_depth += 1
    try:
        yield
    finally:
        requests.shield_depth -= 1
        signum = requests.take_pending() if requests.shield_depth == 0 else None
        if signum is not None:
            raise Interrupted(signum)
