"""mkswu against the reference tools: Debian's swupdate installs what mkswu builds, otad installs
what swugenerator builds (encrypted, RSA-signed), and openssl verifies mkswu's signatures.

Targets are regular files named by absolute path, so swupdate and otad write the same kind of
target; each install starts from a fresh target and the two results are compared byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest


from otad import libconfig
from otad.mkswu import cli as mkswu
from otad.swu.cpio import CpioReader
from tests.integration.test_swupdate_oracle import run_swupdate
from tests.pki import openssl_cms_verify, rsa_keypair

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]

TARGET_BYTES = 2 << 20
IMAGE = os.urandom(300_000) + bytes(400_000) + os.urandom(1000)
BOOT = b"BOOT" * 512
KEY, IV = "8c" * 16 + "3e" * 16, "a5" * 16


def slot_template(target: Path, rootfs: str = "", boot: str = "") -> str:
    """rootfs.img streamed at offset 0 and boot.bin at 1 MiB of one target, under stable.copy2."""
    return (f'software = {{\n  version = "3.1.4";\n  hardware-compatibility = [ "1.0" ];\n'
            f'  stable = {{ copy2 = {{ images = (\n'
            f'    {{ filename = "rootfs.img"; device = "{target}"; {rootfs} installed-directly = true; }},\n'
            f'    {{ filename = "boot.bin"; device = "{target}"; offset = "1M"; {boot} }}\n'
            f'  ); }}; }};\n}};\n')


def artifacts(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "rootfs.img").write_bytes(IMAGE)
    (directory / "boot.bin").write_bytes(BOOT)
    return directory


def key_file(tmp_path: Path, key: str = KEY, form: str = "swupdate") -> Path:
    path = tmp_path / f"aes-{form}-{len(key)}.key"
    path.write_text(f"{key} {IV}\n" if form == "swupdate" else f"key={key}\niv={IV}\n")
    return path


def mkswu_bundle(tmp_path: Path, template: str, *args: object, name: str = "mk.swu") -> Path:
    (tmp_path / "mk.in").write_text(template)
    out = tmp_path / name
    rc = mkswu.main([str(a) for a in ("-s", tmp_path / "mk.in", "-a", artifacts(tmp_path / "art"), "-o", out,
                                      *args)])
    assert rc == 0
    return out


def swugenerator_bundle(tmp_path: Path, template: str, *args: object, name: str = "gen.swu") -> Path:
    (tmp_path / "gen.in").write_text(template)
    out = tmp_path / name
    cmd = [os.path.join(os.path.dirname(sys.executable), "swugenerator"), "-s", str(tmp_path / "gen.in"),
           "-a", str(artifacts(tmp_path / "art")), "-o", str(out), *map(str, args), "create"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)
    return out


def fresh(target: Path) -> None:
    target.write_bytes(b"\x5a" * TARGET_BYTES)


def swupdate(bundle: Path, ca: Path, *extra: object) -> Tuple[bool, str]:
    return run_swupdate(bundle, ca, ["-e", "stable,copy2", *map(str, extra)])


def otad(bundle: Path, trust: Path, tmp_path: Path, *extra: object) -> Tuple[bool, str]:
    conf = tmp_path / "otad.conf"
    conf.write_text(f'system = {{ state_dir = "{tmp_path / "state"}"; hardware = "rpi0w:1.0"; }};\n'
                    f'install = {{ trust_file = "{trust}"; }};\n')
    cmd = [os.path.join(os.path.dirname(sys.executable), "otad"), "--config", conf, "install", bundle,
           "-e", "stable,copy2", *extra]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, proc.stderr


def both_install(tmp_path: Path, bundle: Path, target: Path, swupdate_args: Sequence[object],
                 otad_trust: Path, otad_args: Sequence[object]) -> bytes:
    """Install with swupdate, then (from a fresh target) with otad; both must write the same bytes."""
    fresh(target)
    ok, log = swupdate(bundle, *swupdate_args)
    assert ok, log
    by_swupdate = target.read_bytes()
    fresh(target)
    ok, err = otad(bundle, otad_trust, tmp_path, *otad_args)
    assert ok, err
    assert target.read_bytes() == by_swupdate
    return by_swupdate


def assert_slot(data: bytes) -> None:
    assert data[:len(IMAGE)] == IMAGE
    assert data[1 << 20:(1 << 20) + len(BOOT)] == BOOT
    assert data[len(IMAGE):1 << 20] == b"\x5a" * ((1 << 20) - len(IMAGE))


def members(bundle: Path) -> List[Tuple[str, bytes]]:
    with open(bundle, "rb") as f:
        return [(m.name, m.read_all(1 << 30)) for m in CpioReader(f)]


# --- mkswu → swupdate ---------------------------------------------------------------------------

CASES = [  # (format, compression, encryption key length in hex digits or None)
    ("crc", "zstd", None), ("newc", "zlib", None), ("crc", None, None),
    ("newc", "zstd", 64), ("crc", "zlib", 64), ("crc", None, 64), ("crc", "zstd", 32),
]


@pytest.mark.parametrize("fmt,compression,key_hex", CASES)
def test_mkswu_bundle_installs_identically_with_swupdate_and_otad(tmp_path, pki, fmt, compression,
                                                                  key_hex) -> None:
    target = tmp_path / "slot-b.img"
    attrs = (f'compressed = "{compression}";' if compression else "") + (" encrypted = true;" if key_hex else "")
    key_args: List[object] = ["-K", key_file(tmp_path, KEY[:key_hex])] if key_hex else []
    bundle = mkswu_bundle(tmp_path, slot_template(target, attrs, attrs), "-k",
                          f"CMS,{pki.signer_key},{pki.signer_cert}", "--format", fmt, *key_args)
    assert_slot(both_install(tmp_path, bundle, target, [pki.ca_pem, *key_args], pki.ca_pem, key_args))


@pytest.mark.parametrize("key_hex", [None, 64])
def test_mkswu_zstd_frames_install_identically_with_swupdate_and_otad(tmp_path, pki, key_hex) -> None:
    """--zstd-frame-mib 1 on a 3.5 MiB image: four frames, which SWUpdate reads as one stream."""
    target = tmp_path / "slot-b.img"
    big = os.urandom(1 << 20) + bytes(2 << 20) + os.urandom(512 << 10)
    art = tmp_path / "art"
    art.mkdir()
    (art / "rootfs.img").write_bytes(big)
    attrs = 'compressed = "zstd";' + (" encrypted = true;" if key_hex else "")
    key_args: List[object] = ["-K", key_file(tmp_path, KEY[:key_hex])] if key_hex else []
    (tmp_path / "mk.in").write_text(
        f'software = {{ version = "3.1.4"; hardware-compatibility = [ "1.0" ]; stable = {{ copy2 = {{ images = (\n'
        f'  {{ filename = "rootfs.img"; device = "{target}"; {attrs} installed-directly = true; }} ); }}; }}; }};\n')
    bundle = tmp_path / "frames.swu"
    assert mkswu.main([str(a) for a in ("-s", tmp_path / "mk.in", "-a", art, "-o", bundle, "--zstd-frame-mib", "1",
                                        "-k", f"CMS,{pki.signer_key},{pki.signer_cert}", *key_args)]) == 0
    stored = dict(members(bundle))["rootfs.img.zstd" + (".enc" if key_hex else "")]
    if not key_hex:
        assert stored.count(b"\x28\xb5\x2f\xfd") >= 4  # one frame magic per MiB of input
    fresh_big = lambda t: t.write_bytes(b"\x5a" * (4 << 20))  # noqa: E731
    fresh_big(target)
    ok, log = swupdate(bundle, pki.ca_pem, *key_args)
    assert ok, log
    by_swupdate = target.read_bytes()
    fresh_big(target)
    ok, err = otad(bundle, pki.ca_pem, tmp_path, *key_args)
    assert ok, err
    assert target.read_bytes() == by_swupdate and by_swupdate[:len(big)] == big


def test_mkswu_cms_signature_with_chain_verifies_with_openssl_and_swupdate(tmp_path) -> None:
    from tests.pki import make_pki

    chained = make_pki(tmp_path, name="chained", intermediate=True)
    target = tmp_path / "slot-b.img"
    bundle = mkswu_bundle(tmp_path, slot_template(target), "-k",
                          f"CMS,{chained.signer_key},{chained.signer_cert},{chained.chain_pem}")
    (desc, content), (_, sig) = members(bundle)[:2]
    (tmp_path / desc).write_bytes(content)
    (tmp_path / "sig").write_bytes(sig)
    ok, err = openssl_cms_verify(tmp_path / desc, tmp_path / "sig", chained.ca_pem)
    assert ok, err
    fresh(target)
    ok, log = swupdate(bundle, chained.ca_pem)
    assert ok, log
    assert_slot(target.read_bytes())


def openssl_dgst_verify(bundle: Path, pub: Path, workdir: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    (_, content), (_, sig) = members(bundle)[:2]
    (workdir / "sw-description").write_bytes(content)
    (workdir / "sw-description.sig").write_bytes(sig)
    return subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                           str(workdir / "sw-description.sig"), str(workdir / "sw-description")],
                          capture_output=True, text=True)


def test_mkswu_rsa_signature_verifies_with_openssl_dgst(tmp_path) -> None:
    keys = rsa_keypair(tmp_path / "keys", bits=3072)
    bundle = mkswu_bundle(tmp_path, slot_template(tmp_path / "slot-b.img"), "-k", f"RSA,{keys.key}")
    proc = openssl_dgst_verify(bundle, keys.pub, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "Verified OK", proc.stderr
    assert len(members(bundle)[1][1]) == 384


# --- swugenerator → otad ------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["zstd", "zlib", None])
def test_swugenerator_encrypted_bundle_installs_identically_with_swupdate_and_otad(tmp_path, pki,
                                                                                   compression) -> None:
    target = tmp_path / "slot-b.img"
    attrs = (f'compressed = "{compression}";' if compression else "") + " encrypted = true;"
    bundle = swugenerator_bundle(tmp_path, slot_template(target, attrs, attrs), "-k",
                                 f"CMS,{pki.signer_key},{pki.signer_cert}", "-K",
                                 key_file(tmp_path, form="swugenerator"))
    swupdate_key = key_file(tmp_path)  # swupdate only reads '<key> <iv>'; otad takes swugenerator's file too
    assert_slot(both_install(tmp_path, bundle, target, [pki.ca_pem, "-K", swupdate_key], pki.ca_pem,
                             ["-K", key_file(tmp_path, form="swugenerator")]))


def test_swugenerator_rsa_bundle_installs_with_otad_and_verifies_with_openssl(tmp_path, pki) -> None:
    keys = rsa_keypair(tmp_path / "keys")
    target = tmp_path / "slot-b.img"
    bundle = swugenerator_bundle(tmp_path, slot_template(target, 'compressed = "zstd";'), "-k", f"RSA,{keys.key}")
    assert openssl_dgst_verify(bundle, keys.pub, tmp_path).returncode == 0
    fresh(target)
    ok, err = otad(bundle, keys.pub, tmp_path, "--signature", "rsa")
    assert ok, err
    assert_slot(target.read_bytes())
    ok, err = otad(bundle, pki.ca_pem, tmp_path)  # a device set up for CMS refuses the raw signature
    assert not ok and "sw-description.sig: not DER CMS SignedData" in err


# --- mkswu and swugenerator agree ---------------------------------------------------------------

def _blank_volatile(tree: Dict[str, object]) -> Dict[str, object]:
    """sha256 and ivt differ by design (other compressor builds, random IVs); decrypted-size too:
    swugenerator writes the artifact's size, and only into the first entry of a shared artifact,
    mkswu the size decryption yields, into every entry. An emptied `properties` group is dropped."""
    def walk(node: object) -> object:
        if isinstance(node, dict):
            kept = {k: "*" if k in ("sha256", "ivt") else walk(v) for k, v in node.items() if k != "decrypted-size"}
            return {k: v for k, v in kept.items() if not (k == "properties" and v == {})}
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v) for v in node)
        return node
    return walk(tree)  # type: ignore[return-value]


SHARED = ('software = {\n  version = "1.0";\n  hardware-compatibility = [ "1.0" ];\n'
          '  stable = {\n'
          '    copy1 = { images = ( { filename = "rootfs.img"; device = "/dev/mmcblk0p2"; compressed = "zstd"; },\n'
          '                         { filename = "boot.bin"; device = "/dev/mmcblk0p1"; compressed = "zlib"; '
          'encrypted = true; } ); };\n'
          '    copy2 = { images = ( { filename = "rootfs.img"; device = "/dev/mmcblk0p3"; compressed = "zstd"; } );\n'
          '              files = ( { filename = "boot.bin"; path = "/boot/boot.bin"; properties = { x = "y"; }; '
          '%s encrypted = true; } ); };\n'
          '  };\n};\n')


def test_mkswu_names_orders_and_describes_members_like_swugenerator(tmp_path, pki) -> None:
    template = SHARED % 'compressed = "zlib";'
    sign = ["-k", f"CMS,{pki.signer_key},{pki.signer_cert}"]
    gen = members(swugenerator_bundle(tmp_path, template, *sign, "-K", key_file(tmp_path, form="swugenerator")))
    mine = members(mkswu_bundle(tmp_path, template, *sign, "-K", key_file(tmp_path)))
    names = [name for name, _ in mine]
    assert names == [name for name, _ in gen]
    assert names == ["sw-description", "sw-description.sig", "rootfs.img.zstd", "boot.bin.zlib.enc"]
    trees = [libconfig.loads(m[0][1], source=label) for m, label in ((gen, "swugenerator"), (mine, "mkswu"))]
    assert _blank_volatile(trees[0]) == _blank_volatile(trees[1])


def test_one_artifact_processed_two_ways_gets_two_members_where_swugenerator_reuses_the_first(tmp_path,
                                                                                              pki) -> None:
    """swugenerator stores an artifact once, processed as its first entry says, and points later
    entries at that member even when they ask for other processing: here the files entry (not
    compressed) would get gzip bytes. mkswu keys members by name, so the entry gets its own."""
    template = SHARED % ""
    gen = members(swugenerator_bundle(tmp_path, template, "-K", key_file(tmp_path, form="swugenerator")))
    mine = members(mkswu_bundle(tmp_path, template, "-K", key_file(tmp_path)))
    assert [n for n, _ in gen] == ["sw-description", "rootfs.img.zstd", "boot.bin.zlib.enc"]
    assert [n for n, _ in mine] == ["sw-description", "rootfs.img.zstd", "boot.bin.zlib.enc", "boot.bin.enc"]
    gen_file = libconfig.loads(gen[0][1], source="gen")["software"]["stable"]["copy2"]["files"][0]
    mine_file = libconfig.loads(mine[0][1], source="mine")["software"]["stable"]["copy2"]["files"][0]
    assert "compressed" not in gen_file and gen_file["filename"] == "boot.bin.zlib.enc"
    assert "compressed" not in mine_file and mine_file["filename"] == "boot.bin.enc"
