"""Fixtures shared by unit and integration tests: a PKI, a file-backed device, the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import settings

from otad.cli import main
from tests.pki import Pki, make_pki

# CI (.ci/run) runs the property tests on a fixed sequence of examples so that a red run can be
# repeated exactly; a developer's run and scripts/reliability keep drawing new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SLOT_BYTES = 4 << 20
SLOT_FILL = b"\xaa"

# A Pi-like A/B device as files: U-Boot's env before any update, and otad.conf for it.
AB_DEFAULT_ENV = {"bootcmd": "run mmcboot", "bootlimit": "3", "bootcount": "0", "upgrade_available": "0",
                  "rootpart": "2", "altbootcmd": "run swap_and_boot"}
AB_ENV_SIZE = 0x4000


def ab_config_text(root: Path, pki: Pki, extra: str = "") -> str:
    """otad.conf for the files under `root` (dev/, state/, fw_env.config, cmdline): slots a
    (mmcblk0p2, boot_value 2, stable,copy1) and b (mmcblk0p3, 3, stable,copy2); `extra` appended."""
    return f"""
system = {{ state_dir = "{root / 'state'}"; device_dir = "{root / 'dev'}"; hardware = "rpi0w:1.0";
           reboot_command = "true"; }};
install = {{ trust_file = "{pki.ca_pem}"; }};
bootloader = {{ fw_env_config = "{root / 'fw_env.config'}"; lock_file = "{root / 'fw.lock'}";
               cmdline = "{root / 'cmdline'}"; mountinfo = ""; }};
slots = ( {{ name = "a"; device = "/dev/mmcblk0p2"; boot_value = "2"; selection = "stable,copy1"; }},
          {{ name = "b"; device = "/dev/mmcblk0p3"; boot_value = "3"; selection = "stable,copy2"; }} );
{extra}"""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Device:
    """A directory standing for /dev with two 4 MiB 'partitions', plus config and state dirs."""

    root: Path

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def slot(self, name: str = "mmcblk0p3") -> Path:
        return self.dev / name

    def slot_bytes(self, name: str = "mmcblk0p3") -> bytes:
        return self.slot(name).read_bytes()

    def untouched(self, name: str = "mmcblk0p3") -> bool:
        return self.slot_bytes(name) == SLOT_FILL * SLOT_BYTES

    def config(self, pki: Pki, extra_install: str = "") -> Path:
        path = self.root / "otad.conf"
        path.write_text(
            f'system = {{ state_dir = "{self.state}"; device_dir = "{self.dev}"; hardware = "rpi0w:1.0"; }};\n'
            f'install = {{ trust_file = "{pki.ca_pem}"; {extra_install} }};\n')
        return path


@pytest.fixture
def device(tmp_path: Path) -> Device:
    d = Device(tmp_path / "device")
    d.dev.mkdir(parents=True)
    for name in ("mmcblk0p2", "mmcblk0p3"):
        d.slot(name).write_bytes(SLOT_FILL * SLOT_BYTES)
    return d


def run_cli(args: List[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    """Run `otad ARGS` in-process; returns (exit status, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def install(device: Device, pki: Pki, path: Path, capsys: pytest.CaptureFixture[str], *args: str,
            extra_install: str = "") -> Tuple[int, str, str]:
    """`otad --config <device's config> install PATH ARGS...`."""
    return run_cli(["--config", device.config(pki, extra_install), "install", path, *args], capsys)


def one_error(err: str) -> str:
    """The one `otad: error:` line of a failure (log lines may precede it; no traceback)."""
    assert "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("otad: error: ")]
    return line


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the machine's /etc/otad/otad.conf."""
    monkeypatch.setattr("otad.cli.DEFAULT_CONFIG", os.devnull + ".otad-test-missing")
