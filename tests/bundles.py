"""Test helper: build real .swu bundles three ways.

- `write_bundle`: with otad's own CpioWriter (fast, for bad-input variations),
- `write_bundle_gnu_cpio`: with GNU `cpio -o -H newc|crc` from files on disk,
- `swugenerator_bundle`: with SWUpdate's own `swugenerator` (compresses, hashes, signs).
Signatures come from the real `openssl cms -sign ... -nosmimecap -binary` (see tests/pki.py).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from otad.swu.cpio import CRC, NEWC, CpioWriter


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def zst(data: bytes, **kw: object) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(**kw).compress(data)  # type: ignore[arg-type]


@dataclass
class ImageSpec:
    """One `images` entry plus the bytes stored in the bundle for it."""

    filename: str
    stored: bytes
    device: str
    compressed: Optional[str] = None
    sha256: Optional[str] = "auto"  # "auto": the real hash; None: omit; else: this value
    extra: Dict[str, str] = field(default_factory=dict)  # more attributes, written verbatim

    def entry(self) -> str:
        parts = [f'filename = "{self.filename}";', f'device = "{self.device}";']
        if self.compressed:
            parts.append(f'compressed = "{self.compressed}";')
        digest = sha256(self.stored) if self.sha256 == "auto" else self.sha256
        if digest is not None:
            parts.append(f'sha256 = "{digest}";')
        parts += [f"{k} = {v};" for k, v in self.extra.items()]
        return "{ " + " ".join(parts) + " }"


def description(images: Sequence[ImageSpec], *, version: str = "1.0.0", hw: Sequence[str] = ("1.0",),
                selection: Optional[Tuple[str, str]] = None, extra: str = "") -> bytes:
    """A libconfig sw-description with `images` at the top level or under `set.mode`."""
    entries = ",\n        ".join(i.entry() for i in images)
    hw_list = ", ".join(f'"{h}"' for h in hw)
    body = f"images: (\n        {entries}\n    );"
    if selection:
        body = f"{selection[0]}: {{ {selection[1]}: {{ {body} }}; }};"
    return (f'software =\n{{\n    version = "{version}";\n    description = "test bundle";\n'
            f'    hardware-compatibility: [ {hw_list} ];\n    {body}\n{extra}}}\n').encode()


def write_bundle(path: Path, members: Sequence[Tuple[str, bytes]], fmt: str = NEWC) -> Path:
    with open(path, "wb") as f, CpioWriter(f, fmt) as writer:
        for name, data in members:
            writer.add(name, data)
    return path


def signed_members(desc: bytes, images: Sequence[ImageSpec], pki: Optional[object],
                   workdir: Path) -> List[Tuple[str, bytes]]:
    """[sw-description, sw-description.sig (if pki), artifacts...] in bundle order."""
    members = [("sw-description", desc)]
    if pki is not None:
        from tests.pki import cms_sign

        (workdir / "sw-description").write_bytes(desc)
        cms_sign(workdir / "sw-description", workdir / "sw-description.sig", pki)
        members.append(("sw-description.sig", (workdir / "sw-description.sig").read_bytes()))
    seen = set()
    for image in images:
        if image.filename not in seen:
            seen.add(image.filename)
            members.append((image.filename, image.stored))
    return members


def write_bundle_gnu_cpio(path: Path, members: Sequence[Tuple[str, bytes]], fmt: str = "newc") -> Path:
    """Archive `members` with GNU cpio from a scratch directory, in the given order."""
    scratch = path.parent / (path.name + ".d")
    scratch.mkdir()
    for name, data in members:
        (scratch / name).write_bytes(data)
    names = "".join(f"{name}\n" for name, _ in members).encode()
    with open(path, "wb") as out:
        subprocess.run(["cpio", "-o", "--quiet", "-H", fmt], input=names, stdout=out, cwd=scratch, check=True)
    shutil.rmtree(scratch)
    return path


def swugenerator_bundle(path: Path, template: str, artifacts: Dict[str, bytes], pki: Optional[object],
                        workdir: Path, aes_key_file: Optional[Path] = None) -> Path:
    """Build with SWUpdate's swugenerator: it hashes (and compresses, and with `aes_key_file`,
    a `key=`/`iv=` file, encrypts `encrypted = true` entries, writing their `ivt`) and signs with CMS."""
    art = workdir / "artifacts"
    art.mkdir(exist_ok=True)
    for name, data in artifacts.items():
        (art / name).write_bytes(data)
    (workdir / "sw-description.in").write_text(template)
    cmd = [os.path.join(os.path.dirname(sys.executable), "swugenerator"), "-s", str(workdir / "sw-description.in"),
           "-a", str(art), "-o", str(path)]
    if pki is not None:
        cmd += ["-k", f"CMS,{pki.signer_key},{pki.signer_cert}"]  # type: ignore[attr-defined]
    if aes_key_file is not None:
        cmd += ["-K", str(aes_key_file)]
    subprocess.run(cmd + ["create"], check=True, capture_output=True, cwd=workdir)
    return path


def openssl_aes(data: bytes, key: str, iv: str, *, pad: bool = True) -> bytes:
    """`openssl enc -aes-<bits>-cbc -K KEY -iv IV -nosalt`, as SWUpdate's docs encrypt an image;
    the key size follows the key's length (32/48/64 hex digits). `pad=False` adds -nopad."""
    cmd = ["openssl", "enc", f"-aes-{len(key) * 4}-cbc", "-K", key, "-iv", iv, "-nosalt"] + ([] if pad else ["-nopad"])
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


__all__ = ["CRC", "NEWC", "ImageSpec", "description", "gz", "openssl_aes", "sha256", "signed_members",
           "swugenerator_bundle", "write_bundle", "write_bundle_gnu_cpio", "zst"]
