"""Test helper: run mkswu on a template and artifact files, read back the bundle it wrote,
install it with `otad install`."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import zstandard
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from otad import libconfig
from otad.mkswu import cli as mkswu
from otad.swu.cpio import CpioReader
from tests.conftest import Device, run_cli
from tests.pki import Pki


REPO = Path(__file__).resolve().parents[3]
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


DECODE = {None: lambda d: d, "zlib": gzip.decompress, "zstd": lambda d: zstandard.ZstdDecompressor().decompress(d)}
