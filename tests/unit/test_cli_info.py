"""`otad info`, `--help`, `python -m otad`: what a person reads about a bundle."""

from __future__ import annotations

import json
import subprocess
import sys

from otad.errors import REFUSED, VERIFICATION
from tests.bundles import ImageSpec, description, signed_members, swugenerator_bundle, write_bundle, zst
from tests.conftest import Device, run_cli
from tests.pki import make_pki

IMAGE = bytes(range(256)) * 400


def two_slot_bundle(tmp_path, pki):
    desc = (b'software = { version = "4.2.0"; description = "two slots"; hardware-compatibility = ["1.0"];\n'
            b'  stable = {\n'
            b'    copy1 = { images = ( { filename = "rootfs.zst"; device = "/dev/mmcblk0p2"; compressed = "zstd";'
            b' sha256 = "%s"; } ); };\n'
            b'    copy2 = { ref = "#./copy1"; };\n'
            b'  };\n};\n')
    stored = zst(IMAGE)
    from tests.bundles import sha256

    desc = desc % sha256(stored).encode()
    work = tmp_path / "w"
    work.mkdir()
    images = [ImageSpec("rootfs.zst", stored, "")]
    return write_bundle(tmp_path / "two.swu", signed_members(desc, images, pki, work))


def info(device: Device, pki, bundle, capsys, *args):
    """`otad info` as `install` would run on `device` (its /dev, hardware rpi0w:1.0, state dir)."""
    return run_cli(["--config", device.config(pki), "info", bundle, "-k", pki.ca_pem, *args], capsys)


def test_info_shows_version_selections_images_and_signer(tmp_path, device, pki, capsys) -> None:
    rc, out, err = info(device, pki, two_slot_bundle(tmp_path, pki), capsys, "-e", "stable,copy2")
    assert rc == 0, out + err
    assert "version:     4.2.0" in out and "description: two slots" in out
    assert "signature:   verified (signer CN=otad test signer)" in out
    assert "selection stable,copy1" in out and "selection stable,copy2" in out
    assert "image rootfs.zst [raw, zstd] -> /dev/mmcblk0p2" in out and "hash ok" in out
    assert out.splitlines()[-1] == "would install: yes"


def test_info_json_is_machine_readable(tmp_path, device, pki, capsys) -> None:
    rc, out, _ = info(device, pki, two_slot_bundle(tmp_path, pki), capsys, "--json", "-e", "stable,copy1")
    data = json.loads(out)
    assert rc == 0 and data["ok"] is True and data["version"] == "4.2.0"
    assert data["refused"] is None and data["exit_code"] == 0
    assert [s["selection"] for s in data["selections"]] == [["stable", "copy1"], ["stable", "copy2"]]
    entry = data["selections"][0]["entries"][0]
    assert entry["filename"] == "rootfs.zst" and entry["hash_ok"] is True and entry["compressed"] == "zstd"
    assert data["signer"]["common_name"] == "otad test signer"


def test_info_reports_an_untrusted_signature_and_exits_non_zero(tmp_path, device, pki, capsys) -> None:
    other = make_pki(tmp_path, name="other")
    rc, out, _ = info(device, other, two_slot_bundle(tmp_path, pki), capsys, "-e", "stable,copy1")
    assert rc == VERIFICATION
    assert "signature:   FAILED" in out and "problem: signature FAILED" in out
    assert "would be refused: " in out and "sw-description.sig" in out


def test_info_reports_a_hash_mismatch(tmp_path, device, pki, capsys) -> None:
    images = [ImageSpec("r.img", IMAGE, "/dev/mmcblk0p3", sha256="0" * 64)]
    work = tmp_path / "w"
    work.mkdir()
    bundle = write_bundle(tmp_path / "b.swu", signed_members(description(images), images, pki, work))
    rc, out, _ = info(device, pki, bundle, capsys)
    assert rc == VERIFICATION and "HASH MISMATCH" in out and "'r.img': sha256 mismatch" in out
    assert out.splitlines()[-1] == "would fail while writing: see the problems above"


def test_info_reads_a_swugenerator_bundle(tmp_path, device, pki, capsys) -> None:
    template = ('software = { version = "0.9"; hardware-compatibility = ["1.0"];\n'
                '  images = ( { filename = "rootfs.img"; device = "/dev/mmcblk0p3"; compressed = "zlib"; } ); };\n')
    bundle = swugenerator_bundle(tmp_path / "g.swu", template, {"rootfs.img": IMAGE}, pki, tmp_path)
    rc, out, err = info(device, pki, bundle, capsys)
    assert rc == 0, out + err
    assert "version:     0.9" in out and "[raw, zlib]" in out and "hash ok" in out


def test_info_of_a_missing_file_is_one_clear_line(tmp_path, capsys) -> None:
    rc, _, err = run_cli(["info", tmp_path / "nope.swu"], capsys)
    assert rc == 1 and err.strip() == f"otad: error: {tmp_path / 'nope.swu'}: cannot open bundle: No such file or directory"


def test_python_dash_m_otad_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "otad", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "install" in proc.stdout and "info" in proc.stdout


def test_bad_config_is_exit_status_2_naming_file_and_line(tmp_path, capsys) -> None:
    conf = tmp_path / "otad.conf"
    conf.write_text('install = {\n  signature = "pgp";\n};\n')
    rc, _, err = run_cli(["--config", conf, "info", tmp_path / "x.swu"], capsys)
    assert rc == 2 and "otad.conf" in err and "pgp" in err


def test_info_shows_encryption_and_version_gates(tmp_path, device, pki, capsys) -> None:
    from tests.bundles import openssl_aes

    key, iv = bytes(range(32)).hex(), bytes(range(16)).hex()
    images = [ImageSpec("rootfs.enc", openssl_aes(IMAGE, key, iv), "/dev/mmcblk0p3",
                        extra={"encrypted": "true", "ivt": f'"{iv}"', "name": '"rootfs"', "version": '"2.1.0"',
                               "install-if-higher": "true"}),
              ImageSpec("boot.enc", openssl_aes(IMAGE, key, iv), "/dev/mmcblk0p2", extra={"encrypted": "true"}),
              ImageSpec("plain.img", IMAGE, "/dev/mmcblk0p1", extra={"name": '"fw"', "version": '"7"'})]
    work = tmp_path / "w"
    work.mkdir()
    bundle = write_bundle(tmp_path / "enc.swu", signed_members(description(images), images, pki, work))
    rc, out, err = info(device, pki, bundle, capsys)
    assert rc == REFUSED and "'rootfs.enc'" in out.splitlines()[-1] and "no AES key is configured" in out
    assert "image rootfs.enc [raw, encrypted]" in out
    assert "encrypted: yes, own ivt; install-if-higher: rootfs 2.1.0 (skipped unless sw-versions allows)" in out
    assert "encrypted: yes, IV from the key file" in out
    assert "encrypted: no; component fw version 7 (not gated)" in out
    rc, out, _ = info(device, pki, bundle, capsys, "--json")
    entries = json.loads(out)["selections"][0]["entries"]
    assert [(e["encrypted"], e["ivt"], e["install_if"], e["version"]) for e in entries] == [
        (True, iv, "higher", "2.1.0"), (True, None, None, None), (False, None, None, "7")]
