"""mkswu: bundles it builds verify with otad's verifiers and install with `otad install`.

Also pins what it writes into the template text (layout and comments kept), swugenerator's
member names, encryption with a fresh IV per artifact, deterministic output, bounded memory,
and one clear error line for every bad input.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
import zstandard
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import padding as sym_padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from otad import libconfig
from otad.errors import ConfigError, OtadError
from otad.mkswu import cli as mkswu
from otad.mkswu.build import _add_member
from otad.mkswu.staging import StoredArtifact
from otad.swu.cpio import CRC, NEWC, CpioReader, CpioWriter
from otad.swu.signature import CmsVerifier, RsaVerifier
from tests.conftest import Device, run_cli
from tests.pki import Pki, make_pki, rsa_keypair, write_key

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.urandom(200_000) + bytes(300_000)
SLOT_A, SLOT_B = "/dev/mmcblk0p2", "/dev/mmcblk0p3"
AES_KEY = bytes(range(32))


def template(*entries: str, extra: str = "") -> str:
    return ('software = {\n  version = "1.0.0";\n  hardware-compatibility = [ "1.0" ];\n'
            '  images = (\n    ' + ",\n    ".join(entries) + "\n  );\n" + extra + "};\n")


def image(filename: str = "rootfs.img", device: str = SLOT_B, attrs: str = "") -> str:
    return f'{{ filename = "{filename}"; device = "{device}";{" " + attrs if attrs else ""} }}'


def make(tmp_path: Path, text: str, artifacts: Dict[str, bytes], *args: object,
         capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str, Path]:
    """Run `mkswu -s T -a art -o out/update.swu ARGS`; returns (status, stdout, stderr, output)."""
    (tmp_path / "sw-description.in").write_text(text)
    art = tmp_path / "art"
    art.mkdir(exist_ok=True)
    for name, data in artifacts.items():
        (art / name).write_bytes(data)
    out = tmp_path / "out" / "update.swu"
    out.parent.mkdir(exist_ok=True)
    rc = mkswu.main([str(a) for a in ("-s", tmp_path / "sw-description.in", "-a", art, "-o", out, *args)])
    stdout, stderr = capsys.readouterr()
    return rc, stdout, stderr, out


def built(tmp_path: Path, text: str, artifacts: Dict[str, bytes], *args: object,
          capsys: pytest.CaptureFixture[str]) -> Path:
    rc, _, err, out = make(tmp_path, text, artifacts, *args, capsys=capsys)
    assert rc == 0, err
    return out


def members(bundle: Path) -> List[Tuple[str, bytes, str]]:
    """(name, data, magic) of every member, in order; reading checks the crc sums."""
    with open(bundle, "rb") as f:
        return [(m.name, m.read_all(1 << 30), m.header.magic) for m in CpioReader(f)]


def member(bundle: Path, name: str) -> bytes:
    return {n: d for n, d, _ in members(bundle)}[name]


def tree(bundle: Path) -> dict:
    return libconfig.loads(member(bundle, "sw-description"), source="sw-description")


def cms(pki: Pki) -> str:
    return f"CMS,{pki.signer_key},{pki.signer_cert}"


def install(device: Device, pki: Pki, bundle: Path, capsys: pytest.CaptureFixture[str],
            *extra: object) -> Tuple[int, str, str]:
    return run_cli(["--config", device.config(pki), "install", bundle, *extra], capsys)


def decrypt(data: bytes, key: bytes, ivt: str) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes.fromhex(ivt))).decryptor()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()


def aes_key_file(tmp_path: Path, key: bytes = AES_KEY, form: str = "swupdate") -> Path:
    path = tmp_path / "aes.key"
    iv = "0f" * 16
    path.write_text(f"{key.hex()} {iv}\n" if form == "swupdate" else f"salt=\nkey={key.hex()}\niv ={iv}\n")
    return path


# --- good bundles ------------------------------------------------------------------------------

DECODE = {None: lambda d: d, "zlib": gzip.decompress, "zstd": lambda d: zstandard.ZstdDecompressor().decompress(d)}


@pytest.mark.parametrize("fmt", ["newc", "crc"])
@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
def test_bundle_verifies_and_installs_with_otad(tmp_path, device, pki, capsys, fmt, compression) -> None:
    attrs = f'compressed = "{compression}";' if compression else ""
    bundle = built(tmp_path, template(image(attrs=attrs)), {"rootfs.img": IMAGE}, "-k", cms(pki),
                   "--format", fmt, capsys=capsys)
    found = members(bundle)
    name = "rootfs.img" + (f".{compression}" if compression else "")
    assert [n for n, _, _ in found] == ["sw-description", "sw-description.sig", name]
    assert {magic for _, _, magic in found} == {NEWC if fmt == "newc" else CRC}
    desc, sig, stored = (d for _, d, _ in found)
    CmsVerifier.from_file(str(pki.ca_pem)).verify(desc, sig)
    assert DECODE[compression](stored) == IMAGE
    entry = tree(bundle)["software"]["images"][0]
    assert entry["filename"] == name and entry["sha256"] == hashlib.sha256(stored).hexdigest()
    rc, out, err = install(device, pki, bundle, capsys)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE and device.untouched("mmcblk0p2")


def test_default_format_is_crc_like_swugenerator(tmp_path, capsys) -> None:
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"x" * 999}, capsys=capsys)
    assert bundle.read_bytes()[:6] == b"070702" and len(bundle.read_bytes()) % 512 == 0


def test_summary_names_each_member_and_the_signer(tmp_path, pki, capsys) -> None:
    rc, out, err, bundle = make(tmp_path, template(image(attrs='compressed = "zstd";')), {"rootfs.img": IMAGE},
                                "-k", cms(pki), capsys=capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    sha = hashlib.sha256(member(bundle, "rootfs.img.zstd")).hexdigest()
    assert lines[0].startswith("rootfs.img.zstd: ") and f"sha256 {sha}" in lines[0] and "zstd)" in lines[0]
    assert lines[1].startswith(f"{bundle}: 1 artifact(s), ") and "signed (CMS, signer CN=otad test signer)" in lines[1]


def test_rsa_signed_bundle_verifies_and_installs(tmp_path, device, pki, capsys) -> None:
    keys = rsa_keypair(tmp_path / "keys")
    bundle = built(tmp_path, template(image(attrs='compressed = "zlib";')), {"rootfs.img": IMAGE},
                   "-k", f"RSA,{keys.key}", capsys=capsys)
    sig = member(bundle, "sw-description.sig")
    assert len(sig) == 256
    assert RsaVerifier.from_file(str(keys.pub)).verify(member(bundle, "sw-description"), sig).method == "rsa"
    rc, _, err = install(device, pki, bundle, capsys, "--signature", "rsa", "-k", keys.pub)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_cms_signature_is_detached_sha256_without_smime_capabilities_and_carries_the_chain(tmp_path, capsys) -> None:
    chained = make_pki(tmp_path, name="chained", intermediate=True)
    spec = f"CMS,{chained.signer_key},{chained.signer_cert},{chained.chain_pem}"
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", spec, capsys=capsys)
    desc, sig = member(bundle, "sw-description"), member(bundle, "sw-description.sig")
    CmsVerifier.from_file(str(chained.ca_pem)).verify(desc, sig)
    signed = asn1_cms.ContentInfo.load(sig)["content"]
    assert signed["encap_content_info"]["content"].native is None  # detached
    assert [a["algorithm"].native for a in signed["digest_algorithms"]] == ["sha256"]
    subjects = {c.chosen.subject.native["common_name"] for c in signed["certificates"]}
    assert subjects == {"otad test signer", "otad test root intermediate"}
    attrs = {a["type"].native for a in signed["signer_infos"][0]["signed_attrs"]}
    assert "smime_capabilities" not in attrs and {"content_type", "message_digest"} <= attrs


@pytest.mark.parametrize("fields", ["pass,chain", "pass", ",chain", "chain"])
def test_swugenerator_password_file_and_chain_fields_are_accepted(tmp_path, capsys, fields) -> None:
    chained = make_pki(tmp_path, name="chained", intermediate=True)
    key = serialization.load_pem_private_key(chained.signer_key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    (tmp_path / "pass").write_text("s3cret\nignored second line\n")
    files = {"pass": tmp_path / "pass", "chain": chained.chain_pem, "": ""}
    key = locked if "pass" in fields else chained.signer_key
    spec = ",".join(["CMS", str(key), str(chained.signer_cert)] + [str(files[f]) for f in fields.split(",")])
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", spec, capsys=capsys)
    sig = member(bundle, "sw-description.sig")
    CmsVerifier.from_file(str(chained.ca_pem)).verify(member(bundle, "sw-description"), sig)
    carried = len(asn1_cms.ContentInfo.load(sig)["content"]["certificates"])
    assert carried == (2 if "chain" in fields else 1)


def test_ec_signer_works_for_cms(tmp_path, capsys) -> None:
    ec_pki = make_pki(tmp_path, name="ec", key="ec256")
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", cms(ec_pki), capsys=capsys)
    CmsVerifier.from_file(str(ec_pki.ca_pem)).verify(member(bundle, "sw-description"),
                                                     member(bundle, "sw-description.sig"))


SELECTIONS = '''software = {
  version = "2.0";
  hardware-compatibility = [ "1.0" ];
  stable = {
    copy1 = { images = ( { filename = "rootfs.img"; device = "/dev/mmcblk0p2"; compressed = "zstd"; } ); };
    copy2 = { images = ( { filename = "rootfs.img"; device = "/dev/mmcblk0p3"; compressed = "zstd"; } ); };
  };
  rpi0w = { stable = { copy2 = {
    files = ( { filename = "app.conf"; path = "/etc/app.conf"; } );
    scripts = ( { filename = "post.sh"; type = "postinstall"; } );
  }; }; };
};
'''


def test_same_artifact_for_two_slots_is_stored_once_and_installs_in_both(tmp_path, device, pki, capsys) -> None:
    bundle = built(tmp_path, SELECTIONS, {"rootfs.img": IMAGE, "app.conf": b"a=1\n", "post.sh": b"#!/bin/sh\n"},
                   "-k", cms(pki), capsys=capsys)
    names = [n for n, _, _ in members(bundle)]
    assert names == ["sw-description", "sw-description.sig", "rootfs.img.zstd", "app.conf", "post.sh"]
    stable = tree(bundle)["software"]["stable"]
    copy1, copy2 = stable["copy1"]["images"][0], stable["copy2"]["images"][0]
    assert copy1["filename"] == copy2["filename"] == "rootfs.img.zstd" and copy1["sha256"] == copy2["sha256"]
    board = tree(bundle)["software"]["rpi0w"]["stable"]["copy2"]
    assert board["files"][0]["sha256"] == hashlib.sha256(b"a=1\n").hexdigest()
    assert board["scripts"][0]["sha256"] == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    for selection, slot in (("stable,copy1", "mmcblk0p2"), ("stable,copy2", "mmcblk0p3")):
        # another board: the rpi0w section's file and script would go to the real /etc and shell
        rc, _, err = install(device, pki, bundle, capsys, "-e", selection, "-H", "other:1.0")
        assert rc == 0, err
        assert device.slot_bytes(slot)[:len(IMAGE)] == IMAGE


def test_one_file_compressed_two_ways_becomes_two_members(tmp_path, capsys) -> None:
    text = template(image(attrs='compressed = "zstd";'), image(device=SLOT_A, attrs='compressed = "zlib";'),
                    image(device=SLOT_A))
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE}, capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "rootfs.img.zstd", "rootfs.img.zlib",
                                                 "rootfs.img"]
    assert [e["filename"] for e in tree(bundle)["software"]["images"]] == ["rootfs.img.zstd", "rootfs.img.zlib",
                                                                           "rootfs.img"]


def test_legacy_compressed_true_means_zlib(tmp_path, capsys) -> None:
    bundle = built(tmp_path, template(image(attrs="compressed = true;")), {"rootfs.img": IMAGE}, capsys=capsys)
    assert gzip.decompress(member(bundle, "rootfs.img.zlib")) == IMAGE
    assert tree(bundle)["software"]["images"][0]["compressed"] is True


def test_ubivol_gets_its_decompressed_size_like_swugenerator(tmp_path, capsys) -> None:
    entry = '{ filename = "root.ubifs"; volume = "rootfs"; type = "ubivol"; compressed = "zstd"; }'
    bundle = built(tmp_path, template(entry), {"root.ubifs": IMAGE}, capsys=capsys)
    assert tree(bundle)["software"]["images"][0]["properties"] == {"decompressed-size": str(len(IMAGE))}


def test_no_compress_stores_artifacts_as_found_and_keeps_their_names(tmp_path, device, pki, capsys) -> None:
    packed = zstandard.ZstdCompressor().compress(IMAGE)
    bundle = built(tmp_path, template(image("rootfs.img.zst", attrs='compressed = "zstd";')),
                   {"rootfs.img.zst": packed}, "-n", "-k", cms(pki), capsys=capsys)
    assert member(bundle, "rootfs.img.zst") == packed
    assert tree(bundle)["software"]["images"][0]["filename"] == "rootfs.img.zst"
    rc, _, err = install(device, pki, bundle, capsys)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_artifact_dirs_are_searched_in_order(tmp_path, capsys) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.bin").write_bytes(b"first")
    (second / "a.bin").write_bytes(b"second")
    (second / "b.bin").write_bytes(b"only in second")
    text = template(image("a.bin"), image("b.bin"))
    bundle = built(tmp_path, text, {}, "-a", f"{first},{second}", capsys=capsys)
    assert member(bundle, "a.bin") == b"first" and member(bundle, "b.bin") == b"only in second"


# --- encryption --------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["swupdate", "swugenerator"])
@pytest.mark.parametrize("key", [AES_KEY, AES_KEY[:16]], ids=["aes256", "aes128"])
def test_encrypted_artifacts_decrypt_with_the_key_and_their_own_ivt(tmp_path, capsys, form, key) -> None:
    text = template(image(attrs='compressed = "zstd"; encrypted = true;'),
                    image("boot.bin", SLOT_A, attrs="encrypted = true;"))
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE, "boot.bin": b"BOOT" * 100},
                   "-K", aes_key_file(tmp_path, key, form), capsys=capsys)
    rootfs, boot = tree(bundle)["software"]["images"]
    assert (rootfs["filename"], boot["filename"]) == ("rootfs.img.zstd.enc", "boot.bin.enc")
    assert len(rootfs["ivt"]) == 32 and rootfs["ivt"] != boot["ivt"] != "0f" * 16
    stored = member(bundle, "rootfs.img.zstd.enc")
    assert rootfs["sha256"] == hashlib.sha256(stored).hexdigest()
    plain = decrypt(stored, key, rootfs["ivt"])
    assert zstandard.ZstdDecompressor().decompress(plain) == IMAGE
    assert rootfs["properties"] == {"decrypted-size": str(len(plain))}
    assert decrypt(member(bundle, "boot.bin.enc"), key, boot["ivt"]) == b"BOOT" * 100


def test_a_fresh_iv_each_build(tmp_path, capsys) -> None:
    text = template(image(attrs="encrypted = true;"))
    key = aes_key_file(tmp_path)
    ivs = {tree(built(tmp_path, text, {"rootfs.img": IMAGE}, "-K", key, capsys=capsys))["software"]["images"][0]["ivt"]
           for _ in range(3)}
    assert len(ivs) == 3


@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
def test_encrypted_bundle_installs_with_otad(tmp_path, device, pki, capsys, compression) -> None:
    attrs = (f'compressed = "{compression}"; ' if compression else "") + "encrypted = true;"
    key = aes_key_file(tmp_path)
    bundle = built(tmp_path, template(image(attrs=attrs)), {"rootfs.img": IMAGE}, "-K", key, "-k", cms(pki),
                   capsys=capsys)
    rc, _, err = install(device, pki, bundle, capsys, "-K", key)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


# --- the template text -------------------------------------------------------------------------

SHA_X = hashlib.sha256(b"x").hexdigest()

LAYOUTS = {
    "one line": ('software = { images = ( { filename = "x"; device = "/dev/a"; } ); };\n',
                 f'software = {{ images = ( {{ filename = "x"; device = "/dev/a"; sha256 = "{SHA_X}"; }} ); }};\n'),
    "no terminator": ('software = { images = ( { filename = "x" } ); };\n',
                      f'software = {{ images = ( {{ filename = "x"; sha256 = "{SHA_X}"; }} ); }};\n'),
    "own lines, trailing comment kept": (
        'software = {\n  images = (\n    {\n      filename = "x";\n      device = "/dev/a" // slot B\n    }\n  );\n};\n',
        f'software = {{\n  images = (\n    {{\n      filename = "x";\n      device = "/dev/a"; // slot B\n'
        f'      sha256 = "{SHA_X}";\n    }}\n  );\n}};\n'),
    "existing sha256 replaced in place": (
        'software = { images = ( { sha256 = "0000"; /* was */ filename = "x"; } ); };\n',
        f'software = {{ images = ( {{ sha256 = "{SHA_X}"; /* was */ filename = "x"; }} ); }};\n'),
    "colon syntax and CRLF": (
        'software:\r\n{\r\n  images: (\r\n    {\r\n      filename: "x";\r\n    }\r\n  );\r\n};\r\n',
        f'software:\r\n{{\r\n  images: (\r\n    {{\r\n      filename: "x";\r\n      sha256 = "{SHA_X}";\r\n'
        '    }\r\n  );\r\n};\r\n'),
    "adjacent string literals": ('software = { images = ( { filename = "x" "" ; } ); };\n',
                                 f'software = {{ images = ( {{ filename = "x" "" ; sha256 = "{SHA_X}"; }} ); }};\n'),
}


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_template_edits_keep_the_layout(tmp_path, capsys, case) -> None:
    text, expected = LAYOUTS[case]
    bundle = built(tmp_path, text, {"x": b"x"}, capsys=capsys)
    assert member(bundle, "sw-description").decode() == expected


def test_renamed_and_encrypted_entry_is_edited_in_place(tmp_path, capsys) -> None:
    text = ('software = {\n  version = "1.0"; # the release\n  images = (\n    {\n      filename = "rootfs.img";\n'
            '      compressed = "zstd";\n      encrypted = true;\n      properties = { atomic-install = "true" };\n'
            '      ivt = "00";\n    }\n  );\n};\n')
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE}, "-K", aes_key_file(tmp_path), capsys=capsys)
    entry = tree(bundle)["software"]["images"][0]
    stored = member(bundle, "rootfs.img.zstd.enc")
    size = entry["properties"]["decrypted-size"]
    assert member(bundle, "sw-description").decode() == (
        'software = {\n  version = "1.0"; # the release\n  images = (\n    {\n      filename = "rootfs.img.zstd.enc";\n'
        '      compressed = "zstd";\n      encrypted = true;\n'
        f'      properties = {{ atomic-install = "true"; decrypted-size = "{size}"; }};\n'
        f'      ivt = "{entry["ivt"]}";\n      sha256 = "{hashlib.sha256(stored).hexdigest()}";\n    }}\n  );\n}};\n')


def test_variables_and_swugenerator_functions_are_substituted(tmp_path, capsys) -> None:
    (tmp_path / "vars.conf").write_text('variables = { VERSION = "4.2.0"; DEV = "/dev/mmcblk0p3"; };\n')
    text = template(image(device="@@DEV@@", attrs='data = "$swupdate_get_sha256(rootfs.img) '
                                                 '$swupdate_get_size(rootfs.img)";'))
    text = text.replace('"1.0.0"', '"@@VERSION@@"')
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE}, "-c", tmp_path / "vars.conf", capsys=capsys)
    software = tree(bundle)["software"]
    assert software["version"] == "4.2.0" and software["images"][0]["device"] == "/dev/mmcblk0p3"
    assert software["images"][0]["data"] == f"{hashlib.sha256(IMAGE).hexdigest()} {len(IMAGE)}"


def test_a_bundle_without_artifacts_is_just_the_signed_description(tmp_path, pki, capsys) -> None:
    text = 'software = { version = "1"; bootenv = ( { name = "x"; value = "1"; } ); };\n'
    bundle = built(tmp_path, text, {}, "-k", cms(pki), capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "sw-description.sig"]
    assert member(bundle, "sw-description") == text.encode()


# --- determinism, staging, memory --------------------------------------------------------------

def test_output_is_deterministic_except_the_cms_signing_time(tmp_path, pki, capsys) -> None:
    keys = rsa_keypair(tmp_path / "keys")
    text = template(image(attrs='compressed = "zstd";'), image(device=SLOT_A, attrs='compressed = "zlib";'))
    rsa_builds = [built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", f"RSA,{keys.key}", capsys=capsys).read_bytes()
                  for _ in range(2)]
    assert rsa_builds[0] == rsa_builds[1]
    first = members(built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", cms(pki), capsys=capsys))
    second = members(built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", cms(pki), capsys=capsys))
    assert [m for m in first if m[0] != "sw-description.sig"] == [m for m in second if m[0] != "sw-description.sig"]


def test_staging_is_next_to_the_output_and_cleaned_up(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # any use of /tmp would fail
    bundle = built(tmp_path, template(image(attrs='compressed = "zstd"; encrypted = true;')), {"rootfs.img": IMAGE},
                   "-K", aes_key_file(tmp_path), capsys=capsys)
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["update.swu"]
    assert oct(bundle.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("attrs", ["", 'compressed = "zstd"; encrypted = true;', 'compressed = "zlib";'])
def test_memory_stays_bounded_for_a_large_artifact(tmp_path, capsys, attrs) -> None:
    art = tmp_path / "art"
    art.mkdir()
    with open(art / "big.img", "wb") as f:
        for n in range(24):
            f.write(os.urandom(1 << 20) if n % 3 == 0 else bytes(1 << 20))
    (tmp_path / "t.in").write_text(template(image("big.img", attrs=attrs)))
    tracemalloc.start()
    try:
        rc = mkswu.main(["-s", str(tmp_path / "t.in"), "-a", str(art), "-o", str(tmp_path / "big.swu"),
                         "-K", str(aes_key_file(tmp_path))])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 0, capsys.readouterr().err
    assert peak < 8 << 20, f"peak {peak >> 20} MiB of Python allocations for a 24 MiB artifact"


def test_an_artifact_that_changes_before_it_is_copied_is_refused(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"new bytes")
    stale = StoredArtifact("a.bin", str(path), str(path), 9, hashlib.sha256(b"old bytes").hexdigest(),
                           sum(b"new bytes"), None, None, 9, 9)
    with open(tmp_path / "x.swu", "wb") as f, pytest.raises(OtadError, match="changed while the bundle was built"):
        _add_member(CpioWriter(f), stale)


# --- bad input: one clear line, no output ------------------------------------------------------

def _bad_template(text: str) -> Tuple[str, Dict[str, bytes], Sequence[str]]:
    return text, {"rootfs.img": b"x"}, ()


def _key_file(tmp_path: Path, content: str) -> str:
    (tmp_path / "bad.key").write_text(content)
    return str(tmp_path / "bad.key")


def _mismatched_cms(tmp_path: Path, pki: Pki) -> str:
    other = make_pki(tmp_path, name="other")
    return f"CMS,{other.signer_key},{pki.signer_cert}"


def _locked_key(tmp_path: Path, pki: Pki) -> str:
    key = serialization.load_pem_private_key(pki.signer_key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")))
    return f"CMS,{locked},{pki.signer_cert}"


def _ec_rsa(tmp_path: Path, pki: Pki) -> str:
    from tests.pki import new_key

    return f"RSA,{write_key(tmp_path / 'ec.key', new_key('ec256'))}"


GOOD = template(image(attrs='compressed = "zstd";'))

BAD = {
    # case: (template, extra args as a function of (tmp_path, pki), fragments of the one error line)
    "missing artifact": (template(image(), image("nope.img")), lambda t, p: [],
                         ["sw-description.in:6:", "'nope.img' not found in", "/art"]),
    "malformed template": ('software = {\n  version = "1";\n  images = ( { filename = ; } );\n};\n',
                           lambda t, p: [], ["sw-description.in:3:", "syntax error"]),
    "no software root": ('version = "1";\n', lambda t, p: [], ["no root group 'software'"]),
    "unknown compression": (template(image(attrs='compressed = "xz";')), lambda t, p: [],
                            ["sw-description.in:5:", "software.images[0] 'rootfs.img'", "unknown compression 'xz'"]),
    "encryption without key": (template(image(attrs="encrypted = true;")), lambda t, p: [],
                               ["sw-description.in:5:", "no AES key was given (-K FILE)"]),
    "encrypted not a boolean": (template(image(attrs='encrypted = "yes";')), lambda t, p: [],
                                ["encrypted: expected true or false, got 'yes'"]),
    "key file: short key": (GOOD, lambda t, p: ["-K", _key_file(t, "abcd " + "00" * 16)],
                            ["bad.key:1:", "key: expected 32 or 48 or 64 hex digits, got 4 characters"]),
    "key file: not hex": (GOOD, lambda t, p: ["-K", _key_file(t, "zz" * 32 + " " + "00" * 16)],
                          ["bad.key:1:", "key: expected hex digits only"]),
    "key file: no iv": (GOOD, lambda t, p: ["-K", _key_file(t, "00" * 32)],
                        ["bad.key:1:", "'<hex key> <hex iv>'", "got 1 word(s)"]),
    "key file: bad iv": (GOOD, lambda t, p: ["-K", _key_file(t, "00" * 32 + " 1234")], ["iv: expected 32 hex"]),
    "key file: unknown line": (GOOD, lambda t, p: ["-K", _key_file(t, "key=" + "00" * 32 + "\npassword=x\n")],
                               ["bad.key:2:", "got a line starting 'password'"]),
    "key file: missing": (GOOD, lambda t, p: ["-K", str(t / "none.key")],
                          ["none.key: cannot read AES key file: No such file or directory"]),
    "filename with a slash": (template(image("sub/rootfs.img")), lambda t, p: [],
                              ["sw-description.in:5:", "expected a flat file name"]),
    "filename sw-description": (template(image("sw-description")), lambda t, p: [],
                                ["reserved for the bundle's own members"]),
    "two files, one member name": (template(image(attrs='compressed = "zstd";'), image("rootfs.img.zstd")),
                                   lambda t, p: [], ["member 'rootfs.img.zstd' would be both"]),
    "undefined variable": (template(image(device="@@SLOT@@")), lambda t, p: [],
                           ["sw-description.in:5:", "@@SLOT@@ is not defined"]),
    "delta type": (template(image(attrs='type = "delta";')), lambda t, p: [], ["type 'delta' needs zchunk"]),
    "sign: unknown method": (GOOD, lambda t, p: ["-k", "GPG,key"], ["-k 'GPG,key': expected CMS,KEY,CERT"]),
    "sign: PKCS11": (GOOD, lambda t, p: ["-k", "PKCS11,1234"], ["PKCS11", "not supported by mkswu"]),
    "sign: key of another certificate": (GOOD, lambda t, p: ["-k", _mismatched_cms(t, p)],
                                         ["does not belong to the certificate 'CN=otad test signer'"]),
    "sign: encrypted key without password": (GOOD, lambda t, p: ["-k", _locked_key(t, p)],
                                             ["locked.key: the private key is encrypted: give a password file"]),
    "sign: certificate file is not one": (GOOD, lambda t, p: ["-k", f"CMS,{p.signer_key},{p.signer_key}"],
                                          ["signer.key: not a PEM certificate"]),
    "sign: RSA with an EC key": (GOOD, lambda t, p: ["-k", _ec_rsa(t, p)],
                                 ["ec.key: raw signatures need an RSA key"]),
    "output directory missing": (GOOD, lambda t, p: ["-o", str(t / "nowhere" / "x.swu")],
                                 ["cannot create a staging directory next to the output"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_no_output(tmp_path, pki, capsys, case) -> None:
    text, extra, fragments = BAD[case]
    rc, out, err, bundle = make(tmp_path, text, {"rootfs.img": b"x", "rootfs.img.zstd": b"y"},
                                *extra(tmp_path, pki), capsys=capsys)
    assert rc == 2, err
    assert "Traceback" not in err and out == ""
    [line] = err.splitlines()
    assert line.startswith("mkswu: error: ")
    for fragment in fragments:
        assert fragment in line
    assert list(bundle.parent.iterdir()) == []


def test_template_that_is_not_utf8_names_the_line(tmp_path, capsys) -> None:
    (tmp_path / "t.in").write_bytes(b'software = {\n  version = "\xff";\n};\n')
    rc = mkswu.main(["-s", str(tmp_path / "t.in"), "-o", str(tmp_path / "x.swu")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"mkswu: error: {tmp_path / 't.in'}:2: not valid UTF-8: byte 0xff\n"
    assert not (tmp_path / "x.swu").exists()


# --- the two ways in: a sub-command parser and scripts/mkswu -----------------------------------

def test_add_arguments_and_run_work_as_a_sub_command(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="otad")
    parser.add_argument("--config")
    sub = parser.add_subparsers(dest="command")
    mkswu.add_arguments(sub.add_parser("mkswu"))
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "rootfs.img").write_bytes(b"data")
    (tmp_path / "t.in").write_text(template(image()))
    args = parser.parse_args(["--config", "otad.conf", "mkswu", "-s", str(tmp_path / "t.in"), "-a",
                              str(tmp_path / "art"), "-o", str(tmp_path / "x.swu"), "--format", "newc"])
    assert args.config == "otad.conf"  # mkswu's -c/--config does not clobber otad's
    assert mkswu.run(args) == 0
    assert (tmp_path / "x.swu").read_bytes()[:6] == b"070701"
    args = parser.parse_args(["mkswu", "-s", str(tmp_path / "none.in"), "-o", str(tmp_path / "y.swu")])
    with pytest.raises(ConfigError, match="none.in: cannot read template"):
        mkswu.run(args)


def test_scripts_mkswu_builds_a_bundle(tmp_path, pki) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "rootfs.img").write_bytes(IMAGE)
    (tmp_path / "t.in").write_text(template(image(attrs='compressed = "zlib";')))
    proc = subprocess.run([str(REPO / "scripts" / "mkswu"), "-s", "t.in", "-a", "art", "-o", "b.swu",
                           "-k", cms(pki)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rootfs.img.zlib" in proc.stdout
    proc = subprocess.run([str(REPO / "scripts" / "mkswu"), "-s", "t.in", "-o", "c.swu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("mkswu: error: t.in:5:")


def test_importing_mkswu_stays_cheap_for_the_cli_parser() -> None:
    """cli.py builds every sub-command's parser on each run; the heavy libraries load on first use."""
    code = ("import sys, otad.mkswu.cli; print(sorted(m for m in ('cryptography', 'zstandard', 'libconf', "
            "'otad.swu.cpio', 'otad.libconfig') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
