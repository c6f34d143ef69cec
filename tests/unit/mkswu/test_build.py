"""otad.mkswu.build: bundles that verify and install with otad, members named, found and shared
as swugenerator does it, deterministic output, and a member that changes while it is copied."""

from __future__ import annotations

import hashlib

import pytest
import zstandard

from otad.errors import OtadError
from otad.mkswu.build import _add_member
from otad.mkswu.staging import StoredArtifact
from otad.swu.cpio import CRC, NEWC, CpioWriter
from otad.swu.signature import CmsVerifier
from tests.pki import rsa_keypair
from tests.unit.mkswu.helpers import DECODE, IMAGE, SLOT_A, built, cms, image, install, member, members, template, tree


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


def test_a_bundle_without_artifacts_is_just_the_signed_description(tmp_path, pki, capsys) -> None:
    text = 'software = { version = "1"; bootenv = ( { name = "x"; value = "1"; } ); };\n'
    bundle = built(tmp_path, text, {}, "-k", cms(pki), capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "sw-description.sig"]
    assert member(bundle, "sw-description") == text.encode()


def test_output_is_deterministic_except_the_cms_signing_time(tmp_path, pki, capsys) -> None:
    keys = rsa_keypair(tmp_path / "keys")
    text = template(image(attrs='compressed = "zstd";'), image(device=SLOT_A, attrs='compressed = "zlib";'))
    rsa_builds = [built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", f"RSA,{keys.key}", capsys=capsys).read_bytes()
                  for _ in range(2)]
    assert rsa_builds[0] == rsa_builds[1]
    first = members(built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", cms(pki), capsys=capsys))
    second = members(built(tmp_path, text, {"rootfs.img": IMAGE}, "-k", cms(pki), capsys=capsys))
    assert [m for m in first if m[0] != "sw-description.sig"] == [m for m in second if m[0] != "sw-description.sig"]


def test_an_artifact_that_changes_before_it_is_copied_is_refused(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"new bytes")
    stale = StoredArtifact("a.bin", str(path), str(path), 9, hashlib.sha256(b"old bytes").hexdigest(),
                           sum(b"new bytes"), None, None, 9, 9)
    with open(tmp_path / "x.swu", "wb") as f, pytest.raises(OtadError, match="changed while the bundle was built"):
        _add_member(CpioWriter(f), stale)
