"""A network for the emulated Pi Zero W: SLIP on its second UART, carried into QEMU's own user
network (slirp) with `restrict=on`, so the guest reaches one port on the host's 127.0.0.1 and
nothing else.

Why this route (docs/deploying.md, section 9): the Zero W has no Ethernet, QEMU 7.2's USB network
devices never enumerate under Linux's dwc2 driver, and Debian 12's userspace `slirp` (1.0.17)
exits right after its banner on amd64. QEMU's slirp works, but it only speaks Ethernet frames to
a network device. So the board's PL011 (ttyAMA0, free once boot.scr's otad_fdt_fixup removes
the Bluetooth node on it) carries SLIP, and this module is the wire between the two halves of
one QEMU process: it reads SLIP packets from the PL011's chardev socket and hands them to the
user network as Ethernet frames through a socket netdev on the same hub, answers the user
network's ARP requests for the guest, and sends IPv4 frames back as SLIP. No IP processing
happens here: routing, TCP and the restriction are QEMU's (`-netdev user,restrict=on`), and
the only way out is the `guestfwd` rule to 127.0.0.1:PORT, one `socat` per connection.

    net = SlipNet(tmp, host_port=goosebit_port)
    board = Board(card, log_dir, serial0=net.serial0, extra_args=net.qemu_args)
    board.power_on(); net.start()
    ... in the guest: SlipNet.GUEST_SETUP (or /etc/network/interfaces.d, see GUEST_INTERFACE) ...
    net.close()
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import List, Optional

GUEST_IP = "10.0.2.15"
GATEWAY_IP = "10.0.2.2"  # QEMU's user network
SERVER_IP = "10.0.2.100"  # guestfwd: the only address:port that leads out (to 127.0.0.1:PORT)
GUEST_MAC = bytes.fromhex("525400123456")
GATEWAY_MAC = bytes.fromhex("52550a000202")  # slirp's own address for 10.0.2.2
ETH_IP, ETH_ARP = 0x0800, 0x0806
END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
CONNECT_TIMEOUT_S = 30.0

# ifupdown stanza for the guest (the emulator's card copy only): SLIP on ttyAMA0 at boot, before
# otad's init script, so `otad run` polls at once.
GUEST_INTERFACE = f"""\
# The emulator's network (tests/pi/slipnet.py): SLIP on the PL011 into QEMU's user network.
auto sl0
iface sl0 inet static
    pre-up modprobe slip && ldattach -s 115200 SLIP /dev/ttyAMA0 && sleep 1
    address {GUEST_IP}
    pointopoint {GATEWAY_IP}
    netmask 255.255.255.255
    mtu 1500
    up ip route add default dev sl0
    post-down pkill -x ldattach || true
"""


def slip_encode(packet: bytes) -> bytes:
    body = packet.replace(bytes([ESC]), bytes([ESC, ESC_ESC])).replace(bytes([END]), bytes([ESC, ESC_END]))
    return bytes([END]) + body + bytes([END])


class SlipDecoder:
    """SLIP bytes in, whole packets out (RFC 1055; empty packets between two ENDs dropped)."""

    def __init__(self) -> None:
        self._packet = bytearray()
        self._escaped = False

    def feed(self, data: bytes) -> List[bytes]:
        packets = []
        for byte in data:
            if self._escaped:
                self._packet.append({ESC_END: END, ESC_ESC: ESC}.get(byte, byte))
                self._escaped = False
            elif byte == ESC:
                self._escaped = True
            elif byte == END:
                if self._packet:
                    packets.append(bytes(self._packet))
                self._packet.clear()
            else:
                self._packet.append(byte)
        return packets


def arp_reply(frame: bytes) -> Optional[bytes]:
    """The reply to an ARP request for GUEST_IP (from the user network), else None."""
    if len(frame) < 42:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
    if (htype, ptype, hlen, plen, op) != (1, ETH_IP, 6, 4, 1) or target_ip != socket.inet_aton(GUEST_IP):
        return None
    arp = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, 2) + GUEST_MAC + target_ip + sender_mac + sender_ip
    return sender_mac + GUEST_MAC + struct.pack("!H", ETH_ARP) + arp


class SlipNet:
    """The wire between the board's PL011 (QEMU chardev, a unix socket) and QEMU's user network
    (a socket netdev on the user network's hub). Counts what it carried."""

    def __init__(self, work: Path, host_port: int) -> None:
        self.serial_path = work / "pl011.sock"
        self.host_port = host_port
        with socket.socket() as probe:  # a free port for QEMU's socket netdev to listen on
            probe.bind(("127.0.0.1", 0))
            self.net_port = probe.getsockname()[1]
        self.to_guest = self.from_guest = 0
        self._serial: Optional[socket.socket] = None
        self._net: Optional[socket.socket] = None
        self._threads: List[threading.Thread] = []
        self._closed = threading.Event()

    @property
    def serial0(self) -> str:
        return f"unix:{self.serial_path},server=on,wait=off"

    @property
    def qemu_args(self) -> List[str]:
        forward = f"guestfwd=tcp:{SERVER_IP}:80-cmd:socat STDIO TCP:127.0.0.1:{self.host_port}"
        return ["-netdev", f"user,id=slirp0,net=10.0.2.0/24,restrict=on,{forward}",
                "-netdev", "hubport,id=hub0slirp,hubid=0,netdev=slirp0",
                "-netdev", f"socket,id=wire0,listen=127.0.0.1:{self.net_port}",
                "-netdev", "hubport,id=hub0wire,hubid=0,netdev=wire0"]

    def start(self) -> None:
        """Connect to both sockets of a QEMU that has just been started, and carry packets."""
        self._serial = _connect(socket.AF_UNIX, str(self.serial_path))
        self._net = _connect(socket.AF_INET, ("127.0.0.1", self.net_port))
        for target, name in ((self._serial_to_net, "slip-out"), (self._net_to_serial, "slip-in")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._closed.set()
        for sock in (self._serial, self._net):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._serial = self._net = None

    def _serial_to_net(self) -> None:
        assert self._serial is not None and self._net is not None
        decoder = SlipDecoder()
        while not self._closed.is_set():
            data = _recv(self._serial)
            if not data:
                return
            for packet in decoder.feed(data):
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # not IPv4 (line noise before ldattach, IPv6)
                frame = GATEWAY_MAC + GUEST_MAC + struct.pack("!H", ETH_IP) + packet
                self.from_guest += 1
                _send(self._net, struct.pack("!I", len(frame)) + frame)

    def _net_to_serial(self) -> None:
        assert self._serial is not None and self._net is not None
        buffer = b""
        while not self._closed.is_set():
            data = _recv(self._net)
            if not data:
                return
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from("!I", buffer)[0]:
                size = struct.unpack_from("!I", buffer)[0]
                frame, buffer = buffer[4:4 + size], buffer[4 + size:]
                kind = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
                if kind == ETH_ARP:
                    reply = arp_reply(frame)
                    if reply is not None:
                        _send(self._net, struct.pack("!I", len(reply)) + reply)
                elif kind == ETH_IP and frame[:6] in (GUEST_MAC, b"\xff" * 6):
                    self.to_guest += 1
                    _send(self._serial, slip_encode(frame[14:]))


def _connect(family: int, address: object) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
