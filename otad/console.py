"""What a person sees on the terminal: log format and the install progress display.

On a terminal, progress is one redrawn bar; otherwise (a pipe, a log file, syslog) it is a
plain log line every 10 %, so logs stay readable. Nothing here changes any state.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

from otad.progress import Progress


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="otad: %(levelname)s: %(message)s", force=True)


def report_errors(prog: str, debug: bool, call: Callable[[], int]) -> int:
    """Run a command's body; an OtadError becomes one `prog: error: ...` line and its exit code
    (with the traceback only under --debug); a stop request (Ctrl-C, SIGTERM, SIGHUP) one
    `prog: terminated while ...` line and 130. The one top-level handler."""
    from otad.errors import INTERRUPTED, Interrupted, OtadError

    try:
        return call()
    except OtadError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def add_syslog(address: str = "/dev/log") -> None:
    """Also log to syslog (SysV boards have no journald); silently skipped where there is none."""
    import logging.handlers
    import os

    if not os.path.exists(address):
        return
    handler = logging.handlers.SysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    handler.setFormatter(logging.Formatter("otad[%(process)d]: %(levelname)s: %(message)s"))
    logging.getLogger().addHandler(handler)


class ProgressDisplay:
    """A ProgressListener that draws a bar on a TTY, or logs every 10 % elsewhere."""

    def __init__(self, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._clock = clock
        self._started = clock()
        self._last_decile = -1
        self._last_draw = 0.0
        self._log = logging.getLogger("otad.progress")

    def __call__(self, event: Progress) -> None:
        if event.phase == "done":
            self._finish(event)
            return
        if not event.total_bytes or event.phase not in ("image", "delta"):  # delta: in planned bytes
            return
        percent = min(100, event.done_bytes * 100 // event.total_bytes)
        if self._tty:
            now = self._clock()
            if now - self._last_draw >= 0.1 or percent == 100:
                self._last_draw = now
                self._draw(event, percent)
        elif percent // 10 > self._last_decile:
            self._last_decile = percent // 10
            self._log.info("%3d%% %s (%s)", percent, event.item or "", self._rate(event.done_bytes))

    def _draw(self, event: Progress, percent: int) -> None:
        filled = percent * 30 // 100
        bar = "#" * filled + "-" * (30 - filled)
        item = (event.item or "")[:24]
        self._stream.write(f"\r[{bar}] {percent:3d}% {item:<24} {self._rate(event.done_bytes):>12}")
        self._stream.flush()

    def _finish(self, event: Progress) -> None:
        if self._tty and self._last_draw:
            self._stream.write("\n")
            self._stream.flush()

    def _rate(self, done: int) -> str:
        elapsed = max(self._clock() - self._started, 1e-6)
        return f"{done / elapsed / (1 << 20):.1f} MiB/s"


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
