"""`otad install` of AES-encrypted bundles: made by `openssl enc` and by `swugenerator -K`.

Good bundles land byte-exact with the key from -K or install.aes_key_file, the image's `ivt` or the
key file's IV, gzip/zstd inside. Each bad case gives exactly one error line; a refusal before
writing leaves the slot untouched, a failure while streaming marks the target failed.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest

from otad.errors import REFUSED, VERIFICATION, WRITE_FAILED
from tests.bundles import (ImageSpec, description, gz, openssl_aes, sha256, signed_members, swugenerator_bundle,
                           write_bundle, zst)
from tests.conftest import Device, run_cli
from tests.pki import Pki

KEY = bytes(range(32)).hex()
IV = bytes(range(100, 116)).hex()
IVT = bytes(range(200, 216)).hex()
IMAGE = bytes(random.Random(11).getrandbits(8) for _ in range(150_000)) + bytes(350_000)
SLOT_B = "/dev/mmcblk0p3"


def key_file(tmp_path: Path, text: Optional[str] = None, name: str = "aes.key") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else f"{KEY} {IV}\n")
    return path


def encrypted_image(stored: bytes, compressed: Optional[str] = None, ivt: Optional[str] = None,
                    filename: str = "rootfs.img.enc") -> ImageSpec:
    extra = {"encrypted": "true"}
    if ivt:
        extra["ivt"] = f'"{ivt}"'
    return ImageSpec(filename, stored, SLOT_B, compressed=compressed, extra=extra)


def build(tmp_path: Path, pki: Pki, images: Sequence[ImageSpec], name: str = "enc.swu",
          tamper=lambda members: members) -> Path:
    work = tmp_path / (name + ".work")
    work.mkdir()
    return write_bundle(tmp_path / name, tamper(signed_members(description(images), images, pki, work)))


def install(device: Device, pki: Pki, bundle: Path, capsys, *extra: str,
            extra_install: str = "") -> Tuple[int, str, str]:
    return run_cli(["--config", device.config(pki, extra_install), "install", bundle, *extra], capsys)


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("otad: error: ")]
    return line


def record(device: Device) -> dict:
    return json.loads((device.state / "targets.json").read_text())[str(device.slot("mmcblk0p3"))]


def refused_before_writing(device: Device) -> bool:
    return device.untouched() and device.untouched("mmcblk0p2") and not (device.state / "targets.json").exists()


@pytest.mark.parametrize("compressed,encode", [(None, lambda d: d), ("zlib", gz), ("zstd", zst)])
@pytest.mark.parametrize("ivt", [None, IVT])
def test_openssl_encrypted_image_installs_byte_exact(tmp_path, device, pki, capsys, compressed, encode, ivt) -> None:
    stored = openssl_aes(encode(IMAGE), KEY, ivt or IV)
    bundle = build(tmp_path, pki, [encrypted_image(stored, compressed, ivt)])
    rc, out, err = install(device, pki, bundle, capsys, "-K", key_file(tmp_path))
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE and device.untouched("mmcblk0p2")
    assert record(device)["state"] == "installed" and record(device)["sha256"] == sha256(stored)


@pytest.mark.parametrize("hex_digits", [32, 48])
def test_aes_128_and_192_keys_work_like_swupdate(tmp_path, device, pki, capsys, hex_digits) -> None:
    key = KEY[:hex_digits]
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(gz(IMAGE), key, IV), "zlib")])
    rc, _, err = install(device, pki, bundle, capsys, "-K", key_file(tmp_path, f"{key} {IV}"))
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_key_file_from_the_configuration(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(zst(IMAGE), KEY, IV), "zstd")])
    rc, _, err = install(device, pki, bundle, capsys, extra_install=f'aes_key_file = "{key_file(tmp_path)}";')
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_encrypted_and_plain_images_in_one_bundle(tmp_path, device, pki, capsys) -> None:
    images = [encrypted_image(openssl_aes(IMAGE, KEY, IVT), ivt=IVT),
              ImageSpec("boot.bin", b"BOOT" * 100, "/dev/mmcblk0p2")]
    rc, _, err = install(device, pki, build(tmp_path, pki, images), capsys, "-K", key_file(tmp_path))
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE and device.slot_bytes("mmcblk0p2")[:400] == b"BOOT" * 100


@pytest.mark.parametrize("compression", ["zlib", "zstd", None])
def test_swugenerator_encrypted_bundle_installs_with_its_own_key_file(tmp_path, device, pki, capsys,
                                                                      compression) -> None:
    gen_key = key_file(tmp_path, f"key={KEY}\niv={IV}\n", "gen.key")  # swugenerator's format
    comp = f' compressed = "{compression}";' if compression else ""
    template = (f'software = {{ version = "2.0.0"; hardware-compatibility = ["1.0"];\n'
                f'  images = ( {{ filename = "rootfs.img"; device = "{SLOT_B}";{comp} encrypted = true; }} ); }};\n')
    bundle = swugenerator_bundle(tmp_path / "gen.swu", template, {"rootfs.img": IMAGE}, pki, tmp_path, gen_key)
    desc = subprocess.run(["cpio", "-i", "--to-stdout", "sw-description"], input=bundle.read_bytes(),
                          capture_output=True, check=True).stdout.decode()
    # swugenerator encrypts after compressing, picks a random ivt per artifact, renames the member
    # and records the *original* file size as decrypted-size (not the size after decryption).
    assert 'ivt = "' in desc and IV not in desc and ".enc" in desc and f'decrypted-size = "{len(IMAGE)}"' in desc
    rc, _, err = install(device, pki, bundle, capsys, "-K", gen_key)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


# --- bad input ------------------------------------------------------------------------------

def test_encrypted_image_without_a_key_is_refused_before_writing(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(IMAGE, KEY, IV))])
    rc, _, err = install(device, pki, bundle, capsys)
    assert rc == REFUSED
    line = error_line(err)
    assert "'rootfs.img.enc'" in line and "no AES key is configured (install.aes_key_file or -K FILE)" in line
    assert refused_before_writing(device)


def test_no_ivt_and_a_key_file_without_iv_is_refused_before_writing(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(IMAGE, KEY, IV))])
    rc, _, err = install(device, pki, bundle, capsys, "-K", key_file(tmp_path, f"key={KEY}\n"))
    assert rc == REFUSED and "encrypted without an ivt" in error_line(err) and refused_before_writing(device)


@pytest.mark.parametrize("text,where,fragment", [
    (f"{KEY[:-2]} {IV}\n", "aes.key:1", "key: expected 32 or 48 or 64 hex digits, got 62 characters"),
    (f"{KEY}\n", "aes.key:1", "got 1 word(s)"),
    (f"key={KEY}\nmode=cbc\n", "aes.key:2", "expected 'key=<hex>'"),
])
def test_malformed_key_file_is_a_config_error_naming_file_and_line(tmp_path, device, pki, capsys, text, where,
                                                                   fragment) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(IMAGE, KEY, IV))])
    rc, _, err = install(device, pki, bundle, capsys, "-K", key_file(tmp_path, text))
    assert rc == 2
    line = error_line(err)
    assert f"{where}: AES key file: " in line and fragment in line and KEY[:16] not in line
    assert refused_before_writing(device)


def test_wrong_key_fails_and_marks_the_target_failed(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(IMAGE, KEY, IV))])
    wrong = key_file(tmp_path, f"{bytes(range(1, 33)).hex()} {IV}")
    rc, _, err = install(device, pki, bundle, capsys, "-K", wrong)
    assert rc == WRITE_FAILED
    line = error_line(err)
    assert "'rootfs.img.enc'" in line and "bad PKCS#7 padding" in line and "wrong AES key or IV" in line
    assert record(device)["state"] == "failed" and "wrong AES key" in record(device)["reason"]


def test_wrong_key_on_a_compressed_image_fails_before_writing_anything(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [encrypted_image(openssl_aes(zst(IMAGE), KEY, IV), "zstd")])
    rc, _, err = install(device, pki, bundle, capsys, "-K", key_file(tmp_path, f"{bytes(range(1, 33)).hex()} {IV}"))
    assert rc == WRITE_FAILED and "not a zstd stream" in error_line(err)
    assert device.untouched() and record(device)["state"] == "failed"


def test_truncated_ciphertext_is_refused(tmp_path, device, pki, capsys) -> None:
    stored = openssl_aes(IMAGE, KEY, IV)[:-5]  # signed as is: the hash matches, the blocks do not
    rc, _, err = install(device, pki, build(tmp_path, pki, [encrypted_image(stored)]), capsys,
                         "-K", key_file(tmp_path))
    assert rc == WRITE_FAILED
    assert f"ciphertext is {len(stored)} bytes, not a multiple of the 16-byte AES block" in error_line(err)
    assert record(device)["state"] == "failed"


def test_bad_padding_is_refused(tmp_path, device, pki, capsys) -> None:
    stored = openssl_aes(IMAGE + bytes(16 - len(IMAGE) % 16 or 16), KEY, IV, pad=False)  # ends in 0x00
    rc, _, err = install(device, pki, build(tmp_path, pki, [encrypted_image(stored)]), capsys,
                         "-K", key_file(tmp_path))
    assert rc == WRITE_FAILED and "bad PKCS#7 padding" in error_line(err) and record(device)["state"] == "failed"


def test_ciphertext_modified_after_signing_is_a_hash_mismatch_not_a_padding_error(tmp_path, device, pki,
                                                                                   capsys) -> None:
    stored = openssl_aes(IMAGE, KEY, IV)
    flipped = stored[:-1] + bytes([stored[-1] ^ 1])

    def tamper(members: List[Tuple[str, bytes]]) -> List[Tuple[str, bytes]]:
        return [(n, flipped if n == "rootfs.img.enc" else d) for n, d in members]

    rc, _, err = install(device, pki, build(tmp_path, pki, [encrypted_image(stored)], tamper=tamper), capsys,
                         "-K", key_file(tmp_path))
    line = error_line(err)
    assert rc == VERIFICATION and "sha256 mismatch" in line and "padding" not in line
    assert record(device)["state"] == "failed"


def test_one_member_for_two_entries_must_agree_on_encryption(tmp_path, device, pki, capsys) -> None:
    stored = openssl_aes(IMAGE, KEY, IV)
    images = [encrypted_image(stored), ImageSpec("rootfs.img.enc", stored, "/dev/mmcblk0p2")]
    rc, _, err = install(device, pki, build(tmp_path, pki, images), capsys, "-K", key_file(tmp_path))
    assert rc == REFUSED and "disagree on sha256, compression or encryption" in error_line(err)
    assert refused_before_writing(device)


def test_encrypted_files_entry_is_decrypted_and_refused_without_a_key(tmp_path, device, pki, capsys) -> None:
    from tests.unit.install.entries import bundle, file

    dest = tmp_path / "rootfs"
    dest.mkdir()
    motd = b"welcome\n" * 1000
    art = file("motd.gz.enc", openssl_aes(gz(motd), KEY, IVT), str(dest / "motd"), compressed="zlib",
               encrypted=True, ivt=IVT)
    b = bundle(tmp_path / "files.swu", pki, [art])
    rc, _, err = install(device, pki, b, capsys)
    assert rc == REFUSED and "no AES key is configured" in error_line(err) and not (dest / "motd").exists()
    rc, _, err = install(device, pki, b, capsys, "-K", key_file(tmp_path))
    assert rc == 0, err
    assert (dest / "motd").read_bytes() == motd
