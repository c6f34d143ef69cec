"""sd_notify without systemd: real AF_UNIX datagram sockets (a path and the abstract namespace)
stand in for systemd's, and $WATCHDOG_USEC / $WATCHDOG_PID decide the watchdog interval."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from typing import Iterator, List, Tuple

import pytest

from otad import notify as sd
from otad.notify import notify, watchdog_interval_s


@pytest.fixture(autouse=True)
def datagram_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test the built-in sender even where systemd-python happens to be installed."""
    monkeypatch.setattr(sd, "_systemd_notify", None)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path may be longer.
    with tempfile.TemporaryDirectory(prefix="otad-") as directory:
        address = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            sock.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield sock


def test_ready_and_status_arrive_as_one_datagram(path_socket: socket.socket) -> None:
    assert notify("READY=1", "STATUS=x") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=x"


def test_an_abstract_socket_is_reached_through_a_leading_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"otad-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_newline_inside_a_status_cannot_inject_an_assignment(path_socket: socket.socket) -> None:
    assert notify("STATUS=downloading\nREADY=1")
    assert path_socket.recv(4096) == b"STATUS=downloading READY=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify("READY=1") is False


@pytest.mark.parametrize("address", ["/nonexistent/otad/notify", "@otad-nobody-listens-here-" + uuid.uuid4().hex,
                                     "vsock:2:1234", "relative/path"])
def test_an_unreachable_or_unsupported_socket_returns_false_without_raising(monkeypatch: pytest.MonkeyPatch,
                                                                             address: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify("READY=1") is False


def test_systemd_python_is_used_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[str] = []

    def fake(message: str) -> bool:
        calls.append(message)
        return True

    monkeypatch.setattr(sd, "_systemd_notify", fake)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert notify("READY=1", "STATUS=idle") is True
    assert calls == ["READY=1\nSTATUS=idle"]


def test_a_failing_systemd_python_does_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: str) -> bool:
        raise RuntimeError("libsystemd went away")

    monkeypatch.setattr(sd, "_systemd_notify", broken)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert notify("WATCHDOG=1") is False


@pytest.mark.parametrize("env, expected", [
    ((), None),
    ((("WATCHDOG_USEC", "60000000"),), 30.0),
    ((("WATCHDOG_USEC", "60000000"), ("WATCHDOG_PID", "<ours>")), 30.0),
    ((("WATCHDOG_USEC", "60000000"), ("WATCHDOG_PID", "1")), None),  # meant for another process
    ((("WATCHDOG_USEC", "0"),), None),
    ((("WATCHDOG_USEC", "sixty"),), None),
])
def test_the_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
        monkeypatch: pytest.MonkeyPatch, env: Tuple[Tuple[str, str], ...], expected: object) -> None:
    for name, value in env:
        monkeypatch.setenv(name, str(os.getpid()) if value == "<ours>" else value)
    assert watchdog_interval_s() == expected
