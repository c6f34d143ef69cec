"""DeviceWatchdog against the fake bcm2835 device and against a real regular file."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from array import array
from pathlib import Path
from typing import List

import pytest

from otad.boot import watchdog as wd
from otad.boot.watchdog import (
    DeviceWatchdog,
    NullWatchdog,
    ProgressPetter,
    Watchdog,
    WatchdogInfo,
    held_elsewhere,
)
from otad.errors import WatchdogError
from otad.progress import Progress
from otad.sim.watchdog import FakeWatchdogDevice


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def device(clock: FakeClock) -> FakeWatchdogDevice:
    return FakeWatchdogDevice(clock=clock)


def open_on(device: FakeWatchdogDevice, **kwargs: object) -> DeviceWatchdog:
    return DeviceWatchdog.open(
        "/dev/watchdog",
        ioctl=device.ioctl,
        opener=device.opener,
        writer=device.write,
        closer=device.close,
        **kwargs,  # type: ignore[arg-type]
    )


def writes(device: FakeWatchdogDevice) -> List[bytes]:
    return [call[1] for call in device.calls if call[0] == "write"]  # type: ignore[misc]


# -- the kernel ABI ------------------------------------------------------------------

# include/uapi/asm-generic/ioctl.h, computed here independently of otad.
_IOC_WRITE, _IOC_READ = 1, 2


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | ord(type_) << 8 | nr


def _IOR(type_: str, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOWR(type_: str, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


SIZEOF_INT = 4
SIZEOF_WATCHDOG_INFO = 4 + 4 + 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("WDIOC_GETSUPPORT", _IOR("W", 0, SIZEOF_WATCHDOG_INFO)),
        ("WDIOC_GETSTATUS", _IOR("W", 1, SIZEOF_INT)),
        ("WDIOC_GETBOOTSTATUS", _IOR("W", 2, SIZEOF_INT)),
        ("WDIOC_SETOPTIONS", _IOR("W", 4, SIZEOF_INT)),
        ("WDIOC_KEEPALIVE", _IOR("W", 5, SIZEOF_INT)),
        ("WDIOC_SETTIMEOUT", _IOWR("W", 6, SIZEOF_INT)),
        ("WDIOC_GETTIMEOUT", _IOR("W", 7, SIZEOF_INT)),
        ("WDIOC_GETTIMELEFT", _IOR("W", 10, SIZEOF_INT)),
    ],
)
def test_ioctl_numbers_equal_the_kernel_macros(name: str, expected: int) -> None:
    assert getattr(wd, name) == expected


def test_option_bits_equal_the_kernel_header() -> None:
    assert (wd.WDIOF_CARDRESET, wd.WDIOF_SETTIMEOUT) == (0x20, 0x80)
    assert (wd.WDIOF_MAGICCLOSE, wd.WDIOF_KEEPALIVEPING) == (0x100, 0x8000)


def test_watchdog_info_decodes_the_40_byte_struct() -> None:
    raw = struct.pack("=II32s", 0x8180, 7, b"Broadcom BCM2835 Watchdog timer")
    assert len(raw) == 40
    assert WatchdogInfo.from_bytes(raw) == WatchdogInfo(0x8180, 7, "Broadcom BCM2835 Watchdog timer")


def test_watchdog_info_stops_the_identity_at_the_first_nul() -> None:
    raw = struct.pack("=II32s", 0x80, 0, b"softdog\0garbage")
    assert WatchdogInfo.from_bytes(raw).identity == "softdog"


def test_watchdog_info_rejects_a_short_struct() -> None:
    with pytest.raises(WatchdogError, match="expected 40 bytes, got 8"):
        WatchdogInfo.from_bytes(b"\0" * 8)


def test_fake_fills_getsupport_like_fcntl_ioctl(device: FakeWatchdogDevice) -> None:
    fd = device.opener("/dev/watchdog", os.O_WRONLY)
    buf = bytearray(40)
    assert device.ioctl(fd, wd.WDIOC_GETSUPPORT, buf, True) == 0
    info = WatchdogInfo.from_bytes(bytes(buf))
    assert info == WatchdogInfo(0x8180, 0, "Broadcom BCM2835 Watchdog timer")
    # A read-only buffer comes back as a filled copy, as with fcntl.ioctl.
    assert device.ioctl(fd, wd.WDIOC_GETSUPPORT, bytes(40)) == bytes(buf)


def test_fake_answers_unknown_requests_with_enotty(device: FakeWatchdogDevice) -> None:
    fd = device.opener("/dev/watchdog", os.O_WRONLY)
    with pytest.raises(OSError) as info:
        device.ioctl(fd, 0x5401, array("i", [0]), True)  # TCGETS
    assert info.value.errno == errno.ENOTTY


# -- opening and the timeout ---------------------------------------------------------


def test_open_reads_support_and_uses_the_timeout_the_driver_grants(
    device: FakeWatchdogDevice,
) -> None:
    watchdog = open_on(device, timeout_s=30)  # the design's 30 s: impossible on the Pi
    assert watchdog.timeout_s == 15
    assert watchdog.info == WatchdogInfo(0x8180, 0, "Broadcom BCM2835 Watchdog timer")
    assert watchdog.last_reset_was_watchdog is False
    assert device.calls[:3] == [
        ("open",),
        ("ioctl", "GETSUPPORT"),
        ("ioctl", "SETTIMEOUT", 30, 15),
    ]
    assert device.timeout_s == 15


def test_open_falls_back_to_the_drivers_timeout_when_settimeout_is_refused(
    clock: FakeClock,
) -> None:
    # bcm2835_wdt before Linux f33f5b1fd1be answers SETTIMEOUT > 15 with EINVAL.
    device = FakeWatchdogDevice(clock=clock, settimeout_mode="reject")
    watchdog = open_on(device, timeout_s=30)
    assert watchdog.timeout_s == 15
    assert ("ioctl", "SETTIMEOUT", 30, "EINVAL") in device.calls
    assert ("ioctl", "GETTIMEOUT") in device.calls


def test_open_keeps_a_timeout_the_kernel_emulates(clock: FakeClock) -> None:
    # Newer kernels accept 30 s on the Pi and ping the 15 s hardware themselves.
    device = FakeWatchdogDevice(clock=clock, settimeout_mode="emulate")
    assert open_on(device, timeout_s=30).timeout_s == 30


def test_open_reads_the_timeout_when_the_driver_cannot_set_it(clock: FakeClock) -> None:
    device = FakeWatchdogDevice(clock=clock, options=0x8100, timeout_s=10)
    watchdog = open_on(device, timeout_s=5)
    assert watchdog.timeout_s == 10
    assert not any(call[:2] == ("ioctl", "SETTIMEOUT") for call in device.calls)


def test_open_records_a_watchdog_reset_from_bootstatus(clock: FakeClock) -> None:
    device = FakeWatchdogDevice(clock=clock, boot_status=wd.WDIOF_CARDRESET)
    assert open_on(device).last_reset_was_watchdog is True


def test_open_rejects_a_timeout_below_one_second(device: FakeWatchdogDevice) -> None:
    with pytest.raises(WatchdogError, match="at least 1 s, got 0"):
        open_on(device, timeout_s=0)
    assert device.calls == []


def test_second_open_is_busy_and_names_the_likely_owner(device: FakeWatchdogDevice) -> None:
    first = open_on(device)
    with pytest.raises(WatchdogError) as info:
        open_on(device)
    assert info.value.where == "/dev/watchdog"
    assert "device busy" in str(info.value)
    assert "RuntimeWatchdogSec" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    first.close()


def test_a_device_held_by_another_process_is_told_from_other_failures(device: FakeWatchdogDevice,
                                                                      tmp_path: Path) -> None:
    owner = open_on(device)  # an idle `otad run`: it holds the device and pets it
    with pytest.raises(WatchdogError) as busy:
        open_on(device)
    assert held_elsewhere(busy.value)
    assert device.running and not device.stopped  # the owner's timer is untouched
    with pytest.raises(WatchdogError) as missing:
        DeviceWatchdog.open(str(tmp_path / "watchdog"))
    assert not held_elsewhere(missing.value)
    owner.close()
    with pytest.raises(WatchdogError) as early:
        open_on(device, timeout_s=0)
    assert not held_elsewhere(early.value)


def test_missing_device_is_a_watchdog_error(tmp_path: Path) -> None:
    path = str(tmp_path / "watchdog")
    with pytest.raises(WatchdogError) as info:
        DeviceWatchdog.open(path)
    assert info.value.where == path
    assert "no such device" in str(info.value)


def test_regular_file_is_not_a_watchdog_device(tmp_path: Path) -> None:
    # Real os.open and real fcntl.ioctl: a regular file answers ENOTTY.
    path = tmp_path / "watchdog"
    path.write_bytes(b"")
    with pytest.raises(WatchdogError) as info:
        DeviceWatchdog.open(str(path), ioctl=fcntl.ioctl, opener=os.open)
    assert info.value.where == str(path)
    assert "not a watchdog device" in str(info.value)
    assert path.read_bytes() == b"", "nothing may be written into a non-watchdog"


def test_failed_setup_stops_the_timer_and_closes_the_device(clock: FakeClock) -> None:
    device = FakeWatchdogDevice(clock=clock, options=0x8100)  # no SETTIMEOUT

    def ioctl_without_gettimeout(fd: int, request: int, arg: object, mutate: bool = True) -> object:
        if request == wd.WDIOC_GETTIMEOUT:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return device.ioctl(fd, request, arg, mutate)

    with pytest.raises(WatchdogError, match="nor read the driver's timeout"):
        DeviceWatchdog.open(
            "/dev/watchdog",
            ioctl=ioctl_without_gettimeout,
            opener=device.opener,
            writer=device.write,
            closer=device.close,
        )
    assert device.calls[-2:] == [("write", b"V"), ("close",)]
    assert device.stopped and not device.is_open


# -- petting -------------------------------------------------------------------------


def test_pet_sends_keepalive_and_restarts_the_timer(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    watchdog = open_on(device)
    clock.advance(14)
    watchdog.pet()
    assert device.calls[-1] == ("keepalive",)
    clock.advance(14)
    assert not device.expired()
    clock.advance(1)
    assert device.expired()


def test_pet_writes_when_the_driver_has_no_keepalive_ioctl(clock: FakeClock) -> None:
    device = FakeWatchdogDevice(clock=clock, options=0x0180)
    watchdog = open_on(device)
    watchdog.pet()
    assert device.calls[-1] == ("write", b"\0")


def test_pet_after_close_is_a_watchdog_error(device: FakeWatchdogDevice) -> None:
    watchdog = open_on(device)
    watchdog.close()
    with pytest.raises(WatchdogError, match="cannot pet a closed watchdog"):
        watchdog.pet()


def test_time_left_comes_from_the_driver(device: FakeWatchdogDevice, clock: FakeClock) -> None:
    watchdog = open_on(device)
    clock.advance(5)
    assert watchdog.time_left_s() == 10


def test_unpetted_device_expires_after_the_timeout(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    open_on(device)
    clock.advance(14.9)
    assert not device.expired()
    clock.advance(0.1)
    assert device.expired()


# -- ProgressPetter ------------------------------------------------------------------


def pets(device: FakeWatchdogDevice) -> int:
    return device.calls.count(("keepalive",))


def test_progress_petter_pets_at_most_every_third_of_the_timeout(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    petter = ProgressPetter(open_on(device), clock=clock)
    assert petter.interval_s == 5.0
    event = Progress("image", "rootfs", 0, 100)
    petter(event)  # the first event pets
    assert pets(device) == 1
    for _ in range(49):  # 4.9 s of events every 0.1 s
        clock.advance(0.1)
        petter(event)
    assert pets(device) == 1
    clock.advance(0.1)
    petter(event)
    assert pets(device) == 2
    for _ in range(100):  # 10 more seconds of steady progress: exactly 2 more pets
        clock.advance(0.1)
        petter(event)
    assert pets(device) == 4
    assert not device.expired()


def test_progress_petter_never_pets_without_progress(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    petter = ProgressPetter(open_on(device), clock=clock)
    petter(Progress("verify"))
    clock.advance(60)  # the pipeline hangs: no events, no pets
    assert pets(device) == 1
    assert device.expired()


def test_progress_petter_is_a_progress_listener_for_any_watchdog(clock: FakeClock) -> None:
    null: Watchdog = NullWatchdog()
    petter = ProgressPetter(null, clock=clock)
    petter(Progress("done"))
    assert petter.interval_s == null.timeout_s / 3


# -- closing -------------------------------------------------------------------------


def test_clean_close_writes_v_last_and_stops_the_timer(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    watchdog = open_on(device)
    watchdog.pet()
    watchdog.close()
    assert device.calls[-2:] == [("write", b"V"), ("close",)]
    assert device.stopped
    clock.advance(100)
    assert not device.expired()
    assert watchdog.closed


def test_close_is_idempotent(device: FakeWatchdogDevice) -> None:
    watchdog = open_on(device)
    watchdog.close()
    watchdog.close()
    assert device.calls.count(("close",)) == 1


def test_close_without_magic_leaves_the_timer_running_until_it_expires(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    watchdog = open_on(device)
    clock.advance(3)
    watchdog.close(magic=False)  # before an update reboot
    assert b"V" not in writes(device)
    assert device.calls[-1] == ("close",)
    assert device.running and not device.stopped
    assert device.kernel_log == ["watchdog did not stop!"]
    clock.advance(14.9)  # the kernel pinged once on release
    assert not device.expired()
    clock.advance(0.1)
    assert device.expired()


def test_nowayout_closes_without_v(clock: FakeClock) -> None:
    device = FakeWatchdogDevice(clock=clock, nowayout=True)
    watchdog = open_on(device, nowayout=True)
    watchdog.close()
    assert b"V" not in writes(device)
    assert device.running
    clock.advance(15)
    assert device.expired()


def test_kernel_nowayout_keeps_running_even_after_v(clock: FakeClock) -> None:
    # otad was not told about nowayout; the kernel still refuses to stop.
    device = FakeWatchdogDevice(clock=clock, nowayout=True)
    open_on(device, nowayout=False).close()
    assert writes(device) == [b"V"]
    assert device.running
    assert "nowayout prevents watchdog being stopped!" in device.kernel_log


def test_exception_inside_with_closes_without_v(
    device: FakeWatchdogDevice, clock: FakeClock
) -> None:
    with pytest.raises(RuntimeError):
        with open_on(device) as watchdog:
            watchdog.pet()
            raise RuntimeError("install crashed")
    assert b"V" not in writes(device)
    assert not device.is_open and device.running
    clock.advance(15)
    assert device.expired()


def test_clean_with_block_stops_the_timer(device: FakeWatchdogDevice) -> None:
    with open_on(device) as watchdog:
        watchdog.pet()
    assert device.calls[-2:] == [("write", b"V"), ("close",)]
    assert device.stopped


def test_sys_exit_zero_inside_with_is_a_clean_stop(device: FakeWatchdogDevice) -> None:
    with pytest.raises(SystemExit):
        with open_on(device):
            raise SystemExit(0)
    assert device.stopped


def test_failed_magic_write_is_a_watchdog_error_and_still_closes(
    device: FakeWatchdogDevice,
) -> None:
    def broken_writer(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    watchdog = DeviceWatchdog.open(
        "/dev/watchdog",
        ioctl=device.ioctl,
        opener=device.opener,
        writer=broken_writer,
        closer=device.close,
    )
    with pytest.raises(WatchdogError, match="cannot write the magic 'V'.*resets in 15 s"):
        watchdog.close()
    assert not device.is_open and device.running


def test_device_reopens_after_a_clean_close(device: FakeWatchdogDevice) -> None:
    open_on(device).close()
    second = open_on(device)
    assert device.running
    second.close()


def test_open_watchdog_helper_wires_the_fake(device: FakeWatchdogDevice) -> None:
    with device.open_watchdog(timeout_s=30) as watchdog:
        assert watchdog.timeout_s == 15
    assert device.stopped


def test_null_watchdog_does_nothing() -> None:
    with NullWatchdog() as null:
        null.pet()
        null.close(magic=False)
    assert null.timeout_s >= 3600


def test_open_logs_one_info_line_with_asked_and_granted_timeout(
    device: FakeWatchdogDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otad.boot.watchdog")
    open_on(device, timeout_s=30)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "timeout 15 s (asked 30 s)" in records[0].getMessage()
