"""Test helper: sw-descriptions with images, files and scripts, and bundles whose members come
in exactly the order a test gives (the order is what the phase rules are about)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from tests.bundles import sha256, signed_members, write_bundle

Value = Union[str, bool, int, Dict[str, str]]


@dataclass
class Art:
    """One entry of `section` (images, files, scripts) and the bytes stored for it."""

    section: str
    filename: str
    stored: bytes
    attrs: Dict[str, Value] = field(default_factory=dict)
    hashed: bool = True

    def entry(self) -> str:
        attrs: Dict[str, Value] = {"filename": self.filename, **self.attrs}
        if self.hashed and "sha256" not in attrs:
            attrs["sha256"] = sha256(self.stored)
        return "{ " + " ".join(f"{k} = {_value(v)};" for k, v in attrs.items()) + " }"


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{ " + " ".join(f'{k} = "{v}";' for k, v in value.items()) + " }"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def image(filename: str, stored: bytes, device: str, **attrs: Value) -> Art:
    return Art("images", filename, stored, {"device": device, **attrs})


def file(filename: str, stored: bytes, path: str, **attrs: Value) -> Art:
    return Art("files", filename, stored, {"path": path, **attrs})


def script(filename: str, body: Union[str, bytes], type: Optional[str] = "shellscript", **attrs: Value) -> Art:
    data = body.encode() if isinstance(body, str) else body
    return Art("scripts", filename, data, {**({"type": type} if type else {}), **attrs})


def description(arts: Sequence[Art], *, version: str = "1.0.0", selection: Optional[Tuple[str, str]] = None) -> bytes:
    sections = []
    for name in ("images", "files", "scripts"):
        entries = [a.entry() for a in arts if a.section == name]
        if entries:
            sections.append(f"{name}: (\n    " + ",\n    ".join(entries) + "\n  );")
    body = "\n  ".join(sections)
    if selection:
        body = f"{selection[0]}: {{ {selection[1]}: {{ {body} }}; }};"
    return (f'software = {{\n  version = "{version}";\n  hardware-compatibility: [ "1.0" ];\n'
            f'  {body}\n}};\n').encode()


def bundle(path: Path, pki: object, arts: Sequence[Art], *, order: Optional[Sequence[str]] = None,
           desc: Optional[bytes] = None, selection: Optional[Tuple[str, str]] = None) -> Path:
    """Members in `order` (filenames) or in the order of `arts`; each member stored once."""
    desc = desc if desc is not None else description(arts, selection=selection)
    work = path.parent / (path.name + ".work")
    work.mkdir()
    head = signed_members(desc, [], pki, work)
    stored = {a.filename: a.stored for a in arts}
    names = list(order) if order is not None else list(dict.fromkeys(a.filename for a in arts))
    return write_bundle(path, head + [(n, stored[n]) for n in names])


def tar_bytes(members: Sequence[Tuple[str, Union[bytes, str, None]]], *, mode: str = "w",
              attrs: Optional[Dict[str, Dict[str, object]]] = None) -> bytes:
    """A tar of (name, data) members: bytes = file, str = symlink target, None = directory;
    names ending in '->hard' make a hardlink to the str target. `attrs` sets TarInfo fields."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name.replace("->hard", ""))
            info.mtime = 1_600_000_000
            info.mode = 0o644
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(data, str):
                info.type = tarfile.LNKTYPE if name.endswith("->hard") else tarfile.SYMTYPE
                info.linkname = data
            else:
                info.size = len(data)
            for key, value in (attrs or {}).get(info.name, {}).items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    return out.getvalue()


def mkfs_ext4(path: Path, size_mib: int, files: Dict[str, bytes], *, block_size: int = 4096) -> bytes:
    """An ext4 image made with `mkfs.ext4 -d` from a directory holding `files`."""
    root = path.parent / (path.name + ".root")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-E", "root_owner=0:0", "-d", str(root),
                    str(path), f"{size_mib}M"], check=True, capture_output=True)
    return path.read_bytes()


def debugfs(device: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(device)], check=True, capture_output=True,
                          text=True).stdout


def e2fsck_clean(device: Path) -> Tuple[bool, str]:
    proc = subprocess.run(["e2fsck", "-fn", str(device)], capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def fs_bytes(device: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(device)], check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def can_loop_mount(tmp: Path) -> Optional[str]:
    """None if `mount -o loop` works here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "not root: cannot mount"
    img, point = tmp / "probe.img", tmp / "probe.mnt"
    point.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img), "2M"], check=True, capture_output=True)
    proc = subprocess.run(["mount", "-o", "loop", str(img), str(point)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -o loop does not work here: {proc.stderr.strip()}"
    subprocess.run(["umount", str(point)], check=True)
    return None
