"""A fake /dev/watchdog with the kernel's ioctl surface, for tests and the simulated device.

`FakeWatchdogDevice` answers open/ioctl/write/close the way the Linux watchdog core does
with bcm2835_wdt behind it, records every call, and tells from an injected clock whether
the simulated board would have been reset. It knows nothing about what otad does with it.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from typing import Any, Callable, List, Literal, Optional, Tuple, Union

from otad.boot.watchdog import (
    WATCHDOG_INFO,
    WDIOC_GETBOOTSTATUS,
    WDIOC_GETSTATUS,
    WDIOC_GETSUPPORT,
    WDIOC_GETTIMELEFT,
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETOPTIONS,
    WDIOC_SETTIMEOUT,
    WDIOF_KEEPALIVEPING,
    WDIOF_MAGICCLOSE,
    WDIOF_SETTIMEOUT,
    WDIOS_DISABLECARD,
    WDIOS_ENABLECARD,
    DeviceWatchdog,
)

Call = Tuple[Union[str, int, bytes], ...]
SetTimeoutMode = Literal["clamp", "reject", "emulate"]

BCM2835_IDENTITY = "Broadcom BCM2835 Watchdog timer"
BCM2835_OPTIONS = WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING  # 0x8180

_NAMES = {
    WDIOC_GETSUPPORT: "GETSUPPORT",
    WDIOC_GETSTATUS: "GETSTATUS",
    WDIOC_GETBOOTSTATUS: "GETBOOTSTATUS",
    WDIOC_SETOPTIONS: "SETOPTIONS",
    WDIOC_KEEPALIVE: "KEEPALIVE",
    WDIOC_SETTIMEOUT: "SETTIMEOUT",
    WDIOC_GETTIMEOUT: "GETTIMEOUT",
    WDIOC_GETTIMELEFT: "GETTIMELEFT",
}
_INT = struct.Struct("=i")
# The core refuses timeouts whose milliseconds overflow an unsigned int.
_UINT_MAX_S = 0xFFFFFFFF // 1000


def _oserror(code: int, detail: Optional[str] = None) -> OSError:
    message = os.strerror(code) if detail is None else f"{os.strerror(code)}: {detail}"
    return OSError(code, message)


class FakeWatchdogDevice:
    """Stands in for /dev/watchdog backed by bcm2835_wdt (options 0x8180, identity
    'Broadcom BCM2835 Watchdog timer', 15 s hardware maximum) and records every call.

    `settimeout_mode` picks how WDIOC_SETTIMEOUT answers a request above `max_timeout_s`:
    ``"clamp"`` writes back the maximum (what many drivers do); ``"reject"`` fails with
    EINVAL and keeps the old timeout (bcm2835_wdt before Linux commit f33f5b1fd1be, i.e.
    kernels older than v6.7 / the early-2024 stable updates); ``"emulate"`` accepts it and
    the core pings the hardware itself (bcm2835_wdt since then).

    `calls` records ``("open",)``, ``("ioctl", "GETSUPPORT")``,
    ``("ioctl", "SETTIMEOUT", 30, 15)`` (or ``..., 30, "EINVAL")``), ``("keepalive",)``,
    ``("write", b"V")``, ``("close",)``. `kernel_log` holds what the kernel would print.
    """

    def __init__(
        self,
        *,
        max_timeout_s: int = 15,
        options: int = BCM2835_OPTIONS,
        nowayout: bool = False,
        clock: Callable[[], float] = time.monotonic,
        boot_status: int = 0,
        identity: str = BCM2835_IDENTITY,
        firmware_version: int = 0,
        timeout_s: Optional[int] = None,
        settimeout_mode: SetTimeoutMode = "clamp",
        has_timeleft: bool = True,
    ) -> None:
        self.max_timeout_s = max_timeout_s
        self.options = options
        self.nowayout = nowayout
        self.boot_status = boot_status
        self.identity = identity
        self.firmware_version = firmware_version
        self.timeout_s = max_timeout_s if timeout_s is None else timeout_s
        self.settimeout_mode: SetTimeoutMode = settimeout_mode
        self.has_timeleft = has_timeleft
        self.calls: List[Call] = []
        self.kernel_log: List[str] = []
        self.running = False
        self.ever_started = False
        self._clock = clock
        self._last_ping = 0.0
        self._allow_release = False
        self._fd: Optional[int] = None
        self._next_fd = 1000

    # -- what a test asks ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def stopped(self) -> bool:
        """True once the timer ran and was stopped (a close after 'V', no nowayout)."""
        return self.ever_started and not self.running

    def expired(self) -> bool:
        """True when the timer runs and no ping came within the timeout: the simulated
        board would reset now."""
        return self.running and self._clock() - self._last_ping >= self.timeout_s

    def seconds_left(self) -> float:
        return max(0.0, self.timeout_s - (self._clock() - self._last_ping))

    def open_watchdog(
        self, path: str = "/dev/watchdog", *, timeout_s: int = 15, nowayout: Optional[bool] = None
    ) -> DeviceWatchdog:
        """A `DeviceWatchdog` wired to this fake (nowayout defaults to the fake's)."""
        return DeviceWatchdog.open(
            path,
            timeout_s=timeout_s,
            nowayout=self.nowayout if nowayout is None else nowayout,
            ioctl=self.ioctl,
            opener=self.opener,
            writer=self.write,
            closer=self.close,
        )

    # -- the syscalls ----------------------------------------------------------------

    def opener(self, path: str, flags: int) -> int:
        """os.open: the device opens once; a second open gets EBUSY. Opening starts it."""
        if self._fd is not None:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        self._fd = self._next_fd
        self._next_fd += 1
        self.calls.append(("open",))
        self._allow_release = False
        self._start()
        return self._fd

    def ioctl(self, fd: int, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        """fcntl.ioctl: an int argument comes back as the int result; a mutable buffer is
        filled in place (returns 0); a read-only buffer gives the filled copy back."""
        self._check_fd(fd)
        request &= 0xFFFFFFFF
        name = _NAMES.get(request)
        if name is None:
            self.calls.append(("ioctl", hex(request)))
            raise _oserror(errno.ENOTTY)
        if request == WDIOC_KEEPALIVE:  # the argument is never read
            self._keepalive()
            return 0
        size = (request >> 16) & 0x3FFF
        if isinstance(arg, int):
            raise _oserror(errno.EFAULT, f"{name} needs a {size}-byte buffer, got an int")
        view = memoryview(arg).cast("B")
        if len(view) < size:
            raise _oserror(errno.EFAULT, f"{name} needs {size} bytes, buffer has {len(view)}")
        raw = bytearray(view)
        value_in = _INT.unpack_from(raw)[0] if size == _INT.size else 0
        raw[:size] = self._answer(name, value_in)
        if mutate_flag and not view.readonly:
            view[:] = raw
            return 0
        return bytes(raw)

    def write(self, fd: int, data: bytes) -> int:
        """os.write: any write pings; a 'V' in the last write arms the magic close."""
        self._check_fd(fd)
        self.calls.append(("write", bytes(data)))
        self._ping()
        self._allow_release = b"V" in bytes(data)
        return len(data)

    def close(self, fd: int) -> None:
        """os.close: stops the timer after a magic 'V' (or on any close without
        MAGICCLOSE), unless nowayout; otherwise pings once and keeps running."""
        self._check_fd(fd)
        self.calls.append(("close",))
        self._fd = None
        if not self.running:
            return
        if (self._allow_release or not self.options & WDIOF_MAGICCLOSE) and not self.nowayout:
            self.running = False
            return
        if self.nowayout and self._allow_release:
            self.kernel_log.append("nowayout prevents watchdog being stopped!")
        self.kernel_log.append("watchdog did not stop!")
        self._ping()

    # -- the kernel side -------------------------------------------------------------

    def _check_fd(self, fd: int) -> None:
        if self._fd is None or fd != self._fd:
            raise _oserror(errno.EBADF)

    def _start(self) -> None:
        if not self.running:
            self.running = True
            self.ever_started = True
            self._last_ping = self._clock()

    def _ping(self) -> None:
        if self.running:
            self._last_ping = self._clock()

    def _keepalive(self) -> None:
        if not self.options & WDIOF_KEEPALIVEPING:
            self.calls.append(("ioctl", "KEEPALIVE", "EOPNOTSUPP"))
            raise _oserror(errno.EOPNOTSUPP)
        self.calls.append(("keepalive",))
        self._ping()

    def _answer(self, name: str, value_in: int) -> bytes:
        if name == "GETSUPPORT":
            self.calls.append(("ioctl", name))
            ident = self.identity.encode("ascii")[:31]
            return WATCHDOG_INFO.pack(self.options, self.firmware_version, ident)
        if name == "SETTIMEOUT":
            return _INT.pack(self._set_timeout(value_in))
        if name == "SETOPTIONS":
            self.calls.append(("ioctl", name, value_in))
            self._set_options(value_in)
            return _INT.pack(value_in)
        self.calls.append(("ioctl", name))
        if name == "GETSTATUS":
            return _INT.pack(0)
        if name == "GETBOOTSTATUS":
            return _INT.pack(self.boot_status)
        if name == "GETTIMEOUT":
            return _INT.pack(self.timeout_s)
        assert name == "GETTIMELEFT", name
        if not self.has_timeleft:
            raise _oserror(errno.EOPNOTSUPP)
        return _INT.pack(int(self.seconds_left()))

    def _set_timeout(self, wanted: int) -> int:
        if not self.options & WDIOF_SETTIMEOUT:
            self.calls.append(("ioctl", "SETTIMEOUT", wanted, "EOPNOTSUPP"))
            raise _oserror(errno.EOPNOTSUPP)
        limit = self.max_timeout_s if self.settimeout_mode != "emulate" else _UINT_MAX_S
        if self.settimeout_mode == "clamp":
            granted = min(max(wanted, 1), limit)
        elif 1 <= wanted <= limit:
            granted = wanted
        else:
            self.calls.append(("ioctl", "SETTIMEOUT", wanted, "EINVAL"))
            raise _oserror(errno.EINVAL)
        self.calls.append(("ioctl", "SETTIMEOUT", wanted, granted))
        self.timeout_s = granted
        self._ping()  # the core pings after a new timeout so it takes effect
        return granted

    def _set_options(self, flags: int) -> None:
        if flags & WDIOS_DISABLECARD:
            if self.nowayout and self.running:
                self.kernel_log.append("nowayout prevents watchdog being stopped!")
                raise _oserror(errno.EBUSY)
            self.running = False
        if flags & WDIOS_ENABLECARD:
            self._start()
        if not flags & (WDIOS_DISABLECARD | WDIOS_ENABLECARD):
            raise _oserror(errno.EINVAL)
