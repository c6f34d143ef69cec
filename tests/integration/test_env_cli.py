"""`otad env print|set` against Debian's fw_printenv/fw_setenv (libubootenv) on the same files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from otad.boot.envimage import build_image
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("fw_printenv") is None, reason="libubootenv-tool not installed")

SIZE = 0x4000
BASE = {"bootcmd": "run mmcboot", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0", "bootcount": "0"}


@pytest.fixture(params=["single", "redundant"])
def layout(request, tmp_path: Path) -> Path:
    """fw_env.config over env files holding BASE."""
    redundant = request.param == "redundant"
    lines = []
    for i in range(2 if redundant else 1):
        env = tmp_path / f"uboot{i}.env"
        env.write_bytes(build_image(BASE, SIZE, redundant=redundant, flags=1 + i))
        lines.append(f"{env} 0x0 0x{SIZE:x}\n")
    config = tmp_path / "fw_env.config"
    config.write_text("".join(lines))
    return config


def fw(tool: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-c", str(config), *args], capture_output=True, text=True, timeout=30)


def otad_env(capsys, config: Path, *args: str):
    conf = config.parent / "otad.conf"
    conf.write_text(f'bootloader = {{ lock_file = "{config.parent / "fw.lock"}"; }};\n')
    return run_cli(["--config", conf, "env", *args[:1], "-c", config, *args[1:]], capsys)


def test_print_matches_fw_printenv(layout, capsys) -> None:
    rc, out, _ = otad_env(capsys, layout, "print")
    assert rc == 0
    assert sorted(out.splitlines()) == sorted(fw("fw_printenv", layout).stdout.splitlines())


def test_print_one_value_like_fw_printenv_n(layout, capsys) -> None:
    rc, out, _ = otad_env(capsys, layout, "print", "-n", "bootcmd")
    assert rc == 0 and out == fw("fw_printenv", layout, "-n", "bootcmd").stdout == "run mmcboot\n"


def test_set_several_variables_in_one_write_is_read_by_fw_printenv(layout, capsys) -> None:
    rc, _, err = otad_env(capsys, layout, "set", "rootpart=3", "upgrade_available=1", "bootcount=0", "bootcmd=")
    assert rc == 0, err
    out = fw("fw_printenv", layout).stdout.splitlines()
    assert "rootpart=3" in out and "upgrade_available=1" in out
    assert not any(line.startswith("bootcmd=") for line in out)


def test_variables_set_by_fw_setenv_are_read_by_otad(layout, capsys) -> None:
    assert fw("fw_setenv", layout, "rootpart", "3").returncode == 0
    assert fw("fw_setenv", layout, "note", "a b=c").returncode == 0
    rc, out, _ = otad_env(capsys, layout, "print", "rootpart", "note")
    assert rc == 0 and out.splitlines() == ["rootpart=3", "note=a b=c"]


def test_set_from_a_script_like_fw_setenv_s(layout, tmp_path, capsys) -> None:
    script = tmp_path / "vars"
    script.write_text("# switch\nrootpart=3\nupgrade_available=1\nbootcmd=\n")
    rc, _, err = otad_env(capsys, layout, "set", "-s", str(script))
    assert rc == 0, err
    out = fw("fw_printenv", layout).stdout.splitlines()
    assert "rootpart=3" in out and "upgrade_available=1" in out and not any(l.startswith("bootcmd=") for l in out)


def test_corrupt_env_is_a_clear_error_and_nothing_is_written(tmp_path, capsys) -> None:
    env = tmp_path / "uboot.env"
    env.write_bytes(b"\xff" * SIZE)
    config = tmp_path / "fw_env.config"
    config.write_text(f"{env} 0x0 0x{SIZE:x}\n")
    rc, _, err = otad_env(capsys, config, "set", "rootpart=3")
    assert rc == 1 and err.startswith("otad: error: ") and "CRC" in err
    assert env.read_bytes() == b"\xff" * SIZE


def test_corrupt_env_can_be_replaced_from_an_explicit_default(tmp_path, capsys) -> None:
    env = tmp_path / "uboot.env"
    env.write_bytes(b"\xff" * SIZE)
    config = tmp_path / "fw_env.config"
    config.write_text(f"{env} 0x0 0x{SIZE:x}\n")
    default = tmp_path / "u-boot-initial-env"
    default.write_text("bootcmd=run mmcboot\nrootpart=2\n")
    rc, _, err = otad_env(capsys, config, "set", "-f", str(default), "bootlimit=3")
    assert rc == 0, err
    assert sorted(fw("fw_printenv", config).stdout.splitlines()) == ["bootcmd=run mmcboot", "bootlimit=3",
                                                                     "rootpart=2"]


def test_malformed_fw_env_config_names_the_line(tmp_path, capsys) -> None:
    config = tmp_path / "fw_env.config"
    config.write_text("# comment\n/boot/uboot.env 0x0 0x40zz\n")
    rc, _, err = otad_env(capsys, config, "print")
    assert rc == 2 and "fw_env.config:2" in err
