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
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pytest

from tests.bundles import (NEWC, ImageSpec, description, gz, openssl_aes, signed_members, swugenerator_bundle,
                           write_bundle, write_bundle_gnu_cpio, zst)
from tests.pki import Pki, make_pki

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]

TARGET_BYTES = 2 << 20
IMAGE = os.urandom(300_000) + bytes(400_000) + os.urandom(1000)


def fresh_target(path: Path) -> Path:
    path.write_bytes(b"\x5a" * TARGET_BYTES)
    return path


def swupdate(bundle: Path, pki: Pki, selection: Optional[str] = "stable,copy2",
             extra: Sequence[str] = ()) -> Tuple[bool, str]:
    """Run Debian's swupdate; success is read from its log (2022.12 may exit 1 after success)."""
    return run_swupdate(bundle, pki.ca_pem, [*extra, *(["-e", selection] if selection else [])])


def run_swupdate(bundle: Path, ca: Path, args: Sequence[str], prefix: Sequence[str] = ()) -> Tuple[bool, str]:
    """`swupdate -i BUNDLE -k CA -H rpi0w:1.0 -v ARGS` with a private TMPDIR; (succeeded, log).
    `prefix` runs it through another command (a private mount namespace, for -B uboot).

    swupdate 2022.12 races with itself under load: now and then it hangs, ends with its core
    saying "SWUpdate was successful" before (or while) installing without the client's verdict,
    or fails on files it is still extracting ("sw-description.sig cannot be parsed" for a
    bundle it installs on the next run). So: no verdict → run again; a failure counts only
    when the next run fails too. The verdict is the client's "SWUPDATE successful" (the exit
    code may be 1 after success) with no failure line anywhere in the log.
    """
    cmd = [*prefix, "swupdate", "-i", str(bundle), "-k", str(ca), "-H", "rpi0w:1.0", "-v", *map(str, args)]
    scratch = bundle.parent / "swupdate-tmp" / "inner"  # a '../' member lands beside it, not in /
    scratch.mkdir(parents=True, exist_ok=True)
    log = ""
    failures = 0
    for attempt in range(6):
        time.sleep(attempt * 0.5)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                  env=dict(os.environ, TMPDIR=str(scratch)))
        except subprocess.TimeoutExpired as exc:
            log = f"swupdate hung for {exc.timeout} s: {exc.output!r}"
            continue
        log = proc.stdout + proc.stderr
        if any(word in log for word in ("SWUPDATE failed", "*failed*", "Error")):
            failures += 1
            if failures == 2:
                return False, log
        elif "SWUPDATE successful" in log:
            return True, log
    if failures:
        return False, log
    pytest.fail(f"Debian swupdate gave no verdict in six runs on {bundle.name}: {log[-500:]}")


def otad(bundle: Path, pki: Pki, tmp_path: Path, selection: Optional[str] = "stable,copy2",
         extra: Sequence[str] = (), system: str = "") -> Tuple[bool, str]:
    conf = tmp_path / "otad.conf"
    conf.write_text(f'system = {{ state_dir = "{tmp_path / "state"}"; hardware = "rpi0w:1.0"; {system} }};\n'
                    f'install = {{ trust_file = "{pki.ca_pem}"; }};\n')
    args = ["--config", str(conf), "install", str(bundle), *extra] + (["-e", selection] if selection else [])
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "otad"), *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, proc.stderr


def both_install(tmp_path: Path, bundle: Path, pki: Pki, target: Path, swupdate_args: Sequence[str] = (),
                 otad_args: Sequence[str] = ()) -> Tuple[bytes, bytes]:
    """Install with swupdate, keep the slot, reset it, install with otad; return both slots."""
    fresh_target(target)
    ok, log = swupdate(bundle, pki, extra=swupdate_args)
    assert ok, log
    by_swupdate = target.read_bytes()
    fresh_target(target)
    ok, err = otad(bundle, pki, tmp_path, extra=otad_args)
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


# --- AES-encrypted images (swupdate -K) -----------------------------------------------------

AES_KEY = bytes(range(32)).hex()
AES_IV = bytes(range(100, 116)).hex()
AES_IVT = bytes(range(200, 216)).hex()


def aes_key_files(tmp_path: Path, key: str = AES_KEY) -> Tuple[Path, Path]:
    """The same key in SWUpdate's -K format and in swugenerator's (which swupdate cannot read)."""
    (tmp_path / "aes.key").write_text(f"{key} {AES_IV}\n")
    (tmp_path / "gen.key").write_text(f"key={key}\niv={AES_IV}\n")
    return tmp_path / "aes.key", tmp_path / "gen.key"


def _openssl_bundle(tmp_path: Path, pki: Pki, compressed: Optional[str], ivt: Optional[str],
                    key: str = AES_KEY) -> Path:
    target = str(tmp_path / "slot-b.img")
    encode = {None: lambda d: d, "zlib": gz, "zstd": zst}[compressed]
    extra = {"encrypted": "true", **({"ivt": f'"{ivt}"'} if ivt else {})}
    images = [ImageSpec("rootfs.enc", openssl_aes(encode(IMAGE), key, ivt or AES_IV), target, compressed=compressed,
                        extra=extra)]
    work = tmp_path / "aes-sign"
    work.mkdir()
    return write_bundle(tmp_path / "aes.swu", signed_members(description(images, selection=("stable", "copy2")),
                                                             images, pki, work), NEWC)


@pytest.mark.parametrize("compressed,ivt,key", [("zlib", None, AES_KEY), ("zstd", AES_IVT, AES_KEY),
                                                (None, AES_IVT, AES_KEY), ("zlib", None, AES_KEY[:32])])
def test_openssl_encrypted_bundle_installs_identically_with_otad_and_swupdate(tmp_path, pki, compressed, ivt,
                                                                              key) -> None:
    bundle = _openssl_bundle(tmp_path, pki, compressed, ivt, key)
    swupdate_key, _ = aes_key_files(tmp_path, key)
    by_swupdate, by_otad = both_install(tmp_path, bundle, pki, tmp_path / "slot-b.img", ["-K", str(swupdate_key)],
                                        ["-K", str(swupdate_key)])
    assert by_otad == by_swupdate and by_otad[:len(IMAGE)] == IMAGE


@pytest.mark.parametrize("compression", ["zlib", "zstd", None])
def test_swugenerator_encrypted_bundle_installs_identically_with_otad_and_swupdate(tmp_path, pki,
                                                                                   compression) -> None:
    target = tmp_path / "slot-b.img"
    comp = f' compressed = "{compression}";' if compression else ""
    template = (f'software = {{ version = "3.1.4"; hardware-compatibility = ["1.0"];\n'
                f'  stable = {{ copy2 = {{ images = ( {{ filename = "rootfs.img"; device = "{target}";{comp} '
                f'encrypted = true; }} ); }}; }}; }};\n')
    swupdate_key, generator_key = aes_key_files(tmp_path)
    bundle = swugenerator_bundle(tmp_path / "gen.swu", template, {"rootfs.img": IMAGE}, pki, tmp_path, generator_key)
    assert not swupdate(bundle, pki, extra=["-K", str(generator_key)])[0]  # swupdate cannot read that format
    by_swupdate, by_otad = both_install(tmp_path, bundle, pki, target, ["-K", str(swupdate_key)],
                                        ["-K", str(generator_key)])  # otad reads both
    assert by_otad == by_swupdate and by_otad[:len(IMAGE)] == IMAGE


def _aes_bad(tmp_path: Path, pki: Pki, stored: bytes) -> Path:
    target = str(fresh_target(tmp_path / "slot-b.img"))
    images = [ImageSpec("rootfs.enc", stored, target, extra={"encrypted": "true"})]
    work = tmp_path / "aes-sign"
    work.mkdir()
    return write_bundle(tmp_path / "bad.swu", signed_members(description(images, selection=("stable", "copy2")),
                                                             images, pki, work), NEWC)


AES_REFUSED_BY_BOTH = {
    # case: (stored bytes, key file text; None: no -K at all)
    "wrong key": (lambda: openssl_aes(IMAGE, AES_KEY, AES_IV), f"{bytes(32).hex()} {AES_IV}"),
    "truncated ciphertext": (lambda: openssl_aes(IMAGE, AES_KEY, AES_IV)[:-5], f"{AES_KEY} {AES_IV}"),
    "bad padding": (lambda: openssl_aes(IMAGE + bytes(16 - len(IMAGE) % 16), AES_KEY, AES_IV, pad=False),
                    f"{AES_KEY} {AES_IV}"),
    "encrypted, no key configured": (lambda: openssl_aes(IMAGE, AES_KEY, AES_IV), None),
    "key file with a 62-digit key": (lambda: openssl_aes(IMAGE, AES_KEY, AES_IV), f"{AES_KEY[:-2]} {AES_IV}"),
}


@pytest.mark.parametrize("case", sorted(AES_REFUSED_BY_BOTH))
def test_bad_encrypted_images_swupdate_refuses_otad_refuses(tmp_path, pki, case) -> None:
    make, key_text = AES_REFUSED_BY_BOTH[case]
    bundle = _aes_bad(tmp_path, pki, make())
    args: List[str] = []
    if key_text is not None:
        (tmp_path / "k").write_text(key_text + "\n")
        args = ["-K", str(tmp_path / "k")]
    ok, log = swupdate(bundle, pki, extra=args)
    assert not ok, f"swupdate accepted it:\n{log}"
    ok, err = otad(bundle, pki, tmp_path, extra=args)
    assert not ok, "otad accepted it"
    assert err.strip().splitlines()[-1].startswith("otad: error: ")


# --- version policy (-N, --max-version, -R, install-if-*) -----------------------------------

def _versions(tmp_path: Path, installed: Sequence[Tuple[str, str]]) -> Tuple[List[str], str]:
    """swupdate reads installed versions from `-f swupdate.cfg`; otad from system.sw_versions_file."""
    entries = ", ".join(f'{{ name = "{n}"; version = "{v}"; }}' for n, v in installed)
    (tmp_path / "swupdate.cfg").write_text(f"globals = {{ loglevel = 6; }};\nversions = ( {entries} );\n")
    (tmp_path / "sw-versions").write_text("".join(f"{n} {v}\n" for n, v in installed))
    return ["-f", str(tmp_path / "swupdate.cfg")], f'sw_versions_file = "{tmp_path / "sw-versions"}";'


def _gated_bundle(tmp_path: Path, pki: Pki, bundle_version: str, gate: Optional[Tuple[str, str]]) -> Path:
    """rootfs at 0 (gated by `gate` = (flag, image version)), boot.bin at 1 MiB (never gated)."""
    target = str(tmp_path / "slot-b.img")
    extra = {"name": '"rootfs"', "version": f'"{gate[1]}"', gate[0]: "true"} if gate else {}
    images = [ImageSpec("rootfs.img", IMAGE, target, extra=extra),
              ImageSpec("boot.bin", b"BOOT" * 512, target, extra={"offset": '"1M"'})]
    work = tmp_path / "v-sign"
    work.mkdir()
    desc = description(images, version=bundle_version, selection=("stable", "copy2"))
    return write_bundle(tmp_path / "v.swu", signed_members(desc, images, pki, work), NEWC)


VERSION_CASES = {
    # case: (bundle version, gate (flag, image version) or None, installed rootfs version, flags, outcome)
    "-N above the bundle": ("1.0.0", None, "1.0", ["-N", "1.0.1"], "refused"),
    "-N equal to the bundle": ("1.0.0", None, "1.0", ["-N", "1.0.0"], "installed"),
    "-N semver prerelease below": ("2.0.0-rc1", None, "1.0", ["-N", "2.0.0"], "refused"),
    "--max-version below the bundle": ("1.0.0", None, "1.0", ["--max-version", "0.9"], "refused"),
    "--max-version equal": ("1.0.0", None, "1.0", ["--max-version", "1.0.0"], "installed"),
    "-R same string": ("1.0.0", None, "1.0", ["-R", "1.0.0"], "refused"),
    "-R numerically equal, other string": ("1.0.0", None, "1.0", ["-R", "1.0"], "installed"),
    "install-if-different, equal by compare()": ("1", ("install-if-different", "1.0.0"), "1.0", [], "skipped"),
    "install-if-different, other version": ("1", ("install-if-different", "1.0.0"), "2.0", [], "installed"),
    "install-if-higher, 1.2.9 vs 1.2.10": ("1", ("install-if-higher", "1.2.9"), "1.2.10", [], "skipped"),
    "install-if-higher, 1.10 vs 1.9": ("1", ("install-if-higher", "1.10"), "1.9", [], "installed"),
    "install-if-higher, release vs rc": ("1", ("install-if-higher", "1.0.0"), "1.0.0-rc1", [], "installed"),
    "install-if-higher, rc vs release": ("1", ("install-if-higher", "1.0.0-rc1"), "1.0.0", [], "skipped"),
    "install-if-higher, rc.10 vs rc.9": ("1", ("install-if-higher", "1.0.0-rc.10"), "1.0.0-rc.9", [], "installed"),
}


@pytest.mark.parametrize("case", sorted(VERSION_CASES))
def test_version_policy_gives_the_same_verdict_and_the_same_slot(tmp_path, pki, case) -> None:
    """Refused by both, or installed by both with byte-identical slots (a skipped image untouched)."""
    bundle_version, gate, installed, flags, outcome = VERSION_CASES[case]
    bundle = _gated_bundle(tmp_path, pki, bundle_version, gate)
    swupdate_cfg, otad_system = _versions(tmp_path, [("rootfs", installed)])
    target = fresh_target(tmp_path / "slot-b.img")
    ok_swupdate, log = swupdate(bundle, pki, extra=[*swupdate_cfg, *flags])
    by_swupdate = target.read_bytes()
    fresh_target(target)
    ok_otad, err = otad(bundle, pki, tmp_path, extra=flags, system=otad_system)
    assert ok_otad == ok_swupdate, f"swupdate {ok_swupdate}, otad {ok_otad}:\n{log}\n{err}"
    assert target.read_bytes() == by_swupdate
    assert ok_otad == (outcome != "refused"), err
    if outcome != "refused":
        assert by_swupdate[1 << 20:(1 << 20) + 2048] == b"BOOT" * 512
        assert (by_swupdate[:len(IMAGE)] == IMAGE) == (outcome == "installed")
    else:
        assert "otad: error: " in err and "version" in err.strip().splitlines()[-1]


def test_every_image_skipped_is_refused_by_both(tmp_path, pki) -> None:
    target = str(tmp_path / "slot-b.img")
    images = [ImageSpec("rootfs.img", IMAGE, target, extra={"name": '"rootfs"', "version": '"1.0"',
                                                            "install-if-higher": "true"})]
    work = tmp_path / "v-sign"
    work.mkdir()
    bundle = write_bundle(tmp_path / "v.swu", signed_members(description(images, selection=("stable", "copy2")),
                                                             images, pki, work), NEWC)
    swupdate_cfg, otad_system = _versions(tmp_path, [("rootfs", "2.0")])
    fresh_target(tmp_path / "slot-b.img")
    assert not swupdate(bundle, pki, extra=swupdate_cfg)[0]  # "Found nothing to install"
    ok, err = otad(bundle, pki, tmp_path, system=otad_system)
    assert not ok and "nothing to install" in err
