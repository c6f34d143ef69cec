"""Debian's swupdate as the oracle: same bundle, same slot bytes; what it refuses, otad refuses.

Bundles are made by SWUpdate's own swugenerator and by openssl + cpio. Targets are regular
files named by absolute path in sw-description, so both tools write the same kind of target.
Where otad is deliberately stricter than swupdate 2022.12, the test says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest

from tests.bundles import (NEWC, ImageSpec, description, gz, signed_members, swugenerator_bundle,
                           write_bundle, write_bundle_gnu_cpio, zst)
from tests.pki import Pki, make_pki

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]

TARGET_BYTES = 2 << 20
IMAGE = os.urandom(300_000) + bytes(400_000) + os.urandom(1000)


def fresh_target(path: Path) -> Path:
    path.write_bytes(b"\x5a" * TARGET_BYTES)
    return path


def swupdate(bundle: Path, pki: Pki, selection: Optional[str] = "stable,copy2") -> Tuple[bool, str]:
    """Run Debian's swupdate; success is read from its log (2022.12 may exit 1 after success)."""
    cmd = ["swupdate", "-i", str(bundle), "-k", str(pki.ca_pem), "-H", "rpi0w:1.0", "-v"]
    if selection:
        cmd += ["-e", selection]
    scratch = bundle.parent / "swupdate-tmp" / "inner"  # a '../' member lands beside it, not in /
    scratch.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, TMPDIR=str(scratch)))
    log = proc.stdout + proc.stderr
    return "SWUPDATE successful" in log and "FAILURE" not in log.upper().split("SWUPDATE SUCCESSFUL")[-1], log


def otad(bundle: Path, pki: Pki, tmp_path: Path, selection: Optional[str] = "stable,copy2") -> Tuple[bool, str]:
    conf = tmp_path / "otad.conf"
    conf.write_text(f'system = {{ state_dir = "{tmp_path / "state"}"; hardware = "rpi0w:1.0"; }};\n'
                    f'install = {{ trust_file = "{pki.ca_pem}"; }};\n')
    args = ["--config", str(conf), "install", str(bundle)] + (["-e", selection] if selection else [])
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "otad"), *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, proc.stderr


def both_install(tmp_path: Path, bundle: Path, pki: Pki, target: Path) -> Tuple[bytes, bytes]:
    """Install with swupdate, keep the slot, reset it, install with otad; return both slots."""
    fresh_target(target)
    ok, log = swupdate(bundle, pki)
    assert ok, log
    by_swupdate = target.read_bytes()
    fresh_target(target)
    ok, err = otad(bundle, pki, tmp_path)
    assert ok, err
    return by_swupdate, target.read_bytes()


@pytest.mark.parametrize("compression", ["zlib", "zstd", None])
def test_swugenerator_bundle_installs_identically_with_otad_and_swupdate(tmp_path, pki, compression) -> None:
    target = tmp_path / "slot-b.img"
    comp = f' compressed = "{compression}";' if compression else ""
    template = (f'software = {{ version = "3.1.4"; hardware-compatibility = ["1.0"];\n'
                f'  stable = {{ copy2 = {{ images = ( {{ filename = "rootfs.img"; device = "{target}";{comp} '
                f'installed-directly = true; }} ); }}; }}; }};\n')
    bundle = swugenerator_bundle(tmp_path / "gen.swu", template, {"rootfs.img": IMAGE}, pki, tmp_path)
    by_swupdate, by_otad = both_install(tmp_path, bundle, pki, target)
    assert by_otad == by_swupdate
    assert by_otad[:len(IMAGE)] == IMAGE


@pytest.mark.parametrize("fmt", ["newc", "crc"])
def test_gnu_cpio_bundle_installs_identically_with_otad_and_swupdate(tmp_path, pki, fmt) -> None:
    target = tmp_path / "slot-b.img"
    images = [ImageSpec("rootfs.img.zst", zst(IMAGE), str(target), compressed="zstd"),
              ImageSpec("boot.bin", b"BOOT" * 512, str(target), extra={"offset": '"1M"'})]
    desc = description(images, selection=("stable", "copy2"))
    bundle = write_bundle_gnu_cpio(tmp_path / "b.swu", signed_members(desc, images, pki, tmp_path), fmt)
    by_swupdate, by_otad = both_install(tmp_path, bundle, pki, target)
    assert by_otad == by_swupdate
    assert by_otad[(1 << 20):(1 << 20) + 2048] == b"BOOT" * 512


Members = List[Tuple[str, bytes]]


def _bad(tmp_path: Path, pki: Pki, *, images: Optional[List[ImageSpec]] = None, hw=("1.0",),
         tamper: Callable[[Members], Members] = lambda m: m, signer: Optional[Pki] = None) -> Path:
    target = str(fresh_target(tmp_path / "slot-b.img"))
    images = images or [ImageSpec("rootfs.img.gz", gz(IMAGE), target, compressed="zlib")]
    for image in images:
        image.device = target
    desc = description(images, hw=hw, selection=("stable", "copy2"))
    work = tmp_path / "sign"
    work.mkdir()
    return write_bundle(tmp_path / "bad.swu", tamper(signed_members(desc, images, signer or pki, work)), NEWC)


REFUSED_BY_BOTH = {
    "sw-description modified after signing":
        lambda t, p: _bad(t, p, tamper=lambda m: [("sw-description", m[0][1].replace(b"1.0.0", b"9.0.0"))] + m[1:]),
    "signed by another CA": lambda t, p: _bad(t, p, signer=make_pki(t, name="other")),
    "unsigned": lambda t, p: _bad(t, p, tamper=lambda m: [m[0]] + m[2:]),
    "image hash mismatch": lambda t, p: _bad(t, p, images=[ImageSpec("r.img", IMAGE, "", sha256="0" * 64)]),
    "image bytes replaced": lambda t, p: _bad(t, p, images=[ImageSpec("r.img", IMAGE, "")],
                                              tamper=lambda m: m[:2] + [("r.img", IMAGE[::-1])]),
    "hardware not compatible": lambda t, p: _bad(t, p, hw=("2.0",)),
    "required image missing": lambda t, p: _bad(t, p, tamper=lambda m: m[:2]),
    "sw-description not first": lambda t, p: _bad(t, p, tamper=lambda m: [m[2], m[0], m[1]]),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_BOTH))
def test_bundles_swupdate_refuses_otad_refuses(tmp_path, pki, case) -> None:
    bundle = REFUSED_BY_BOTH[case](tmp_path, pki)
    ok, log = swupdate(bundle, pki)
    assert not ok, f"swupdate accepted it:\n{log}"
    ok, err = otad(bundle, pki, tmp_path)
    assert not ok, "otad accepted it"
    assert err.strip().splitlines()[-1].startswith("otad: error: ")


def test_unknown_selection_is_refused_by_both(tmp_path, pki) -> None:
    bundle = _bad(tmp_path, pki)
    assert not swupdate(bundle, pki, selection="stable,copy9")[0]
    assert not otad(bundle, pki, tmp_path, selection="stable,copy9")[0]


STRICTER_THAN_SWUPDATE = {
    # swupdate 2022.12 writes the member through $TMPDIR/.. (notes §8)
    "member name with ../": lambda t, p: _bad(t, p, tamper=lambda m: m[:2] + [("../otad-oracle-escape", b"x")]
                                              + m[2:]),
    # swupdate 2022.12 inflates what it can and reports success: a silently short image
    "gzip stream cut short (hash still matches)": lambda t, p: _bad(t, p, images=[ImageSpec(
        "r.gz", gz(IMAGE)[:100] + bytes(50), "", compressed="zlib")]),
}


@pytest.mark.parametrize("case", sorted(STRICTER_THAN_SWUPDATE))
def test_otad_refuses_what_swupdate_wrongly_accepts(tmp_path, pki, case) -> None:
    """Pins each known difference, so a change on either side is noticed."""
    bundle = STRICTER_THAN_SWUPDATE[case](tmp_path, pki)
    assert swupdate(bundle, pki)[0]
    assert not otad(bundle, pki, tmp_path)[0]


def test_otad_stops_an_image_at_the_end_of_its_target_where_swupdate_writes_past_it(tmp_path, pki) -> None:
    bundle = _bad(tmp_path, pki, images=[ImageSpec("big.img", os.urandom(TARGET_BYTES + 4096), "")])
    target = tmp_path / "slot-b.img"
    assert swupdate(bundle, pki)[0] and target.stat().st_size > TARGET_BYTES
    fresh_target(target)
    ok, err = otad(bundle, pki, tmp_path)
    assert not ok and "exceeds its target" in err and target.stat().st_size == TARGET_BYTES
