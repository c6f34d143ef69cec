"""sd_notify for systemd's Type=notify and WatchdogSec=, without needing systemd-python.

`notify` sends READY=1 / WATCHDOG=1 / STATUS=... to $NOTIFY_SOCKET: through `systemd.daemon` when
the optional [systemd] extra is installed, else as the one datagram sd_notify(3) sends. Without
systemd (SysV init on the Pi) both functions are cheap no-ops; neither ever raises.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Optional

log = logging.getLogger(__name__)

_systemd_notify: Optional[Callable[[str], bool]]
try:  # the optional [systemd] extra; it needs libsystemd.so.0 at import time
    from systemd import daemon as _daemon  # type: ignore[import-not-found, unused-ignore]

    _systemd_notify = _daemon.notify
except (ImportError, OSError):  # not installed, or libsystemd.so.0 missing: send the datagram
    _systemd_notify = None


def notify(*lines: str) -> bool:
    """Send `lines` ("READY=1", "WATCHDOG=1", "STATUS=...") as one message; True if it went out.

    False when there is no $NOTIFY_SOCKET (not started by systemd with Type=notify) or the send
    failed. A newline inside a line would start a new assignment, so it becomes a space.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines)
    if _systemd_notify is not None:
        try:
            return bool(_systemd_notify(message))
        except Exception as exc:  # a foreign library must not stop the daemon over a status line
            log.debug("sd_notify via systemd.daemon failed: %s", exc)
            return False
    return _send(address, message.encode("utf-8", "replace"))


def _send(address: str, data: bytes) -> bool:
    if address.startswith("@"):
        target = "\0" + address[1:]  # Linux abstract namespace
    elif address.startswith("/"):
        target = address
    else:
        log.debug("NOTIFY_SOCKET %r: only path and abstract sockets are supported", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(data, target)
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False
    return True


def watchdog_interval_s() -> Optional[float]:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, or None when systemd's watchdog is
    off or meant for another process ($WATCHDOG_PID names someone else)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
