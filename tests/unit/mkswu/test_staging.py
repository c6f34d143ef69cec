"""otad.mkswu.staging: encryption with a fresh IV per artifact (decrypts, installs), staging next
to the output and cleaned up, bounded memory for a large artifact."""

from __future__ import annotations

import hashlib
import os
import tempfile
import tracemalloc

import pytest
import zstandard

from otad.mkswu import cli as mkswu
from tests.unit.mkswu.helpers import (AES_KEY, IMAGE, SLOT_A, aes_key_file, built, cms, decrypt, image, install, member,
                                      template, tree)


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
