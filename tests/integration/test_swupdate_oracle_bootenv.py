"""Debian's `swupdate -i BUNDLE -B uboot` as the oracle for a bundle's bootenv (no slots).

Both tools start from the same env image behind the same fw_env.config; afterwards
`fw_printenv` must show the same variables. swupdate 2022.12 reads /etc/fw_env.config and
nothing else, so it runs in a private mount namespace where /etc is an overlay holding the
test's fw_env.config; the machine's /etc is never touched.

swupdate also writes its own markers: `recovery_status` while it installs (gone again after a
success) and `ustate=1` after it (its state marker for suricatta, `-m` turns it off). otad keeps
its state in state_dir and writes neither: `ustate` is the one variable the comparison leaves out.
Where otad is deliberately stricter than swupdate (it refuses before writing), the tests pin
what swupdate does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from otad.boot.envimage import build_image
from tests.bundles import ImageSpec, sha256, signed_members, swugenerator_bundle, write_bundle
from tests.integration.test_swupdate_oracle import run_swupdate
from tests.pki import Pki

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed"),
              pytest.mark.skipif(shutil.which("fw_printenv") is None, reason="libubootenv-tool not installed")]

ENV_SIZE = 0x4000
START = {"bootcmd": "run mmcboot", "bootdelay": "1", "kernel": "zImage-5.15", "fdtfile": "old.dtb",
         "drop_me": "x", "keep": "untouched", "rootpart": "2"}
IMAGE = os.urandom(20_000) + bytes(30_000)
TARGET_BYTES = 1 << 20
SWUPDATE_STATE_MARKER = "ustate"

# /etc as an overlay with the test's fw_env.config on top; then the command given after the paths.
NAMESPACE_SCRIPT = ('mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc '
                    '&& cp "$3" /etc/fw_env.config && shift 3 && exec "$@"')


def namespace_prefix(tmp_path: Path, fw_env_config: Path) -> List[str]:
    upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    return [*unshare, "sh", "-c", NAMESPACE_SCRIPT, "sh", str(upper), str(work), str(fw_env_config)]


@pytest.fixture(scope="module")
def private_etc(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (saying why) where a private mount namespace with an overlay /etc cannot be made."""
    tmp = tmp_path_factory.mktemp("ns-probe")
    (tmp / "fw_env.config").write_text("/nonexistent 0 0x4000\n")
    cmd = namespace_prefix(tmp, tmp / "fw_env.config") + ["cat", "/etc/fw_env.config"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no private mount namespace for swupdate's /etc/fw_env.config: {exc}")
    if done.returncode != 0 or "/nonexistent" not in done.stdout:
        pytest.skip(f"no private mount namespace for swupdate's /etc/fw_env.config: {done.stderr.strip()}")


class Board:
    """A target file and a U-Boot env file (single copy) behind one fw_env.config."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.target = root / "slot.img"
        self.env = root / "uboot.env"
        self.fw_env_config = root / "fw_env.config"
        self.fw_env_config.write_text(f"{self.env} 0x0 0x{ENV_SIZE:x}\n")
        self.reset()

    def reset(self, env: Optional[bytes] = None) -> None:
        self.target.write_bytes(b"\x5a" * TARGET_BYTES)
        self.env.write_bytes(build_image(START, ENV_SIZE) if env is None else env)

    def variables(self) -> Dict[str, str]:
        done = subprocess.run(["fw_printenv", "-c", str(self.fw_env_config)], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        return dict(line.split("=", 1) for line in done.stdout.splitlines())

    def swupdate(self, bundle: Path, pki: Pki, tmp_path: Path) -> Tuple[bool, str]:
        return run_swupdate(bundle, pki.ca_pem, ["-B", "uboot", "-e", "stable,copy2"],
                            prefix=namespace_prefix(tmp_path, self.fw_env_config))

    def otad(self, bundle: Path, pki: Pki, tmp_path: Path) -> Tuple[bool, str]:
        conf = tmp_path / "otad.conf"
        conf.write_text(f'system = {{ state_dir = "{tmp_path / "state"}"; hardware = "rpi0w:1.0"; }};\n'
                        f'install = {{ trust_file = "{pki.ca_pem}"; }};\n'
                        f'bootloader = {{ fw_env_config = "{self.fw_env_config}"; '
                        f'lock_file = "{self.root / "fw.lock"}"; }};\n')
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "otad"), "--config", str(conf),
                               "install", str(bundle), "-e", "stable,copy2"], capture_output=True, text=True,
                              timeout=120)
        return proc.returncode == 0, proc.stderr


@pytest.fixture
def board(tmp_path: Path, private_etc: None) -> Board:
    return Board(tmp_path / "board")


def sw_description(target: Path, selection_env: str = "", root_env: str = "") -> bytes:
    """One raw image under stable.copy2; `selection_env` goes beside it, `root_env` under software."""
    return (f'software = {{ version = "2.0.0"; hardware-compatibility = ["1.0"];\n'
            f'  stable = {{ copy2 = {{\n'
            f'    images = ( {{ filename = "rootfs.img"; device = "{target}"; sha256 = "{sha256(IMAGE)}"; }} );\n'
            f'    {selection_env}\n  }}; }};\n'
            f'  {root_env}\n}};\n').encode()


def bundle_of(tmp_path: Path, pki: Pki, desc: bytes) -> Path:
    work = tmp_path / "sign"
    work.mkdir(exist_ok=True)
    return write_bundle(tmp_path / "env.swu", signed_members(desc, [ImageSpec("rootfs.img", IMAGE, "")], pki, work))


def after_both(board: Board, bundle: Path, pki: Pki, tmp_path: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Install with swupdate, keep the env, reset, install with otad; both envs (swupdate's marker checked
    and left out) and both slots equal."""
    ok, log = board.swupdate(bundle, pki, tmp_path)
    assert ok, log
    by_swupdate = board.variables()
    slot_by_swupdate = board.target.read_bytes()
    board.reset()
    ok, err = board.otad(bundle, pki, tmp_path)
    assert ok, err
    by_otad = board.variables()
    assert board.target.read_bytes() == slot_by_swupdate and slot_by_swupdate[:len(IMAGE)] == IMAGE
    assert by_swupdate.pop(SWUPDATE_STATE_MARKER) == "1" and "recovery_status" not in by_swupdate
    return by_swupdate, by_otad


SET_DELETE = ('bootenv: ( { name = "kernel"; value = "zImage-6.1"; }, { name = "drop_me"; value = ""; },'
              ' { name = "fdtfile"; },'
              ' { name = "bootargs"; value = "console=serial0,115200 root=/dev/mmcblk0p3 quiet"; },'
              ' { name = "quoted"; value = "say \\"hi\\" = ok; \'single\'"; },'
              ' { name = "unicode"; value = "grüße ✓"; },'
              ' { name = "absent_and_empty"; value = ""; }, { name = "rootpart"; value = "3"; } );')

CASES = {
    # case: sw-description (selection_env, root_env)
    "set, delete via empty value and via a missing value": (SET_DELETE, ""),
    "legacy uboot group": (SET_DELETE.replace("bootenv:", "uboot:"), ""),
    "a name given twice: the first one counts": (
        'bootenv: ( { name = "dup"; value = "first"; }, { name = "other"; value = "1"; },'
        ' { name = "dup"; value = "second"; }, { name = "dup"; value = ""; } );', ""),
    "bootenv beside the selection, at the root": ("", 'bootenv: ( { name = "from_root"; value = "yes"; } );'),
    "bootenv in the selection and at the root: the selection's": (
        'bootenv: ( { name = "where"; value = "selection"; } );', 'bootenv: ( { name = "where"; value = "root"; } );'),
    "bootenv in the selection, uboot at the root: bootenv": (
        'bootenv: ( { name = "from"; value = "bootenv"; } );', 'uboot: ( { name = "other"; value = "uboot"; } );'),
    "values of 255 and 256 bytes, a name of 255": (
        f'bootenv: ( {{ name = "v255"; value = "{"a" * 255}"; }}, {{ name = "v256"; value = "{"b" * 256}"; }},'
        f' {{ name = "{"n" * 255}"; value = "long name"; }} );', ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bootenv_leaves_the_same_variables_as_swupdate(tmp_path: Path, pki: Pki, board: Board, case: str) -> None:
    selection_env, root_env = CASES[case]
    bundle = bundle_of(tmp_path, pki, sw_description(board.target, selection_env, root_env))
    by_swupdate, by_otad = after_both(board, bundle, pki, tmp_path)
    assert by_otad == by_swupdate
    assert by_otad != START  # the case changed something


def test_swugenerator_bundle_with_bootenv_leaves_the_same_variables_as_swupdate(tmp_path: Path, pki: Pki,
                                                                                 board: Board) -> None:
    template = sw_description(board.target, SET_DELETE).decode().replace(f' sha256 = "{sha256(IMAGE)}";', "")
    bundle = swugenerator_bundle(tmp_path / "gen.swu", template, {"rootfs.img": IMAGE}, pki, tmp_path)
    by_swupdate, by_otad = after_both(board, bundle, pki, tmp_path)
    assert by_otad == by_swupdate and by_otad["kernel"] == "zImage-6.1" and "drop_me" not in by_otad


STRICTER_THAN_SWUPDATE = {
    # case: (selection_env, what swupdate leaves in the env)
    # a line break ends swupdate's `name=value` line: the rest is read as another variable
    "a value with a line break": ('bootenv: ( { name = "inject"; value = "x\\nbootcmd=run evil"; } );',
                                  {"inject": "x", "bootcmd": "run evil"}),
    # swupdate's parser keeps 256 bytes of a value
    "a value of 257 bytes": (f'bootenv: ( {{ name = "long"; value = "{"c" * 257}"; }} );', {"long": "c" * 256}),
}


@pytest.mark.parametrize("case", sorted(STRICTER_THAN_SWUPDATE))
def test_bootenv_swupdate_stores_differently_is_refused_by_otad_before_writing(tmp_path: Path, pki: Pki,
                                                                               board: Board, case: str) -> None:
    selection_env, by_swupdate = STRICTER_THAN_SWUPDATE[case]
    bundle = bundle_of(tmp_path, pki, sw_description(board.target, selection_env))
    ok, log = board.swupdate(bundle, pki, tmp_path)
    assert ok, log
    assert by_swupdate.items() <= board.variables().items()
    board.reset()
    before = board.env.read_bytes()
    ok, err = board.otad(bundle, pki, tmp_path)
    assert not ok and "otad: error: " in err and "bootenv" in err.strip().splitlines()[-1]
    assert board.env.read_bytes() == before and board.target.read_bytes() == b"\x5a" * TARGET_BYTES


def test_no_usable_env_swupdate_writes_the_image_then_fails_otad_refuses_first(tmp_path: Path, pki: Pki,
                                                                               board: Board) -> None:
    corrupt = bytearray(build_image(START, ENV_SIZE))
    corrupt[10] ^= 0xFF  # no copy with a good CRC, and no /etc/u-boot-initial-env to fall back to
    board.reset(bytes(corrupt))
    bundle = bundle_of(tmp_path, pki, sw_description(board.target, SET_DELETE))
    ok, log = board.swupdate(bundle, pki, tmp_path)
    assert not ok and "Cannot read default environment" in log, log
    assert board.target.read_bytes()[:len(IMAGE)] == IMAGE  # written before the env failed
    board.reset(bytes(corrupt))
    ok, err = board.otad(bundle, pki, tmp_path)
    assert not ok and "no U-Boot env is usable here" in err
    assert board.target.read_bytes() == b"\x5a" * TARGET_BYTES and board.env.read_bytes() == bytes(corrupt)
