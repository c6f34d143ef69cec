"""`otad install` version policy end to end: -N / --max-version / -R refuse whole bundles before
anything is written; install-if-different / install-if-higher skip single images against
sw-versions (the skipped member is still read and its cpio checksum checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import pytest

from otad.errors import REFUSED
from tests.bundles import CRC, NEWC, ImageSpec, description, signed_members, write_bundle
from tests.conftest import Device, run_cli
from tests.pki import Pki

ROOTFS = bytes(range(256)) * 400
BOOT = b"BOOT" * 256


def rootfs(version: str, flag: Optional[str] = "install-if-higher") -> ImageSpec:
    extra = {"name": '"rootfs"', "version": f'"{version}"'}
    if flag:
        extra[flag] = "true"
    return ImageSpec("rootfs.img", ROOTFS, "/dev/mmcblk0p3", extra=extra)


def boot() -> ImageSpec:
    return ImageSpec("boot.img", BOOT, "/dev/mmcblk0p2")


def build(tmp_path: Path, pki: Pki, images: Sequence[ImageSpec], version: str = "1.0.0", fmt: str = NEWC,
          tamper=lambda members: members) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    members = tamper(signed_members(description(images, version=version), images, pki, work))
    return write_bundle(tmp_path / "v.swu", members, fmt)


def install(device: Device, pki: Pki, bundle: Path, capsys, *args: str, sw_versions: Optional[str] = None,
            install_extra: str = "") -> Tuple[int, str, str]:
    versions = device.root / "sw-versions"
    if sw_versions is not None:
        versions.write_text(sw_versions)
    conf = device.root / "otad.conf"
    conf.write_text(f'system = {{ state_dir = "{device.state}"; device_dir = "{device.dev}"; hardware = "rpi0w:1.0";'
                    f' sw_versions_file = "{versions}"; }};\n'
                    f'install = {{ trust_file = "{pki.ca_pem}"; {install_extra} }};\n')
    return run_cli(["--config", conf, "install", bundle, *args], capsys)


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("otad: error: ")]
    return line


def untouched(device: Device) -> bool:
    return device.untouched() and device.untouched("mmcblk0p2") and not (device.state / "targets.json").exists()


@pytest.mark.parametrize("args,install_extra,fragment", [
    (["-N", "1.0.1"], "", "bundle version '1.0.0' is lower than the minimum version '1.0.1'"),
    ([], 'min_version = "1.2";', "bundle version '1.0.0' is lower than the minimum version '1.2'"),
    (["--min-version", "0.1", "--max-version", "0.9"], "",
     "bundle version '1.0.0' is higher than the maximum version '0.9'"),
    (["-R", "1.0.0"], "", "bundle version '1.0.0' equals '1.0.0', which must not be installed again"),
])
def test_bundle_version_policy_refuses_before_writing(tmp_path, device, pki, capsys, args, install_extra,
                                                      fragment) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki, [boot()]), capsys, *args, install_extra=install_extra)
    assert rc == REFUSED and fragment in error_line(err) and untouched(device)


@pytest.mark.parametrize("args", [["-N", "1.0.0"], ["--max-version", "1.0.0"], ["-R", "1.0"], ["-N", "0.9.9"]])
def test_bundle_version_policy_allows_equal_bounds_and_other_strings(tmp_path, device, pki, capsys, args) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki, [boot()]), capsys, *args)
    assert rc == 0, err
    assert device.slot_bytes("mmcblk0p2")[:len(BOOT)] == BOOT


def test_min_above_max_in_the_configuration_is_a_config_error(tmp_path, device, pki, capsys) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki, [boot()]), capsys,
                         install_extra='min_version = "2.0"; max_version = "1.5";')
    assert rc == 2 and "otad.conf:2: install.max_version: '1.5' is lower than install.min_version '2.0'" in err


@pytest.mark.parametrize("flag,proposed,installed,skipped", [
    ("install-if-different", "1.0.0", "1.0.0", True),
    ("install-if-different", "1.0.0", "1.0", True),  # compare(), as swupdate 2022.12
    ("install-if-different", "1.0.0", "2.0", False),
    ("install-if-higher", "1.2.9", "1.2.10", True),
    ("install-if-higher", "1.10", "1.9", False),
    ("install-if-higher", "1.0.0-rc1", "1.0.0", True),
    ("install-if-higher", "1.0.0", "1.0.0-rc1", False),
])
def test_gated_image_is_skipped_or_installed_against_sw_versions(tmp_path, device, pki, capsys, flag, proposed,
                                                                 installed, skipped) -> None:
    bundle = build(tmp_path, pki, [rootfs(proposed, flag), boot()])
    rc, out, err = install(device, pki, bundle, capsys, sw_versions=f"rootfs {installed}\nkernel 5.10\n")
    assert rc == 0, err
    assert device.slot_bytes("mmcblk0p2")[:len(BOOT)] == BOOT
    if skipped:
        assert device.untouched() and f"skipping 'rootfs.img': rootfs {proposed}" in err
        assert "rootfs.img:" not in out  # only installed images are listed
    else:
        assert device.slot_bytes()[:len(ROOTFS)] == ROOTFS


def test_component_missing_from_sw_versions_or_no_file_is_installed(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [rootfs("1.0")])
    rc, _, err = install(device, pki, bundle, capsys, sw_versions="kernel 9.9\n")
    assert rc == 0, err
    assert device.slot_bytes()[:len(ROOTFS)] == ROOTFS
    (device.root / "sw-versions").unlink()
    rc, _, err = install(device, pki, bundle, capsys)
    assert rc == 0, err


def test_every_image_skipped_is_nothing_to_install(tmp_path, device, pki, capsys) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki, [rootfs("1.0")]), capsys, sw_versions="rootfs 2.0\n")
    assert rc == REFUSED
    assert "nothing to install: every entry is skipped by its version rule (rootfs 1.0 is not higher than the " \
           "installed 2.0" in error_line(err)
    assert untouched(device)


def test_skipped_member_is_still_read_and_its_checksum_checked(tmp_path, device, pki, capsys) -> None:
    bundle = build(tmp_path, pki, [rootfs("1.0"), boot()], fmt=CRC)
    raw = bytearray(bundle.read_bytes())
    raw[raw.index(ROOTFS[:1024]) + 100] ^= 0xFF  # after the header's sum was computed: a crc mismatch
    bundle.write_bytes(bytes(raw))
    rc, _, err = install(device, pki, bundle, capsys, sw_versions="rootfs 2.0\n")
    assert rc == REFUSED and "'rootfs.img'" in error_line(err) and "checksum" in error_line(err).lower()
    assert device.untouched()


@pytest.mark.parametrize("text,line,fragment", [
    ("rootfs 1.0\nkernel\n", 2, "expected 'name version' (two words), got 1 word(s): 'kernel'"),
    ("rootfs 1.0\nrootfs 2.0\n", 2, "'rootfs' listed twice (first on line 1)"),
])
def test_malformed_sw_versions_is_a_config_error_naming_the_line(tmp_path, device, pki, capsys, text, line,
                                                                 fragment) -> None:
    rc, _, err = install(device, pki, build(tmp_path, pki, [rootfs("1.0"), boot()]), capsys, sw_versions=text)
    assert rc == 2
    assert f"sw-versions:{line}: {fragment}" in error_line(err)
    assert untouched(device)


def test_files_entries_are_gated_like_images(tmp_path, device, pki, capsys) -> None:
    from tests.unit.install.entries import bundle, file

    dest = tmp_path / "rootfs"
    dest.mkdir()
    gated = file("config.txt", b"new config\n", str(dest / "config.txt"),
                 **{"name": "config", "version": "3.0", "install-if-different": True})
    plain = file("motd", b"hello\n", str(dest / "motd"))
    b = bundle(tmp_path / "files.swu", pki, [gated, plain])
    rc, _, err = install(device, pki, b, capsys, sw_versions="config 3\n")  # compare(): "3.0" == "3"
    assert rc == 0, err
    assert not (dest / "config.txt").exists() and (dest / "motd").read_bytes() == b"hello\n"
    rc, _, err = install(device, pki, b, capsys, sw_versions="config 2.9\n")
    assert rc == 0, err
    assert (dest / "config.txt").read_bytes() == b"new config\n"
