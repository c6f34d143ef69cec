"""The slot table and booted-slot detection against real cmdline/mountinfo text and a fake /dev."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict

import pytest

from otad.boot.slots import BootedSlot, Slot, SlotTable, booted_slot, env_mismatch
from otad.errors import ConfigError, OtadError, SlotError

A = Slot("a", "/dev/mmcblk0p2", "2", ("stable", "copy1"))
B = Slot("b", "/dev/mmcblk0p3", "3", ("stable", "copy2"))
TABLE = SlotTable((A, B))

PI_CMDLINE = (
    "coherent_pool=1M 8250.nr_uarts=1 snd_bcm2835.enable_headphones=0 console=ttyS0,115200 "
    "console=tty1 root=PARTUUID=1234abcd-03 rootfstype=ext4 fsck.repair=yes rootwait\n"
)
MOUNTINFO = (
    "22 1 179:3 / / rw,noatime shared:1 - ext4 /dev/root rw\n"
    "23 22 0:5 / /dev rw,relatime shared:2 - devtmpfs devtmpfs rw,size=187256k\n"
    "24 22 179:1 / /boot/firmware rw,relatime shared:3 - vfat /dev/mmcblk0p1 rw,fmask=0022\n"
)


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A stand-in for /dev with the two slot partitions and udev's by-partuuid links."""
    d = tmp_path / "dev"
    (d / "disk" / "by-partuuid").mkdir(parents=True)
    for name in ("mmcblk0p1", "mmcblk0p2", "mmcblk0p3"):
        (d / name).write_bytes(b"")
    for part, name in (("01", "mmcblk0p1"), ("02", "mmcblk0p2"), ("03", "mmcblk0p3")):
        os.symlink(f"../../{name}", d / "disk" / "by-partuuid" / f"1234abcd-{part}")
    return d


def detect(dev: Path, cmdline: str, **kwargs: object) -> BootedSlot:
    kwargs.setdefault("partuuid_dir", str(dev / "disk" / "by-partuuid"))
    return booted_slot(TABLE, cmdline=cmdline, device_dir=str(dev), **kwargs)  # type: ignore[arg-type]


class FakeStat:
    """os.stat for a board: slot devices are block devices 179:2 and 179:3."""

    def __init__(self, dev: Path, numbers: Dict[str, int]) -> None:
        self.numbers = {str(dev / name): os.makedev(179, minor) for name, minor in numbers.items()}

    def __call__(self, path: str) -> os.stat_result:
        if path not in self.numbers:
            raise FileNotFoundError(2, "No such file or directory", path)
        return _blk(self.numbers[path])


def _blk(rdev: int) -> os.stat_result:
    # st_rdev is not one of the 10 tuple fields: it goes in the constructor's extra dict.
    fields = [0] * 10
    fields[stat.ST_MODE] = stat.S_IFBLK | 0o660
    return os.stat_result(fields, {"st_rdev": rdev})


# --------------------------------------------------------------------------- the table


def test_table_finds_slots_by_name_and_boot_value() -> None:
    assert TABLE.by_name("b") is B
    assert TABLE.by_boot_value("2") is A
    assert TABLE.by_boot_value("4") is None
    assert TABLE.other(A) is B and TABLE.other(B) is A


def test_by_name_rejects_unknown_name_listing_known_ones() -> None:
    with pytest.raises(SlotError, match=r"no slot named 'c'; known slots: a, b"):
        TABLE.by_name("c")


@pytest.mark.parametrize(
    "slots, message",
    [
        ((A,), "expected at least 2 slots, got 1"),
        ((A, Slot("a", "/dev/mmcblk0p3", "3")), "share the name 'a'"),
        ((A, Slot("b", "/dev/mmcblk0p2", "3")), "share the device '/dev/mmcblk0p2'"),
        ((A, Slot("b", "/dev/mmcblk0p3", "2")), "share the boot value '2'"),
    ],
)
def test_table_rejects_too_few_or_duplicate_slots(slots: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        SlotTable(slots)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": ""}, "name: expected a non-empty text, got ''"),
        ({"name": "a b"}, "name: expected no blanks"),
        ({"device": "mmcblk0p2"}, "device: expected an absolute path .* got 'mmcblk0p2'"),
        ({"boot_value": "2 3"}, "boot value: expected no blanks"),
        ({"selection": ("stable",)}, r"selection: expected a \(set, mode\) pair"),
    ],
)
def test_slot_rejects_bad_fields_quoting_them(kwargs: Dict[str, object], message: str) -> None:
    fields: Dict[str, object] = {"name": "a", "device": "/dev/mmcblk0p2", "boot_value": "2"}
    fields.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Slot(**fields)  # type: ignore[arg-type]


def test_other_needs_exactly_two_slots() -> None:
    table = SlotTable((A, B, Slot("c", "/dev/mmcblk0p4", "4")))
    with pytest.raises(SlotError, match="expected exactly 2 slots .* got 3: a, b, c"):
        table.other(A)


def test_other_rejects_a_slot_from_elsewhere() -> None:
    with pytest.raises(SlotError, match="not in the table"):
        TABLE.other(Slot("c", "/dev/sda2", "2"))


# ------------------------------------------------------------------- the booted slot


def test_explicit_boot_value_from_the_boot_script_wins(dev: Path) -> None:
    cmdline = "console=ttyS0,115200 root=/dev/mmcblk0p3 otad.rootpart=3 rootwait"
    found = detect(dev, cmdline)
    assert found.slot is B
    assert found.evidence == "kernel command line otad.rootpart=3"


def test_explicit_slot_name(dev: Path) -> None:
    found = detect(dev, "root=UUID=0f00-ba11 otad.slot=a")
    assert found == BootedSlot(A, "kernel command line otad.slot=a")


def test_explicit_value_that_names_no_slot_is_an_error(dev: Path) -> None:
    message = r"otad.rootpart='7' is no slot's boot value; known: 2 \(a\), 3 \(b\)"
    with pytest.raises(SlotError, match=message) as info:
        detect(dev, "root=/dev/mmcblk0p7 otad.rootpart=7")
    assert info.value.where == "/proc/cmdline"


def test_explicit_value_contradicting_root_is_an_error(dev: Path) -> None:
    message = "contradicts itself: .*otad.rootpart=3 names slot 'b' but .*root=/dev/mmcblk0p2"
    with pytest.raises(SlotError, match=message):
        detect(dev, "root=/dev/mmcblk0p2 otad.rootpart=3")


def test_explicit_name_and_value_must_agree(dev: Path) -> None:
    with pytest.raises(SlotError, match="name different slots"):
        detect(dev, "otad.slot=a otad.rootpart=3")


def test_root_device_path(dev: Path) -> None:
    found = detect(dev, "console=tty1 root=/dev/mmcblk0p2 rootwait")
    assert found == BootedSlot(A, "kernel command line root=/dev/mmcblk0p2")


def test_root_device_path_through_a_symlink(dev: Path) -> None:
    os.symlink("mmcblk0p3", dev / "root")
    assert detect(dev, "root=/dev/root").slot is B


def test_root_device_matches_without_the_files_existing(tmp_path: Path) -> None:
    found = booted_slot(TABLE, cmdline="root=/dev/mmcblk0p3", device_dir=str(tmp_path / "nodev"))
    assert found.slot is B


def test_last_root_parameter_wins_like_the_kernel(dev: Path) -> None:
    assert detect(dev, "root=/dev/mmcblk0p2 quiet root=/dev/mmcblk0p3").slot is B


def test_parameters_after_double_dash_belong_to_init(dev: Path) -> None:
    assert detect(dev, "root=/dev/mmcblk0p2 -- root=/dev/mmcblk0p3 otad.slot=b").slot is A


def test_quoted_parameters_are_split_like_the_kernel(dev: Path) -> None:
    cmdline = 'dyndbg="file foo.c +p" root="/dev/mmcblk0p3" rootwait'
    assert detect(dev, cmdline).slot is B


def test_partuuid_resolves_through_by_partuuid_case_insensitively(dev: Path) -> None:
    found = detect(dev, PI_CMDLINE.replace("1234abcd", "1234ABCD"))
    assert found.slot is B
    assert found.evidence.startswith("kernel command line root=PARTUUID=1234ABCD-03 (")
    assert found.evidence.endswith("mmcblk0p3)")


def test_partuuid_of_a_non_slot_partition_is_reported(dev: Path) -> None:
    with pytest.raises(SlotError) as info:
        detect(dev, "root=PARTUUID=1234abcd-01")
    message = str(info.value)
    assert message.startswith("/proc/cmdline: cannot tell which slot is booted: root='PARTUUID=1234abcd-01'")
    assert "a=/dev/mmcblk0p2 (2), b=/dev/mmcblk0p3 (3)" in message
    assert "mmcblk0p1 is not a slot device" in message


def test_partuuid_without_udev_falls_back_to_mountinfo(dev: Path) -> None:
    # BusyBox mdev has no /dev/disk/by-partuuid: the mounted root's device number decides.
    found = detect(
        dev,
        PI_CMDLINE,
        partuuid_dir=str(dev / "nothing-here"),
        mountinfo=MOUNTINFO,
        stat=FakeStat(dev, {"mmcblk0p2": 2, "mmcblk0p3": 3}),
    )
    assert found == BootedSlot(B, "mountinfo: / is on device 179:3, that of /dev/mmcblk0p3")


def test_uuid_root_is_skipped_and_said_so(dev: Path) -> None:
    message = r"root=UUID=0f00-ba11 \(UUID\) is not resolved by otad.*no mountinfo given"
    with pytest.raises(SlotError, match=message):
        detect(dev, "root=UUID=0f00-ba11")


def test_uuid_root_falls_back_to_mountinfo(dev: Path) -> None:
    found = detect(dev, "root=UUID=0f00-ba11", mountinfo=MOUNTINFO,
                   stat=FakeStat(dev, {"mmcblk0p2": 2, "mmcblk0p3": 3}))
    assert found.slot is B


def test_root_device_number(dev: Path) -> None:
    found = detect(dev, "root=179:2", stat=FakeStat(dev, {"mmcblk0p2": 2, "mmcblk0p3": 3}))
    assert found == BootedSlot(A, "kernel command line root=179:2 (device 179:2)")


def test_mountinfo_ignores_regular_files(dev: Path) -> None:
    # Plain files have st_rdev 0: they must never match a root on 0:N (tmpfs, overlay).
    info = "22 1 0:0 / / rw - ext4 /dev/root rw\n"
    with pytest.raises(SlotError, match="is not a block device"):
        detect(dev, "root=UUID=x", mountinfo=info)


def test_mountinfo_source_path_when_the_numbers_do_not_match(dev: Path) -> None:
    info = "22 1 0:21 / / rw shared:1 - btrfs /dev/mmcblk0p2 rw\n"
    found = detect(dev, "root=LABEL=rootfs", mountinfo=info)
    assert found == BootedSlot(A, "mountinfo: / is mounted from /dev/mmcblk0p2")


def test_mountinfo_takes_the_last_mount_on_root(dev: Path) -> None:
    info = ("1 0 179:2 / / rw - ext4 /dev/root rw\n"
            "30 1 179:3 / / rw - ext4 /dev/root rw\n")
    found = detect(dev, "", mountinfo=info, stat=FakeStat(dev, {"mmcblk0p2": 2, "mmcblk0p3": 3}))
    assert found.slot is B


def test_nothing_matches_lists_what_was_tried(dev: Path) -> None:
    with pytest.raises(SlotError) as info:
        detect(dev, "console=tty1 quiet", mountinfo="garbage\n")
    assert isinstance(info.value, OtadError)
    assert "no root= parameter" in str(info.value)
    assert "the kernel command line has no root=" in str(info.value)
    assert "mountinfo has no line for '/'" in str(info.value)


def test_unstattable_devices_are_noted_not_raised(dev: Path) -> None:
    def broken(path: str) -> os.stat_result:
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(SlotError, match="cannot stat .*mmcblk0p2: Permission denied"):
        detect(dev, "root=179:2", stat=broken)


# --------------------------------------------------------------------- env vs booted


def test_env_mismatch_is_none_when_env_boots_the_running_slot() -> None:
    booted = BootedSlot(A, "kernel command line otad.rootpart=2")
    assert env_mismatch(TABLE, booted, "2") is None


def test_env_mismatch_names_the_other_slot() -> None:
    booted = BootedSlot(A, "kernel command line otad.rootpart=2")
    sentence = env_mismatch(TABLE, booted, "3")
    assert sentence == (
        "the U-Boot env's rootpart='3' selects slot b for the next boot; "
        "the running slot is a (kernel command line otad.rootpart=2)"
    )


def test_env_mismatch_reports_unknown_and_missing_values() -> None:
    booted = BootedSlot(B, "kernel command line root=/dev/mmcblk0p3")
    unknown = env_mismatch(TABLE, booted, "7")
    assert unknown is not None and "rootpart='7' is no slot's boot value (known: 2 (a), 3 (b))" in unknown
    missing = env_mismatch(TABLE, booted, None, variable="slot")
    assert missing == (
        "the U-Boot env has no 'slot'; the running slot is b (kernel command line root=/dev/mmcblk0p3)"
    )
