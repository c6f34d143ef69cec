"""The hardware watchdog: open /dev/watchdog, set its timeout, pet it, close it on purpose.

`DeviceWatchdog` drives the Linux watchdog API (``include/uapi/linux/watchdog.h``) through
injected syscalls, so `otad.sim.watchdog.FakeWatchdogDevice` plugs in without monkeypatching.
`ProgressPetter` ties petting to pipeline progress. When to reboot, and what a watchdog reset
means for the A/B slots, is left to the boot state machine.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
from array import array
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Optional, Protocol, Tuple, Type

from otad.errors import WatchdogError
from otad.progress import Progress

log = logging.getLogger(__name__)

# ioctl numbers from include/uapi/linux/watchdog.h, type 'W'. They follow the generic _IOC
# layout (dir << 30 | size << 16 | type << 8 | nr), the same on armhf and x86_64.
WDIOC_GETSUPPORT = 0x80285700  # _IOR('W', 0, struct watchdog_info): 40 bytes
WDIOC_GETSTATUS = 0x80045701  # _IOR('W', 1, int)
WDIOC_GETBOOTSTATUS = 0x80045702  # _IOR('W', 2, int)
WDIOC_SETOPTIONS = 0x80045704  # _IOR('W', 4, int): the kernel declares it _IOR although it reads
WDIOC_KEEPALIVE = 0x80045705  # _IOR('W', 5, int): argument ignored
WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int): seconds wanted in, seconds set out
WDIOC_GETTIMEOUT = 0x80045707  # _IOR('W', 7, int)
WDIOC_GETTIMELEFT = 0x8004570A  # _IOR('W', 10, int): EOPNOTSUPP on many drivers

WDIOF_CARDRESET = 0x20  # in bootstatus: the last reset came from this watchdog
WDIOF_SETTIMEOUT = 0x80
WDIOF_MAGICCLOSE = 0x100  # close() stops the timer only if the last write held a 'V'
WDIOF_KEEPALIVEPING = 0x8000

WDIOS_DISABLECARD = 0x1
WDIOS_ENABLECARD = 0x2

# struct watchdog_info: __u32 options, __u32 firmware_version, __u8 identity[32].
WATCHDOG_INFO = struct.Struct("=II32s")

# A NullWatchdog never fires; whoever sizes a loop on timeout_s / 3 just wakes rarely.
NULL_TIMEOUT_S = 3600

Opener = Callable[[str, int], int]
Ioctl = Callable[..., Any]
Writer = Callable[[int, bytes], int]
Closer = Callable[[int], None]

_OPEN_REASONS = {
    errno.EBUSY: "device busy (another watchdog daemon or systemd RuntimeWatchdogSec owns it)",
    errno.ENOENT: "no such device (no watchdog driver loaded? on a Raspberry Pi set "
    "dtparam=watchdog=on in config.txt, or run otad without a watchdog)",
    errno.ENODEV: "no such device (the watchdog driver is not bound)",
    errno.ENXIO: "no such device (the watchdog driver is not bound)",
    errno.EACCES: "permission denied (otad must run as root to own the watchdog)",
    errno.EPERM: "permission denied (otad must run as root to own the watchdog)",
    errno.EISDIR: "is a directory, not a watchdog device",
}


@dataclass(frozen=True)
class WatchdogInfo:
    """What WDIOC_GETSUPPORT reports: option bits (WDIOF_*), firmware version, identity."""

    options: int
    firmware_version: int
    identity: str

    @classmethod
    def from_bytes(cls, raw: bytes) -> WatchdogInfo:
        """Decode a 40-byte ``struct watchdog_info`` in native byte order."""
        if len(raw) < WATCHDOG_INFO.size:
            raise WatchdogError(
                f"struct watchdog_info: expected {WATCHDOG_INFO.size} bytes, got {len(raw)}"
            )
        options, firmware_version, identity = WATCHDOG_INFO.unpack_from(raw)
        name = identity.split(b"\0", 1)[0].decode("ascii", errors="replace")
        return cls(options=options, firmware_version=firmware_version, identity=name)

    def supports(self, flag: int) -> bool:
        """True if every bit of `flag` (a WDIOF_* option) is set."""
        return self.options & flag == flag


class Watchdog(Protocol):
    """Something that resets the board unless petted within `timeout_s` seconds."""

    timeout_s: int

    def pet(self) -> None:
        """Restart the timer."""

    def close(self, *, magic: bool = True) -> None:
        """Let go. ``magic=True`` stops the timer (clean exit); ``magic=False`` leaves it
        running, so the board resets after `timeout_s` unless it reboots first."""


def _reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{exc.strerror or exc} ({code})"


def _clean_exit(exc: Optional[BaseException]) -> bool:
    # sys.exit(0) inside the block is a deliberate, clean stop; anything else is a crash.
    return exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))


class DeviceWatchdog:
    """A Linux watchdog device held open by otad (implements `Watchdog`).

    Opening starts the timer. Use it as a context manager: a clean exit writes the magic
    ``'V'`` and stops the timer; an exception leaves the timer running on purpose, so a
    crashed or wedged otad ends in a board reset (and a bootcount rollback) rather than in
    a board that nobody supervises. Before an update reboot call ``close(magic=False)``.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        info: WatchdogInfo,
        timeout_s: int,
        last_reset_was_watchdog: bool,
        *,
        nowayout: bool,
        ioctl: Ioctl,
        writer: Writer,
        closer: Closer,
    ) -> None:
        """Use `DeviceWatchdog.open`; this only records an already configured device."""
        self.path = path
        self.info = info
        self.timeout_s = timeout_s
        self.last_reset_was_watchdog = last_reset_was_watchdog
        self.nowayout = nowayout
        self._fd: Optional[int] = fd
        self._ioctl = ioctl
        self._writer = writer
        self._closer = closer

    @classmethod
    def open(
        cls,
        path: str = "/dev/watchdog",
        *,
        timeout_s: int = 15,
        nowayout: bool = False,
        ioctl: Ioctl = fcntl.ioctl,
        opener: Opener = os.open,
        writer: Writer = os.write,
        closer: Closer = os.close,
    ) -> DeviceWatchdog:
        """Open `path` (which starts the timer), ask for `timeout_s` and keep what the
        driver grants. `nowayout` says the kernel cannot stop this timer at all
        (CONFIG_WATCHDOG_NOWAYOUT or ``nowayout=1``), so close() skips the ``'V'``."""
        if timeout_s < 1:
            raise WatchdogError(f"timeout must be at least 1 s, got {timeout_s!r}", path)
        try:
            fd = opener(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            reason = _OPEN_REASONS.get(exc.errno or 0, _reason(exc))
            raise WatchdogError(f"cannot open: {reason}", path) from exc
        info: Optional[WatchdogInfo] = None
        try:
            info = _get_support(ioctl, fd, path)
            granted, note = _set_timeout(ioctl, fd, path, info, timeout_s)
            last_reset = _last_reset_was_watchdog(ioctl, fd, path)
        except BaseException:
            _abandon(fd, info, nowayout, writer, closer)
            raise
        log.info(
            "watchdog %s: %s, timeout %d s (asked %d s%s), last reset %s",
            path,
            info.identity or "unnamed driver",
            granted,
            timeout_s,
            note,
            "by the watchdog" if last_reset else "not by the watchdog",
        )
        return cls(
            path,
            fd,
            info,
            granted,
            last_reset,
            nowayout=nowayout,
            ioctl=ioctl,
            writer=writer,
            closer=closer,
        )

    @property
    def closed(self) -> bool:
        return self._fd is None

    def pet(self) -> None:
        """Restart the timer: WDIOC_KEEPALIVE if the driver has it, else a write (any write
        pings). Writing ``b"\\0"`` also clears a pending magic ``'V'``."""
        fd = self._open_fd("pet")
        try:
            if self.info.supports(WDIOF_KEEPALIVEPING):
                self._ioctl(fd, WDIOC_KEEPALIVE, 0)
            else:
                self._writer(fd, b"\0")
        except OSError as exc:
            raise WatchdogError(f"keepalive failed: {_reason(exc)}", self.path) from exc

    def time_left_s(self) -> Optional[int]:
        """Seconds until the reset as the driver sees them, or None if it cannot tell."""
        fd = self._open_fd("read the time left of")
        buf = array("i", [0])
        try:
            self._ioctl(fd, WDIOC_GETTIMELEFT, buf, True)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return None
            raise WatchdogError(f"WDIOC_GETTIMELEFT failed: {_reason(exc)}", self.path) from exc
        return buf[0]

    def close(self, *, magic: bool = True) -> None:
        """Close the device. Idempotent.

        ``magic=True``: write ``'V'`` last so the kernel stops the timer (needs
        WDIOF_MAGICCLOSE and no nowayout; a driver without MAGICCLOSE stops on any close).
        ``magic=False``: no ``'V'``; the kernel logs "watchdog did not stop!", pings once
        and the board resets `timeout_s` later unless rebooted first (the update-reboot case).
        """
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        write_v = magic and not self.nowayout and self.info.supports(WDIOF_MAGICCLOSE)
        if write_v:
            try:
                self._writer(fd, b"V")
            except OSError as exc:
                _close_quietly(self._closer, fd)
                raise WatchdogError(
                    f"cannot write the magic 'V': {_reason(exc)}; the timer keeps running "
                    f"and the board resets in {self.timeout_s} s",
                    self.path,
                ) from exc
        try:
            self._closer(fd)
        except OSError as exc:
            raise WatchdogError(f"cannot close: {_reason(exc)}", self.path) from exc
        self._log_close(magic)

    def _log_close(self, magic: bool) -> None:
        stops = not self.nowayout and (magic or not self.info.supports(WDIOF_MAGICCLOSE))
        if stops and magic:
            log.info("watchdog %s: stopped", self.path)
        elif stops:
            log.warning(
                "watchdog %s: driver has no magic close, so closing stopped the timer; "
                "the coming reboot is not guarded",
                self.path,
            )
        elif magic:
            log.warning(
                "watchdog %s: nowayout: the timer cannot be stopped, the board resets in "
                "%d s unless something pets it",
                self.path,
                self.timeout_s,
            )
        else:
            log.info(
                "watchdog %s: released without 'V', the board resets in %d s unless it "
                "reboots first",
                self.path,
                self.timeout_s,
            )

    def _open_fd(self, action: str) -> int:
        if self._fd is None:
            raise WatchdogError(f"cannot {action} a closed watchdog", self.path)
        return self._fd

    def __enter__(self) -> DeviceWatchdog:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        # A crash must not stop the watchdog: the reset is what rolls a bad update back.
        self.close(magic=_clean_exit(exc))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"timeout {self.timeout_s} s"
        return f"<DeviceWatchdog {self.path} {self.info.identity!r} {state}>"


def _get_support(ioctl: Ioctl, fd: int, path: str) -> WatchdogInfo:
    buf = bytearray(WATCHDOG_INFO.size)
    try:
        ioctl(fd, WDIOC_GETSUPPORT, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            # A regular file or another character device: ioctl has no such request.
            raise WatchdogError(
                f"not a watchdog device (WDIOC_GETSUPPORT: {_reason(exc)})", path
            ) from exc
        raise WatchdogError(f"WDIOC_GETSUPPORT failed: {_reason(exc)}", path) from exc
    return WatchdogInfo.from_bytes(bytes(buf))


def _set_timeout(
    ioctl: Ioctl, fd: int, path: str, info: WatchdogInfo, wanted_s: int
) -> Tuple[int, str]:
    """Ask for `wanted_s`; return the seconds in force and a note for the log line.

    Drivers answer out-of-range requests differently: bcm2835_wdt before Linux commit
    f33f5b1fd1be (v6.7, stable early 2024) rejects > 15 s with EINVAL; since then the core
    accepts it and pings the hardware itself; others round or clamp. Only what the driver
    reports back counts.
    """
    if info.supports(WDIOF_SETTIMEOUT):
        buf = array("i", [wanted_s])
        try:
            ioctl(fd, WDIOC_SETTIMEOUT, buf, True)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise WatchdogError(
                    f"WDIOC_SETTIMEOUT {wanted_s} s failed: {_reason(exc)}", path
                ) from exc
        else:
            return _checked_timeout(buf[0], "WDIOC_SETTIMEOUT", path), ""
        note = ", driver refused it"
    else:
        note = ", driver cannot change it"
    return _get_timeout(ioctl, fd, path, wanted_s), note


def _get_timeout(ioctl: Ioctl, fd: int, path: str, wanted_s: int) -> int:
    buf = array("i", [0])
    try:
        ioctl(fd, WDIOC_GETTIMEOUT, buf, True)
    except OSError as exc:
        raise WatchdogError(
            f"cannot set the timeout to {wanted_s} s nor read the driver's timeout "
            f"(WDIOC_GETTIMEOUT: {_reason(exc)})",
            path,
        ) from exc
    return _checked_timeout(buf[0], "WDIOC_GETTIMEOUT", path)


def _checked_timeout(value: int, source: str, path: str) -> int:
    if value < 1:
        raise WatchdogError(f"{source} reported a timeout of {value} s, expected >= 1", path)
    return value


def _last_reset_was_watchdog(ioctl: Ioctl, fd: int, path: str) -> bool:
    buf = array("i", [0])
    try:
        ioctl(fd, WDIOC_GETBOOTSTATUS, buf, True)
    except OSError as exc:
        # Not worth refusing to start over: the answer is informational only.
        log.debug("watchdog %s: no boot status (%s)", path, _reason(exc))
        return False
    return bool(buf[0] & WDIOF_CARDRESET)


def _abandon(
    fd: int, info: Optional[WatchdogInfo], nowayout: bool, writer: Writer, closer: Closer
) -> None:
    """Close a device whose setup failed. Nobody will pet it, so stop it if it is a
    watchdog that can be stopped; never write into something that is not a watchdog."""
    if info is not None and not nowayout and info.supports(WDIOF_MAGICCLOSE):
        try:
            writer(fd, b"V")
        except OSError:
            pass
    _close_quietly(closer, fd)


def _close_quietly(closer: Closer, fd: int) -> None:
    try:
        closer(fd)
    except OSError:
        pass  # the error being raised already says what went wrong


class NullWatchdog:
    """A watchdog that is not there (implements `Watchdog`): for machines without one and
    for dry runs. `timeout_s` is large so nothing needs to hurry on its account."""

    def __init__(self, timeout_s: int = NULL_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def pet(self) -> None:
        pass

    def close(self, *, magic: bool = True) -> None:
        pass

    def __enter__(self) -> NullWatchdog:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close(magic=_clean_exit(exc))


def held_elsewhere(exc: WatchdogError) -> bool:
    """`DeviceWatchdog.open` failed because another process holds the device open (EBUSY: the
    kernel lets one in), which then pets it: a command beside the daemon may go on without it."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno == errno.EBUSY


class ProgressPetter:
    """A `ProgressListener` that pets `watchdog` when the pipeline reports progress.

    It pets on the first event, then at most once per ``timeout_s / 3`` seconds of
    `clock` (monotonic). It never pets on its own: no thread, no timer, so a stalled
    pipeline stops the petting and the board resets. The pipeline therefore has to emit
    an event at least every ``2 * timeout_s / 3`` seconds while it works.
    """

    def __init__(self, watchdog: Watchdog, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._watchdog = watchdog
        self._clock = clock
        self._last_pet: Optional[float] = None

    @property
    def interval_s(self) -> float:
        return self._watchdog.timeout_s / 3

    def __call__(self, event: Progress) -> None:
        now = self._clock()
        if self._last_pet is not None and now - self._last_pet < self.interval_s:
            return
        self._watchdog.pet()
        self._last_pet = now
