"""ext4 images through `otad install`: streamed like raw, superblock checked before the first
byte is written, grown to the partition with resize2fs when asked (property or config).

Images come from `mkfs.ext4 -d`; results are checked with e2fsck -fn, debugfs and dumpe2fs.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from otad.superblock import parse_superblock
from otad.errors import REFUSED, WRITE_FAILED
from tests.bundles import gz
from tests.conftest import Device, run_cli
from tests.pki import Pki
from tests.unit.install.entries import bundle, debugfs, e2fsck_clean, fs_bytes, image, mkfs_ext4

SLOT_MIB = 16


@pytest.fixture
def slot(device: Device) -> Path:
    """Slot b as a 16 MiB 'partition' (the conftest ones are 4 MiB)."""
    path = device.slot()
    path.write_bytes(b"\xaa" * (SLOT_MIB << 20))
    return path


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return mkfs_ext4(tmp_path_factory.mktemp("img") / "rootfs.ext4", 8,
                     {"etc/issue": b"otad ext4 test\n", "usr/bin/tool": b"\x7fELF" + bytes(5000)})


def install(device: Device, pki: Pki, path: Path, capsys: pytest.CaptureFixture[str], extra_install: str = ""):
    return run_cli(["--config", device.config(pki, extra_install), "install", path], capsys)


def one_error(err: str) -> str:
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("otad: error: ")]
    return line


@pytest.mark.parametrize("how", ["type ext4 + property", "raw + property", "type ext4 + config"])
def test_ext4_image_is_written_checked_and_grown_to_the_partition(tmp_path, device, pki, capsys, slot, rootfs,
                                                                   how) -> None:
    attrs = {"type": "raw"} if how.startswith("raw") else {"type": "ext4"}
    if "property" in how:
        attrs["properties"] = {"resize": "true"}
    art = image("rootfs.ext4.gz", gz(rootfs), "/dev/mmcblk0p3", compressed="zlib", **attrs)
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys,
                         'ext4_resize = true;' if "config" in how else "")
    assert rc == 0, err
    ok, report = e2fsck_clean(slot)
    assert ok, report
    assert debugfs(slot, "cat /etc/issue") == "otad ext4 test\n"
    assert fs_bytes(slot) == SLOT_MIB << 20


def test_ext4_image_is_not_grown_unless_asked(tmp_path, device, pki, capsys, slot, rootfs) -> None:
    for attrs, conf in (({"type": "ext4"}, ""), ({"type": "ext4", "properties": {"resize": "false"}},
                                                  "ext4_resize = true;")):
        slot.write_bytes(b"\xaa" * (SLOT_MIB << 20))
        art = image("rootfs.ext4", rootfs, "/dev/mmcblk0p3", **attrs)
        rc, _, err = install(device, pki, bundle(tmp_path / f"b{len(conf)}.swu", pki, [art]), capsys, conf)
        assert rc == 0, err
        assert fs_bytes(slot) == 8 << 20 and e2fsck_clean(slot)[0]
        assert slot.read_bytes()[8 << 20:] == b"\xaa" * ((SLOT_MIB - 8) << 20)


def test_ext4_image_larger_than_the_target_is_refused_before_writing(tmp_path, device, pki, capsys, rootfs) -> None:
    """8 MiB filesystem, 4 MiB partition: the superblock says so before a byte is written."""
    art = image("rootfs.ext4", rootfs, "/dev/mmcblk0p3", type="ext4")
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == WRITE_FAILED
    line = one_error(err)
    assert "'rootfs.ext4'" in line and "ext4 filesystem of 8388608 bytes" in line and "does not fit" in line
    assert device.untouched()


def test_superblock_claiming_more_than_the_target_is_refused_even_if_the_bytes_fit(tmp_path, device, pki, capsys,
                                                                                    rootfs) -> None:
    """A truncated image: 2 MiB of bytes, but its superblock says 8 MiB; the 4 MiB slot would
    hold the bytes and a filesystem that ends past the partition."""
    art = image("rootfs.ext4", rootfs[:2 << 20], "/dev/mmcblk0p3", type="ext4")
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == WRITE_FAILED and "does not fit the target's 4194304 bytes" in one_error(err)
    assert device.untouched()


def test_ext4_type_on_something_else_is_refused_before_writing(tmp_path, device, pki, capsys) -> None:
    art = image("rootfs.ext4", bytes(100_000), "/dev/mmcblk0p3", type="ext4")
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == WRITE_FAILED and "not an ext2/3/4 filesystem: no superblock magic 0xEF53" in one_error(err)
    assert device.untouched()


def test_resize_needs_the_filesystem_at_offset_zero(tmp_path, device, pki, capsys, rootfs) -> None:
    art = image("rootfs.ext4", rootfs, "/dev/mmcblk0p3", type="ext4", offset="1M", properties={"resize": "true"})
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == REFUSED and "properties.resize" in one_error(err) and "offset" in one_error(err)
    assert device.untouched()


def test_resize_property_must_be_a_boolean_word(tmp_path, device, pki, capsys, rootfs) -> None:
    art = image("rootfs.ext4", rootfs, "/dev/mmcblk0p3", type="ext4", properties={"resize": "please"})
    rc, _, err = install(device, pki, bundle(tmp_path / "b.swu", pki, [art]), capsys)
    assert rc == REFUSED and "properties.resize: expected \"true\" or \"false\", got 'please'" in one_error(err)


def test_superblock_parser_reads_64bit_block_counts() -> None:
    head = bytearray(2048)
    sb = 1024
    struct.pack_into("<I", head, sb + 0x04, 5)  # blocks_lo
    struct.pack_into("<I", head, sb + 0x18, 2)  # 4 KiB blocks
    struct.pack_into("<H", head, sb + 0x38, 0xEF53)
    struct.pack_into("<I", head, sb + 0x60, 0x80)  # INCOMPAT_64BIT
    struct.pack_into("<I", head, sb + 0x150, 1)  # blocks_hi
    parsed = parse_superblock(bytes(head))
    assert parsed is not None and parsed.blocks == (1 << 32) + 5 and parsed.block_size == 4096
    assert parse_superblock(bytes(2048)) is None
