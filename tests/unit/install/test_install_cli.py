"""`otad install` end to end on files: good bundles land, every bad bundle gets one clear line.

Each bad-input case asserts the exit status, that stderr is one line naming the problem (no
traceback), and that the target is untouched — or, where the bytes were already streamed,
that the install record marks the target failed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from otad.errors import REFUSED, VERIFICATION, WRITE_FAILED
from tests.bundles import CRC, NEWC, ImageSpec, description, gz, sha256, signed_members, write_bundle, zst
from tests.conftest import SLOT_BYTES, Device, run_cli
from tests.pki import Pki, cms_sign, make_pki

IMAGE = os.urandom(200_000) + bytes(500_000)
SLOT_B = "/dev/mmcblk0p3"

Members = List[Tuple[str, bytes]]


def build(tmp_path: Path, pki: Optional[Pki], images: Sequence[ImageSpec] = (), *, fmt: str = NEWC,
          desc: Optional[bytes] = None, tamper: Callable[[Members], Members] = lambda m: m,
          name: str = "update.swu") -> Path:
    images = list(images) or [ImageSpec("rootfs.img.zst", zst(IMAGE), SLOT_B, compressed="zstd")]
    desc = desc if desc is not None else description(images)
    work = tmp_path / (name + ".work")
    work.mkdir()
    members = tamper(signed_members(desc, images, pki, work))
    return write_bundle(tmp_path / name, members, fmt)


def install(device: Device, pki: Pki, bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str,
            extra_install: str = "") -> Tuple[int, str, str]:
    return run_cli(["--config", device.config(pki, extra_install), "install", bundle, *extra], capsys)


def record(device: Device, slot: str = "mmcblk0p3") -> dict:
    return json.loads((device.state / "targets.json").read_text())[str(device.slot(slot))]


@pytest.mark.parametrize("fmt", [NEWC, CRC])
@pytest.mark.parametrize("compressed,encode", [(None, lambda d: d), ("zlib", gz), ("zstd", zst)])
def test_install_writes_the_image_into_the_slot(tmp_path, device, pki, capsys, fmt, compressed, encode) -> None:
    image = ImageSpec("rootfs.img", encode(IMAGE), SLOT_B, compressed=compressed)
    rc, out, err = install(device, pki, build(tmp_path, pki, [image], fmt=fmt), capsys)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE
    assert device.slot_bytes()[len(IMAGE):] == b"\xaa" * (SLOT_BYTES - len(IMAGE))
    assert device.untouched("mmcblk0p2")
    assert "version 1.0.0 installed" in out
    assert record(device)["state"] == "installed" and record(device)["sha256"] == sha256(encode(IMAGE))


def test_install_at_an_offset_keeps_the_bytes_before_it(tmp_path, device, pki, capsys) -> None:
    image = ImageSpec("boot.bin", b"BOOT" * 1000, SLOT_B, extra={"offset": '"16K"'})
    rc, _, err = install(device, pki, build(tmp_path, pki, [image]), capsys)
    assert rc == 0, err
    data = device.slot_bytes()
    assert data[:16384] == b"\xaa" * 16384 and data[16384:20384] == b"BOOT" * 1000


def test_one_member_feeding_two_targets_writes_both(tmp_path, device, pki, capsys) -> None:
    images = [ImageSpec("rootfs.img", IMAGE, SLOT_B), ImageSpec("rootfs.img", IMAGE, "/dev/mmcblk0p2")]
    rc, _, err = install(device, pki, build(tmp_path, pki, images), capsys)
    assert rc == 0, err
    assert device.slot_bytes("mmcblk0p2")[:len(IMAGE)] == device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_images_outside_the_selection_are_skipped(tmp_path, device, pki, capsys) -> None:
    desc = (b'software = { version = "2.0"; hardware-compatibility = ["1.0"];\n'
            b'  stable = {\n'
            b'    copy1 = { images = ( { filename = "a.img"; device = "/dev/mmcblk0p2"; sha256 = "%s"; } ); };\n'
            b'    copy2 = { images = ( { filename = "b.img"; device = "/dev/mmcblk0p3"; sha256 = "%s"; } ); };\n'
            b'  };\n};\n') % (sha256(b"A" * 100).encode(), sha256(b"B" * 100).encode())
    images = [ImageSpec("a.img", b"A" * 100, ""), ImageSpec("b.img", b"B" * 100, "")]
    rc, _, err = install(device, pki, build(tmp_path, pki, images, desc=desc), capsys, "-e", "stable,copy2")
    assert rc == 0, err
    assert device.slot_bytes()[:100] == b"B" * 100
    assert device.untouched("mmcblk0p2")


def test_dry_run_verifies_everything_and_writes_nothing(tmp_path, device, pki, capsys) -> None:
    rc, out, err = install(device, pki, build(tmp_path, pki), capsys, "-n")
    assert rc == 0, err
    assert "dry run, nothing written" in out
    assert device.untouched() and not (device.state / "targets.json").exists()


def test_dry_run_still_catches_a_hash_mismatch(tmp_path, device, pki, capsys) -> None:
    image = ImageSpec("rootfs.img", IMAGE, SLOT_B, sha256="0" * 64)
    rc, _, err = install(device, pki, build(tmp_path, pki, [image]), capsys, "-n")
    assert rc == VERIFICATION and "sha256 mismatch" in err and device.untouched()


def test_unsigned_bundle_needs_the_explicit_insecure_flag(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, None)
    rc, _, err = install(device, pki, bundle, capsys)
    assert rc == VERIFICATION and "bundle is not signed" in err and device.untouched()
    rc, _, err = install(device, pki, bundle, capsys, "--insecure-allow-unsigned")
    assert rc == 0, err
    assert "signature NOT checked" in err


def test_install_reads_the_bundle_from_stdin(tmp_path, device, pki, capsys, monkeypatch) -> None:
    import io
    import sys

    data = build(tmp_path, pki).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc, _, err = install(device, pki, Path("-"), capsys)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


# --- the bad-input table -------------------------------------------------------------------

def error_lines(err: str) -> List[str]:
    """stderr may hold log lines; the failure itself must be exactly one line, without traceback."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("otad: error: ")]


def _replace(name: str, data: bytes) -> Callable[[Members], Members]:
    return lambda members: [(n, data if n == name else d) for n, d in members]


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


def _raw_bundle(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "raw.swu"
    path.write_bytes(content)
    return path


def _other_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, name="intruder", root_cn="otad test root")


BAD_BEFORE_WRITING = {
    # case: (bundle factory, expected message fragment); exit status REFUSED, signature cases VERIFICATION
    "wrong magic": (lambda t, p: _raw_bundle(t, b"070707" + b"0" * 200), "magic"),
    "tar instead of cpio": (lambda t, p: _raw_bundle(t, b"rootfs.img" + b"\0" * 500), "magic"),
    "truncated header": (lambda t, p: _raw_bundle(t, build(t, p).read_bytes()[:60]), "truncated"),
    "truncated in sw-description": (lambda t, p: _raw_bundle(t, build(t, p).read_bytes()[:200]), "truncated"),
    "huge declared size": (lambda t, p: _raw_bundle(t, b"070701" + b"00000001" * 6 + b"FFFFFFFF"
                                                    + b"00000000" * 4 + b"0000000F" + b"00000000"
                                                    + b"sw-description\0\0\0\0" + b"x" * 64), "sw-description"),
    "sw-description not first": (lambda t, p: build(t, p, tamper=lambda m: m[2:] + m[:2]),
                                 "first member must be 'sw-description'"),
    "member name with ..": (lambda t, p: build(t, p, tamper=lambda m: m[:2] + [("../etc/passwd", b"x")] + m[2:]),
                            ".."),
    "absolute member name": (lambda t, p: build(t, p, tamper=lambda m: m[:2] + [("/etc/passwd", b"x")] + m[2:]),
                             "/etc/passwd"),
    "missing signature": (lambda t, p: build(t, p, tamper=lambda m: [m[0]] + m[2:]), "not signed"),
    "signature over other bytes": (lambda t, p: build(t, p, tamper=lambda m: [(m[0][0], m[0][1] + b"\n")] + m[1:]),
                                   "signature"),
    "modified signature": (lambda t, p: build(t, p, tamper=lambda m: [m[0], (m[1][0], _flip_last_byte(m[1][1]))]
                                              + m[2:]), "signature"),
    "untrusted signer": (lambda t, p: build(t, _other_pki(t)), "trusted"),
    "malformed libconfig": (lambda t, p: build(t, p, desc=b'software = {\n  version = "1";\n  images = ( { ;\n};\n'),
                            "sw-description:3"),
    "unknown compression": (lambda t, p: build(t, p, [ImageSpec("r.img", b"x", SLOT_B, compressed="lzma")]),
                            "lzma"),
    "hardware mismatch": (lambda t, p: build(t, p, desc=description(
        [ImageSpec("rootfs.img.zst", zst(IMAGE), SLOT_B, compressed="zstd")], hw=["2.0", "#RE:^3\\..*"])),
                          "1.0"),
    "image without sha256": (lambda t, p: build(t, p, [ImageSpec("r.img", b"x", SLOT_B, sha256=None)]), "sha256"),
    "target does not exist": (lambda t, p: build(t, p, [ImageSpec("r.img", b"x", "/dev/mmcblk0p9")]), "mmcblk0p9"),
    "unsupported handler": (lambda t, p: build(t, p, [ImageSpec("r.img", b"x", SLOT_B, extra={"type": '"ubivol"'})]),
                            "no handler for type 'ubivol'"),
}


SIGNATURE_CASES = {"missing signature", "signature over other bytes", "modified signature", "untrusted signer"}


@pytest.mark.parametrize("case", sorted(BAD_BEFORE_WRITING))
def test_bad_bundle_is_refused_before_anything_is_written(tmp_path, device, pki, capsys, case) -> None:
    factory, fragment = BAD_BEFORE_WRITING[case]
    rc, out, err = install(device, pki, factory(tmp_path, pki), capsys)
    assert rc == (VERIFICATION if case in SIGNATURE_CASES else REFUSED)
    [line] = error_lines(err)
    assert fragment in line
    assert device.untouched() and device.untouched("mmcblk0p2")
    assert not (device.state / "targets.json").exists()


def test_unknown_selection_is_refused_naming_it(tmp_path, device, pki, capsys) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki), capsys, "-e", "stable,copy9")
    assert rc == REFUSED and "copy9" in err and device.untouched()


BAD_WHILE_STREAMING = {
    "image hash mismatch": (lambda t, p: build(t, p, [ImageSpec("r.img", IMAGE, SLOT_B, sha256="ab" * 32)]),
                            "sha256 mismatch"),
    "image replaced after signing": (lambda t, p: build(t, p, [ImageSpec("r.img", IMAGE, SLOT_B)],
                                                       tamper=_replace("r.img", IMAGE[::-1])), "sha256 mismatch"),
    "decompression bomb into a small target": (lambda t, p: build(t, p, [ImageSpec(
        "bomb.gz", gz(bytes(64 << 20)), SLOT_B, compressed="zlib")]), "exceeds its target"),
    "image larger than target": (lambda t, p: build(t, p, [ImageSpec("big.img", bytes(SLOT_BYTES + 1), SLOT_B)]),
                                 "exceeds its target"),
    "bad member name after the image": (lambda t, p: build(t, p, [ImageSpec("r.img", IMAGE, SLOT_B)],
                                                           tamper=lambda m: m + [("../../etc/passwd", b"x")]),
                                        "'../../etc/passwd'"),
    "corrupt zstd data": (lambda t, p: build(t, p, [ImageSpec("r.zst", zst(IMAGE)[:-50] + b"\0" * 50, SLOT_B,
                                                              compressed="zstd")]), "zstd"),
}


@pytest.mark.parametrize("case", sorted(BAD_WHILE_STREAMING))
def test_bad_image_fails_the_install_and_marks_the_target_failed(tmp_path, device, pki, capsys, case) -> None:
    factory, fragment = BAD_WHILE_STREAMING[case]
    rc, _, err = install(device, pki, factory(tmp_path, pki), capsys)
    assert rc == (VERIFICATION if fragment == "sha256 mismatch" else WRITE_FAILED)
    [line] = error_lines(err)
    assert fragment in line
    assert re.search(r"'(r\.img|r\.zst|big\.img|bomb\.gz|\.\./\.\./etc/passwd)'", line)  # names the culprit
    assert record(device)["state"] == "failed" and fragment in record(device)["reason"]
    assert device.untouched("mmcblk0p2")


def test_crc_mismatch_in_crc_format_is_refused(tmp_path, device, pki, capsys) -> None:
    blob = bytearray(build(tmp_path, pki, fmt=CRC).read_bytes())
    blob[blob.rindex(b"TRAILER!!!") - 200] ^= 0xFF  # a data byte of the last image
    rc, _, err = install(device, pki, _raw_bundle(tmp_path, bytes(blob)), capsys)
    assert rc == WRITE_FAILED and "checksum" in err.lower()


def test_missing_image_fails_after_the_trailer(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, tamper=lambda m: m[:2])
    rc, _, err = install(device, pki, bundle, capsys)
    assert rc == REFUSED and "rootfs.img.zst" in err and "missing" in err  # nothing was written
    assert device.untouched()


def test_truncated_image_data_fails_naming_the_member(tmp_path, device, pki, capsys) -> None:
    blob = build(tmp_path, pki).read_bytes()
    rc, _, err = install(device, pki, _raw_bundle(tmp_path, blob[:len(blob) // 2]), capsys)
    assert rc == WRITE_FAILED and "truncated" in err and "rootfs.img.zst" in err
    assert record(device)["state"] == "failed"


def test_debug_flag_adds_the_traceback(tmp_path, device, pki, capsys) -> None:
    rc, _, err = run_cli(["--debug", "--config", device.config(pki), "install", tmp_path / "nope.swu"], capsys)
    assert rc == 1 and "Traceback" in err and "cannot open bundle" in err


def test_forced_signer_name_must_match(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki)
    rc, _, err = install(device, pki, bundle, capsys, "--forced-signer-name", "someone else")
    assert rc == VERIFICATION and "someone else" in err and device.untouched()
    rc, _, err = install(device, pki, bundle, capsys, "--forced-signer-name", "otad test signer")
    assert rc == 0, err


def test_intermediate_only_carried_in_the_cms_is_not_trusted(tmp_path, device, capsys) -> None:
    chain = make_pki(tmp_path, name="chain", intermediate=True, intermediate_trusted=False)
    work = tmp_path / "w"
    work.mkdir()
    images = [ImageSpec("r.img", b"x" * 10, SLOT_B)]
    desc = description(images)
    (work / "sw-description").write_bytes(desc)
    cms_sign(work / "sw-description", work / "sig", chain)  # -certfile carries the intermediate
    bundle = write_bundle(tmp_path / "u.swu", [("sw-description", desc), ("sw-description.sig",
                                                                           (work / "sig").read_bytes()),
                                               ("r.img", b"x" * 10)])
    rc, _, err = install(device, chain, bundle, capsys)
    assert rc == VERIFICATION and "trusted" in err and device.untouched()


def test_install_pets_the_watchdog_and_stops_it_cleanly(tmp_path, device, pki, capsys, monkeypatch) -> None:
    from otad.sim.watchdog import FakeWatchdogDevice

    fake = FakeWatchdogDevice()
    monkeypatch.setattr("otad.update.DeviceWatchdog", type("W", (), {
        "open": staticmethod(lambda path, **kw: fake.open_watchdog(path, **kw))}))
    conf = device.config(pki)
    conf.write_text(conf.read_text() + 'watchdog = { enabled = true; timeout_s = 30; };\n')
    rc, _, err = run_cli(["--config", conf, "install", build(tmp_path, pki)], capsys)
    assert rc == 0, err
    assert ("ioctl", "SETTIMEOUT", 30, 15) in fake.calls  # the Pi's driver grants at most 15 s
    assert ("keepalive",) in fake.calls
    assert fake.calls[-2:] == [("write", b"V"), ("close",)] and fake.stopped


def test_install_beside_the_daemon_leaves_its_watchdog_to_it(tmp_path, device, pki, capsys, monkeypatch) -> None:
    from otad import update
    from otad.config import load
    from otad.errors import WatchdogError
    from otad.sim.watchdog import FakeWatchdogDevice

    fake = FakeWatchdogDevice()
    monkeypatch.setattr("otad.update.DeviceWatchdog", type("W", (), {
        "open": staticmethod(lambda path, **kw: fake.open_watchdog(path, **kw))}))
    daemon = fake.open_watchdog()  # an idle `otad run` holds /dev/watchdog and pets it
    calls = list(fake.calls)
    conf = device.config(pki)
    conf.write_text(conf.read_text() + 'watchdog = { enabled = true; timeout_s = 15; };\n')
    rc, _, err = run_cli(["--config", conf, "install", build(tmp_path, pki)], capsys)
    assert rc == 0, err
    assert err.count("otad: INFO: watchdog /dev/watchdog: held by another process (otad run, or a watchdog "
                     "daemon), which pets it; not opened here") == 1
    assert fake.calls == calls and fake.is_open and fake.running  # the daemon's fd and timer, untouched
    with pytest.raises(WatchdogError, match="device busy"):  # the daemon never goes on without its watchdog
        update.open_watchdog(load(str(conf)))
    daemon.close()
    assert fake.stopped
