"""An install interrupted at any resume point goes on from there and ends byte-identical to
one that was never interrupted; a point that no longer fits is refused before anything is
written. The bundle after the point comes from a file sliced at the point's offset, the way
a resumed download (HTTP Range) delivers it."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import List, Sequence

import pytest
import zstandard

from otad.errors import ResumeError, StateError
from otad.hashstate import available
from otad.install.installer import InstallRequest, Resuming, install_bundle
from otad.install.resume import ResumePoint
from otad.swu.manifest import HardwareRevision
from otad.swu.signature import CmsVerifier
from tests.bundles import CRC, NEWC, ImageSpec, description, gz, signed_members, write_bundle
from tests.pki import Pki

pytestmark = pytest.mark.skipif(not available(), reason="libcrypto cannot be loaded")

SLOT_BYTES = 4 << 20
IMAGE = os.urandom(600_000) + bytes(900_000) + os.urandom(300_000)


def frames(data: bytes, size: int) -> bytes:
    c = zstandard.ZstdCompressor(level=3, write_checksum=True)
    return b"".join(c.compress(data[i:i + size]) for i in range(0, len(data), size))


def fresh(slot: Path) -> None:
    slot.write_bytes(b"\x5a" * SLOT_BYTES)


def request(pki: Pki) -> InstallRequest:
    return InstallRequest(CmsVerifier.from_file(str(pki.ca_pem)), HardwareRevision("rpi0w", "1.0"),
                          chunk_bytes=32 << 10)


def bundle(tmp_path: Path, pki: Pki, images: Sequence[ImageSpec], fmt: str = NEWC, extra: str = "") -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return write_bundle(tmp_path / "b.swu", signed_members(description(images, extra=extra), images, pki, work), fmt)


def full_install(path: Path, pki: Pki, every: int = 100_000) -> List[ResumePoint]:
    points: List[ResumePoint] = []

    def save(point: ResumePoint) -> None:  # through JSON, as the journal keeps it
        points.append(ResumePoint.from_json(json.loads(json.dumps(point.to_json())), "test"))

    with open(path, "rb") as f:
        install_bundle(f, request(pki), resuming=Resuming(save=save, every_bytes=every))
    return points


def resume_from(path: Path, pki: Pki, point: ResumePoint) -> None:
    with open(path, "rb") as f:
        f.seek(point.offset)
        install_bundle(f, request(pki), resuming=Resuming(point))


def interrupted_at(slot: Path, point: ResumePoint, image_end: int) -> None:
    """What the slot may hold after a power cut past `point`: its prefix, then anything."""
    data = bytearray(slot.read_bytes())
    data[point.artifact.written:image_end] = os.urandom(image_end - point.artifact.written)
    slot.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", [NEWC, CRC])
@pytest.mark.parametrize("stored,compressed", [("plain", None), ("frames", "zstd")])
def test_resuming_at_every_point_gives_the_same_slot(tmp_path, pki, fmt, stored, compressed) -> None:
    slot_a, slot_b = tmp_path / "a.img", tmp_path / "b.img"
    fresh(slot_a), fresh(slot_b)
    data = IMAGE if compressed is None else frames(IMAGE, 256 << 10)
    images = [ImageSpec("boot.bin", b"BOOT" * 5000, str(slot_a)),
              ImageSpec("rootfs.img", data, str(slot_b), compressed=compressed)]
    path = bundle(tmp_path, pki, images, fmt)
    points = full_install(path, pki)
    expected_a, expected_b = slot_a.read_bytes(), slot_b.read_bytes()
    assert expected_b[:len(IMAGE)] == IMAGE
    assert len(points) >= 6 and {p.member.name for p in points} == {"rootfs.img"}  # boot.bin: < every
    assert all(p.done[0].name == "boot.bin" for p in points)
    for point in points:
        interrupted_at(slot_b, point, len(IMAGE))
        resume_from(path, pki, point)
        assert slot_a.read_bytes() == expected_a and slot_b.read_bytes() == expected_b, point.offset


def test_no_points_inside_gzip_or_a_single_zstd_frame(tmp_path, pki) -> None:
    slot = tmp_path / "b.img"
    fresh(slot)
    assert full_install(bundle(tmp_path, pki, [ImageSpec("r.gz", gz(IMAGE), str(slot), compressed="zlib")]),
                        pki) == []
    single = zstandard.ZstdCompressor().compress(IMAGE)
    (tmp_path / "b.swu").unlink()
    assert full_install(bundle(tmp_path, pki, [ImageSpec("r.zst", single, str(slot), compressed="zstd")]),
                        pki) == [], "one zstd frame has no inner point"


def test_a_slot_changed_since_the_point_is_refused_before_writing(tmp_path, pki) -> None:
    slot = tmp_path / "b.img"
    fresh(slot)
    path = bundle(tmp_path, pki, [ImageSpec("rootfs.img", IMAGE, str(slot))])
    point = full_install(path, pki)[2]
    fresh(slot)
    with pytest.raises(ResumeError, match="no longer holds what was written there"):
        resume_from(path, pki, point)
    assert slot.read_bytes() == b"\x5a" * SLOT_BYTES


def test_a_point_whose_bytes_do_not_continue_the_bundle_fails_the_hash(tmp_path, pki) -> None:
    slot = tmp_path / "b.img"
    fresh(slot)
    path = bundle(tmp_path, pki, [ImageSpec("rootfs.img", IMAGE, str(slot))])
    first, later = full_install(path, pki)[1:3]
    with open(path, "rb") as f:  # the source continues at a later offset than the point says
        f.seek(later.offset)
        with pytest.raises(Exception, match="sha256 mismatch|truncated|checksum"):
            install_bundle(f, request(pki), resuming=Resuming(first))


def test_a_point_with_a_forged_description_fails_the_signature(tmp_path, pki) -> None:
    slot = tmp_path / "b.img"
    fresh(slot)
    path = bundle(tmp_path, pki, [ImageSpec("rootfs.img", IMAGE, str(slot))])
    point = full_install(path, pki)[1]
    forged = ResumePoint(point.description.replace(b"1.0.0", b"9.9.9"), *list(vars(point).values())[1:])
    with pytest.raises(Exception, match="signature"):
        resume_from(path, pki, forged)


@pytest.mark.parametrize("mangle,message", [
    (lambda d: d.pop("offset"), "offset: missing"),
    (lambda d: d.update(offset=-1), "offset: negative"),
    (lambda d: d.update(offset="12"), "offset: wrong type str"),
    (lambda d: d["artifact"].update(stored_hash="%%%"), "not base64"),
    (lambda d: d.update(member=[]), "member: wrong type list"),
    (lambda d: d["done"].append({"name": "x"}), r"done\[0\]: stored_bytes: missing"),
    (lambda d: d.update(targets=[1]), "targets: expected a list of paths"),
])
def test_a_malformed_point_is_a_clear_error(tmp_path, pki, mangle, message) -> None:
    slot = tmp_path / "b.img"
    fresh(slot)
    data = full_install(bundle(tmp_path, pki, [ImageSpec("rootfs.img", IMAGE, str(slot))]), pki)[0].to_json()
    data["done"] = []
    mangle(data)
    with pytest.raises(StateError, match=message):
        ResumePoint.from_json(data, "resume.json")


def test_an_ext4_image_resumes_with_its_superblock_checked_from_the_slot(tmp_path, pki) -> None:
    from tests.unit.install.entries import e2fsck_clean, mkfs_ext4

    fs = mkfs_ext4(tmp_path / "fs.ext4", 3, {"etc/issue": b"resumed\n", "big": os.urandom(1 << 20)})
    slot = tmp_path / "b.img"
    fresh(slot)
    path = bundle(tmp_path, pki, [ImageSpec("rootfs.ext4", frames(fs, 512 << 10), str(slot), compressed="zstd",
                                            extra={"type": '"ext4"'})])
    points = full_install(path, pki)
    expected = slot.read_bytes()
    assert len(points) >= 3
    for point in points:
        interrupted_at(slot, point, len(fs))
        resume_from(path, pki, point)
        assert slot.read_bytes() == expected
    ok, log = e2fsck_clean(slot)
    assert ok, log
    data = bytearray(expected)  # a superblock that no longer fits is refused on resume too
    data[1024 + 0x38:1024 + 0x3A] = b"\0\0"
    slot.write_bytes(bytes(data))
    with pytest.raises(Exception, match="not an ext2/3/4 filesystem"):
        resume_from(path, pki, points[0])
