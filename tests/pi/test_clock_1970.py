"""A Pi Zero W has no RTC: until NTP or fake-hwclock sets it, its clock says 1970. otad installs a
signed bundle then (Debian's swupdate refuses every bundle: its signer is "not yet valid"), with a
WARNING, and checks certificate validity at its release-date floor instead of the clock: a signer
that expired before the floor is still refused. On the emulated board, whose clock starts at 1970.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Callable, Tuple

from otad import RELEASE_DATE
from tests.bundles import ImageSpec, description, signed_members, write_bundle_gnu_cpio, zst
from tests.pi.board import Board
from tests.pki import make_pki

UTC = datetime.timezone.utc
SLOT = "/root/slot-1970.img"


def _bundle(tmp: Path, name: str, data: bytes, **validity: datetime.datetime) -> Tuple[bytes, bytes]:
    """A bundle of `data` signed by a new PKI whose signer has `validity`; (bundle, its ca.pem)."""
    pki = make_pki(tmp, name=name, **validity)
    image = ImageSpec("tiny.img.zst", zst(data), SLOT, compressed="zstd", extra={"installed-directly": "true"})
    work = tmp / f"{name}-work"
    work.mkdir()
    members = signed_members(description([image], selection=("stable", "copy1")), [image], pki, work)
    return write_bundle_gnu_cpio(tmp / f"{name}.swu", members, fmt="crc").read_bytes(), pki.ca_pem.read_bytes()


def test_otad_installs_at_1970_checking_certificates_at_the_release_date_floor(
        make_board: Callable[..., Board], tmp_path: Path) -> None:
    data = os.urandom(64 << 10)
    # Valid from 2026-01-01 (after 1970: a check against the clock would refuse it) for ten years.
    good, good_ca = _bundle(tmp_path, "good", data, not_before=datetime.datetime(2026, 1, 1, tzinfo=UTC),
                            not_after=datetime.datetime(2036, 1, 1, tzinfo=UTC))
    # Expired before the floor, though "valid" at 1970 for a clock that never moved: refused.
    expired, expired_ca = _bundle(tmp_path, "expired", data, not_before=datetime.datetime(1969, 1, 1, tzinfo=UTC),
                                  not_after=datetime.datetime(2026, 6, 1, tzinfo=UTC))
    board = make_board("clock-1970")
    for path, body in (("/root/good.swu", good), ("/root/good-ca.pem", good_ca), ("/root/expired.swu", expired),
                       ("/root/expired-ca.pem", expired_ca), ("/root/none.conf", b"# no slots\n")):
        board.card.ext4_write(2, path, body)
    board.power_on()
    board.wait_boot()
    assert board.sh("date -u +%Y") == "1970"  # no RTC, no network: the clock was never set

    install = "otad --config /root/none.conf install {} -k {} -H rpi0w:1.0 -e stable,copy1"
    board.sh(f"rm -f {SLOT}; truncate -s 64K {SLOT}")
    out, status = board.sh_status(install.format("/root/good.swu", "/root/good-ca.pem"), timeout=300)
    assert status == 0, out
    assert ("otad: WARNING: system clock says 1970-01-01" in out
            and f"before the time floor {RELEASE_DATE}" in out and "checking certificate validity at the floor" in out), out
    assert "signature good" in out
    assert board.sh(f"sha256sum {SLOT}").split()[0] == hashlib.sha256(data).hexdigest()

    board.sh(f"rm -f {SLOT}; truncate -s 64K {SLOT}")
    out, status = board.sh_status(install.format("/root/expired.swu", "/root/expired-ca.pem"), timeout=300)
    assert status != 0, out
    assert "expired on 2026-06-01" in out and "otad's time floor, because the system clock is earlier" in out, out
    assert "Traceback" not in out
    assert board.sh(f"od -An -tx1 -N16 {SLOT}").split() == ["00"] * 16  # nothing written
