"""What a SWUpdate user gets wrong about signing, each answered by one line that says what to do.

The unsigned refusal names the flag that allows it; `-k` with `--insecure-allow-unsigned` is not
reported as a missing trust file; a private key as trust file is refused; a bare public key
while the method is CMS points to `--signature rsa`, and certificates for raw RSA to
`--signature cms`. Nothing is written in any refused case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from tests.bundles import ImageSpec, description, signed_members, write_bundle
from tests.conftest import Device, one_error, run_cli
from tests.pki import Pki, rsa_keypair, rsa_sign

SLOT_B = "/dev/mmcblk0p3"
IMAGE = b"rootfs " * 20000


def bundle(tmp_path: Path, pki: Optional[Pki], name: str = "update.swu") -> Path:
    images = [ImageSpec("rootfs.img", IMAGE, SLOT_B)]
    work = tmp_path / (name + ".work")
    work.mkdir()
    return write_bundle(tmp_path / name, signed_members(description(images), images, pki, work))


def rsa_bundle(tmp_path: Path, key: Path) -> Path:
    images = [ImageSpec("rootfs.img", IMAGE, SLOT_B)]
    desc = tmp_path / "sw-description"
    desc.write_bytes(description(images))
    sig = rsa_sign(desc, tmp_path / "sw-description.sig", key)
    return write_bundle(tmp_path / "rsa.swu", [("sw-description", desc.read_bytes()),
                                                ("sw-description.sig", sig.read_bytes()), ("rootfs.img", IMAGE)])


def install(device: Device, pki: Pki, path: Path, capsys, *args: str):
    return run_cli(["--config", device.config(pki), "install", path, *args], capsys)


def test_the_unsigned_refusal_names_the_flag_that_allows_it(tmp_path, device, pki, capsys) -> None:
    rc, _, err = install(device, pki, bundle(tmp_path, None), capsys)
    assert rc == 4 and "bundle is not signed" in one_error(err) and "--insecure-allow-unsigned" in one_error(err)
    assert device.untouched()


@pytest.mark.parametrize("trust", ["missing", "present"])
def test_key_with_insecure_allow_unsigned_is_not_a_missing_trust_file(tmp_path, device, pki, capsys,
                                                                      trust: str) -> None:
    key = str(pki.ca_pem) if trust == "present" else str(tmp_path / "missing.pem")
    unsigned = bundle(tmp_path, None)
    rc, out, err = run_cli(["--config", device.config(pki), "info", unsigned, "-k", key,
                            "--insecure-allow-unsigned"], capsys)
    assert rc == 0, err
    assert "not found" not in err and "note: signature not checked: --insecure-allow-unsigned" in err
    rc, _, err = install(device, pki, unsigned, capsys, "-k", key, "--insecure-allow-unsigned")
    assert rc == 0, err
    assert "not found" not in err and "trust file" not in err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_info_without_a_trust_file_still_says_it_is_missing(tmp_path, device, pki, capsys) -> None:
    rc, out, err = run_cli(["--config", device.config(pki), "info", bundle(tmp_path, pki), "-k",
                            tmp_path / "missing.pem"], capsys)
    # install refuses without a trust file, so info's verdict says so too (exit 4)
    assert rc == 4 and f"trust file {tmp_path / 'missing.pem'} not found (use -k)" in err
    assert "would be refused" in out + err


@pytest.mark.parametrize("method", ["cms", "rsa"])
def test_a_private_key_as_trust_file_is_refused_before_anything_is_written(tmp_path, device, pki, capsys,
                                                                            method: str) -> None:
    rc, _, err = install(device, pki, bundle(tmp_path, pki), capsys, "-k", str(pki.signer_key),
                         "--signature", method)
    line = one_error(err)
    assert rc == 4 and f"{pki.signer_key}: holds a private key" in line and "build host" in line
    assert device.untouched()


def test_a_bare_public_key_with_cms_says_to_use_signature_rsa(tmp_path, device, pki, capsys) -> None:
    keys = rsa_keypair(tmp_path / "raw")
    signed = rsa_bundle(tmp_path, keys.key)
    rc, _, err = install(device, pki, signed, capsys, "-k", str(keys.pub))
    assert rc == 4 and "use --signature rsa" in one_error(err)
    assert device.untouched()
    rc, _, err = install(device, pki, signed, capsys, "-k", str(keys.pub), "--signature", "rsa")
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_certificates_with_signature_rsa_say_to_use_cms(tmp_path, device, pki, capsys) -> None:
    rc, _, err = install(device, pki, bundle(tmp_path, pki), capsys, "--signature", "rsa")
    assert rc == 4 and "--signature cms" in one_error(err)
    assert device.untouched()
