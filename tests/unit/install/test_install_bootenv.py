"""`otad install` without slots applies the bundle's bootenv as `swupdate -i -B uboot` does.

After the images, one verified env write: a value sets, an empty value (or none) deletes, the
legacy `uboot` group counts when there is no `bootenv`. A bundle with bootenv and no usable env
(no fw_env.config, no valid copy, values that do not fit) is refused before the first byte. The
comparison with Debian's swupdate itself is tests/integration/test_swupdate_oracle_bootenv.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import pytest

from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.ubootenv import UBootEnv
from otad.errors import REFUSED, WRITE_FAILED, EnvError
from tests.bundles import ImageSpec, sha256, signed_members, write_bundle
from tests.conftest import Device, one_error, run_cli

ENV_SIZE = 0x2000
BEFORE = {"bootcmd": "run mmcboot", "kernel": "zImage-5.15", "old": "1", "keep": "yes"}
IMAGE = b"rootfs " * 3000


class PlainDevice:
    """`device` plus a U-Boot env file and an otad.conf without slots that points at it."""

    def __init__(self, device: Device, pki, *, env: Optional[Dict[str, str]] = BEFORE) -> None:
        self.device = device
        self.env_file = device.root / "uboot.env"
        self.fw_env_config = device.root / "fw_env.config"
        if env is not None:
            self.env_file.write_bytes(build_image(env, ENV_SIZE))
        self.fw_env_config.write_text(f"{self.env_file} 0x0 0x{ENV_SIZE:x}\n")
        self.config = device.root / "plain.conf"
        self.config.write_text(
            f'system = {{ state_dir = "{device.state}"; device_dir = "{device.dev}"; hardware = "rpi0w:1.0"; }};\n'
            f'install = {{ trust_file = "{pki.ca_pem}"; }};\n'
            f'bootloader = {{ fw_env_config = "{self.fw_env_config}"; lock_file = "{device.root / "fw.lock"}"; }};\n')

    def env(self) -> Dict[str, str]:
        return dict(UBootEnv(load_fw_env_config(str(self.fw_env_config)),
                             lock_path=str(self.device.root / "fw.lock")).read().variables)

    def otad(self, capsys, *args: object):
        return run_cli(["--config", self.config, *args], capsys)


@pytest.fixture
def plain(device: Device, pki) -> PlainDevice:
    return PlainDevice(device, pki)


def env_bundle(tmp_path: Path, pki, bootenv: str, *, group: str = "bootenv", name: str = "b.swu") -> Path:
    image = ImageSpec("rootfs.img", IMAGE, "/dev/mmcblk0p3")
    desc = (f'software = {{ version = "2.0"; hardware-compatibility = ["1.0"];\n'
            f'  images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p3"; sha256 = "{sha256(IMAGE)}"; }} );\n'
            f'  {group} = ( {bootenv} );\n}};\n').encode()
    work = tmp_path / (name + ".w")
    work.mkdir()
    return write_bundle(tmp_path / name, signed_members(desc, [image], pki, work))


SET_AND_DELETE = ('{ name = "kernel"; value = "zImage-6.1"; }, { name = "old"; value = ""; }, '
                  '{ name = "gone"; }, { name = "args"; value = "console=ttyS0 quiet"; }')


@pytest.mark.parametrize("group", ["bootenv", "uboot"])
def test_bootenv_is_applied_after_the_images_in_one_env_write(tmp_path, pki, plain, capsys, monkeypatch,
                                                              group) -> None:
    writes = []
    real_update = UBootEnv.update

    def counted(self, changes, **kw):
        writes.append(dict(changes))
        assert plain.device.slot_bytes()[:len(IMAGE)] == IMAGE  # the images are in before the env changes
        return real_update(self, changes, **kw)

    monkeypatch.setattr(UBootEnv, "update", counted)
    rc, out, err = plain.otad(capsys, "install", env_bundle(tmp_path, pki, SET_AND_DELETE, group=group))
    assert rc == 0, err
    assert "bootenv: kernel, old, gone, args applied in one env write" in out
    assert writes == [{"kernel": "zImage-6.1", "old": None, "gone": None, "args": "console=ttyS0 quiet"}]
    assert plain.env() == {"bootcmd": "run mmcboot", "kernel": "zImage-6.1", "keep": "yes",
                           "args": "console=ttyS0 quiet"}
    assert "not applied" not in err


def test_bootenv_wins_over_the_legacy_uboot_group(tmp_path, pki, plain, capsys) -> None:
    image = ImageSpec("rootfs.img", IMAGE, "/dev/mmcblk0p3")
    desc = (f'software = {{ version = "2.0"; hardware-compatibility = ["1.0"];\n'
            f'  images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p3"; sha256 = "{sha256(IMAGE)}"; }} );\n'
            f'  bootenv = ( {{ name = "a"; value = "from-bootenv"; }} );\n'
            f'  uboot = ( {{ name = "b"; value = "from-uboot"; }} );\n}};\n').encode()
    (tmp_path / "w").mkdir()
    bundle = write_bundle(tmp_path / "both.swu", signed_members(desc, [image], pki, tmp_path / "w"))
    rc, _, err = plain.otad(capsys, "install", bundle)
    assert rc == 0, err
    assert plain.env()["a"] == "from-bootenv" and "b" not in plain.env()


def test_a_dry_run_checks_the_env_and_writes_nothing(tmp_path, pki, plain, capsys) -> None:
    before = plain.env_file.read_bytes()
    rc, out, err = plain.otad(capsys, "install", "-n", env_bundle(tmp_path, pki, SET_AND_DELETE))
    assert rc == 0, err
    assert plain.env_file.read_bytes() == before and plain.device.untouched()


def refused_before_writing(plain: PlainDevice, capsys, bundle: Path, fragment: str) -> None:
    before = plain.env_file.read_bytes() if plain.env_file.exists() else None
    rc, _, err = plain.otad(capsys, "install", bundle)
    line = one_error(err)
    assert rc == REFUSED and fragment in line, err
    assert plain.device.untouched() and not (plain.device.state / "targets.json").exists()
    assert (plain.env_file.read_bytes() if plain.env_file.exists() else None) == before


def test_bootenv_without_a_fw_env_config_is_refused_before_the_first_byte(tmp_path, pki, plain, capsys) -> None:
    plain.fw_env_config.unlink()
    refused_before_writing(plain, capsys, env_bundle(tmp_path, pki, SET_AND_DELETE),
                           "bootenv: the bundle sets boot env variables (kernel, old, gone, args) and no U-Boot "
                           f"env is usable here: {plain.fw_env_config}: cannot read fw_env.config: No such file or "
                           "directory")


def test_bootenv_with_no_valid_env_copy_is_refused_before_the_first_byte(tmp_path, pki, plain, capsys) -> None:
    blob = bytearray(plain.env_file.read_bytes())
    blob[10] ^= 0xFF  # the CRC no longer matches
    plain.env_file.write_bytes(bytes(blob))
    refused_before_writing(plain, capsys, env_bundle(tmp_path, pki, SET_AND_DELETE), "no U-Boot env is usable here")


def test_bootenv_that_does_not_fit_the_env_is_refused_before_the_first_byte(tmp_path, pki, plain, capsys) -> None:
    many = ", ".join(f'{{ name = "v{i}"; value = "{"x" * 200}"; }}' for i in range(50))  # ~10 KiB > 8 KiB env
    refused_before_writing(plain, capsys, env_bundle(tmp_path, pki, many),
                           "bootenv: environment too large: 54 variables")


@pytest.mark.parametrize("bootenv, fragment", [
    ('{ name = "inject"; value = "x\\nrootpart=3"; }', "value: expected one line of at most 256 bytes"),
    (f'{{ name = "long"; value = "{"y" * 257}"; }}', "value: expected one line of at most 256 bytes"),
    ('{ name = "#comment"; value = "1"; }', "not starting with '#'"),
    (f'{{ name = "{"n" * 256}"; value = "1"; }}', "name: expected a variable name of at most 255 bytes"),
])
def test_bootenv_swupdate_would_store_differently_is_refused_before_the_first_byte(tmp_path, pki, plain, capsys,
                                                                                   bootenv, fragment) -> None:
    refused_before_writing(plain, capsys, env_bundle(tmp_path, pki, bootenv), fragment)


def test_a_bundle_without_bootenv_needs_no_env(tmp_path, pki, plain, capsys) -> None:
    plain.fw_env_config.unlink()
    image = ImageSpec("rootfs.img", IMAGE, "/dev/mmcblk0p3")
    desc = (f'software = {{ version = "2.0"; hardware-compatibility = ["1.0"];\n'
            f'  images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p3"; sha256 = "{sha256(IMAGE)}"; }} );\n'
            f'}};\n').encode()
    (tmp_path / "w").mkdir()
    rc, out, err = plain.otad(capsys, "install", write_bundle(tmp_path / "n.swu",
                                                               signed_members(desc, [image], pki, tmp_path / "w")))
    assert rc == 0 and not any(line.startswith("bootenv:") for line in out.splitlines()), err


def test_a_failed_env_write_after_the_images_fails_the_install_and_its_targets(tmp_path, pki, plain, capsys,
                                                                                monkeypatch) -> None:
    """Fault injection: the env write itself fails (an I/O error on the card) after planning passed."""
    def failing(self, changes, **kw):
        raise EnvError("cannot replace: Input/output error", where=str(plain.env_file))

    monkeypatch.setattr(UBootEnv, "update", failing)
    rc, _, err = plain.otad(capsys, "install", env_bundle(tmp_path, pki, SET_AND_DELETE))
    assert rc == WRITE_FAILED
    assert one_error(err).endswith(f"bootenv: {plain.env_file}: cannot replace: Input/output error")
    record = json.loads((plain.device.state / "targets.json").read_text())[str(plain.device.slot())]
    assert record["state"] == "failed" and "bootenv not applied" in record["reason"]
