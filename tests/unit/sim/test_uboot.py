"""The U-Boot emulator against real env files: steady state, trial, rollback, confirm, corruption."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from otad.boot.envimage import build_image, parse_image
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout
from otad.boot.ubootenv import UBootEnv
from otad.errors import ConfigError
from otad.sim.uboot import BootDecision, UBootEmulator, simple_strtoul

SIZE = 0x4000
REPO = Path(__file__).resolve().parents[3]
STEADY = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
ARMED = {"bootcount": "0", "bootlimit": "3", "rootpart": "3", "upgrade_available": "1"}
# What a U-Boot built for otad carries compiled in: boots the known-good slot, no trial.
DEFAULT_ENV = {"bootlimit": "3", "rootpart": "2", "bootdelay": "0"}


class Board:
    """A single-copy or redundant env in tmp files and an emulator booting from it."""

    def __init__(self, tmp: Path, variables: Dict[str, str], *, redundant: bool = False,
                 default_env: Optional[Dict[str, str]] = None) -> None:
        self.paths = [tmp / "uboot.env"] + ([tmp / "uboot-redund.env"] if redundant else [])
        self.redundant = redundant
        self.paths[0].write_bytes(build_image(variables, SIZE, redundant=redundant, flags=1))
        layout = EnvLayout(tuple(EnvCopyLocation(str(p), 0, SIZE) for p in self.paths))
        self.env = UBootEnv(layout, lock_path=str(tmp / "fw_printenv.lock"))
        self.uboot = UBootEmulator(self.env, default_env=DEFAULT_ENV if default_env is None else default_env)

    def vars(self) -> Dict[str, str]:
        return dict(self.env.read().variables)

    def files(self) -> List[Tuple[bytes, int, int]]:
        """Bytes, inode and mtime of each copy: any write changes at least one of them."""
        out = []
        for p in self.paths:
            st = p.stat() if p.exists() else None
            out.append((p.read_bytes() if st else b"", st.st_ino if st else 0, st.st_mtime_ns if st else 0))
        return out

    def boot_n(self, n: int) -> List[BootDecision]:
        return [self.uboot.boot() for _ in range(n)]


def test_steady_state_never_writes_and_never_flips(tmp_path: Path) -> None:
    # The seed design's RAM bootcount counted every boot since power-on and flipped on the 4th.
    board = Board(tmp_path, STEADY)
    before = board.files()
    decisions = board.boot_n(10)
    assert board.files() == before
    assert {d.slot_value for d in decisions} == {"2"}
    assert all(d.bootcount == 1 and not d.env_written and not d.used_altbootcmd for d in decisions)
    assert board.vars() == STEADY


def test_armed_trial_counts_three_boots_then_rolls_back(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED)
    for n in (1, 2, 3):
        decision = board.uboot.boot()
        assert (decision.slot_value, decision.bootcount, decision.used_altbootcmd) == ("3", n, False)
        assert decision.env_writes == 1
        assert board.vars() == dict(ARMED, bootcount=str(n))
    fourth = board.uboot.boot()
    assert fourth.used_altbootcmd and fourth.slot_value == "2"
    assert fourth.bootcount == 4 and fourth.env_writes == 2  # bootcount_inc's save, then altbootcmd's
    assert "Warning: Bootlimit (3) exceeded. Using altbootcmd." in fourth.console
    assert board.vars() == {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
    after = board.files()
    later = board.boot_n(10)
    assert {d.slot_value for d in later} == {"2"} and not any(d.env_written for d in later)
    assert board.files() == after


def test_confirm_after_first_boot_stays_on_new_slot(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED)
    assert board.uboot.boot().slot_value == "3"
    board.env.update({"upgrade_available": "0", "bootcount": "0"})  # otad confirm
    confirmed = board.files()
    decisions = board.boot_n(20)
    assert {d.slot_value for d in decisions} == {"3"}
    assert not any(d.env_written or d.used_altbootcmd for d in decisions)
    assert board.files() == confirmed


def test_trial_armed_without_resetting_bootcount_falls_back_on_first_boot(tmp_path: Path) -> None:
    # §5: arming must also set bootcount=0, or a stale count exceeds the limit at once.
    board = Board(tmp_path, dict(ARMED, bootcount="3"))
    decision = board.uboot.boot()
    assert decision.used_altbootcmd and decision.slot_value == "2"


def test_no_bootlimit_means_no_rollback_but_still_counting(tmp_path: Path) -> None:
    variables = {k: v for k, v in ARMED.items() if k != "bootlimit"}
    board = Board(tmp_path, variables)
    decisions = board.boot_n(6)
    assert [d.bootcount for d in decisions] == [1, 2, 3, 4, 5, 6]
    assert {d.slot_value for d in decisions} == {"3"}
    assert board.vars()["bootcount"] == "6"


@pytest.mark.parametrize("garbage", [b"\x00" * SIZE, b"\xff" * SIZE, b"short"])
def test_corrupt_env_boots_default_env_and_writes_nothing(tmp_path: Path, garbage: bytes) -> None:
    board = Board(tmp_path, ARMED)
    board.paths[0].write_bytes(garbage)
    decision = board.uboot.boot()
    assert decision.default_env and not decision.env_written
    assert decision.slot_value == "2" and not decision.used_altbootcmd
    assert "*** Warning - bad CRC, using default environment" in decision.console
    assert board.paths[0].read_bytes() == garbage


def test_missing_env_file_boots_default_env(tmp_path: Path) -> None:
    board = Board(tmp_path, STEADY)
    board.paths[0].unlink()
    decision = board.uboot.boot()
    assert decision.default_env and decision.slot_value == "2" and not decision.env_written
    assert 'Unable to read "uboot.env" from mmc0:1...' in decision.console
    assert not board.paths[0].exists()


def test_default_env_that_arms_a_trial_is_saved_like_u_boot_does(tmp_path: Path) -> None:
    # bootcount_store() calls env_save() whatever env is in RAM: a default env with
    # upgrade_available=1 would be written to the card on the first boot.
    board = Board(tmp_path, STEADY, default_env=dict(DEFAULT_ENV, upgrade_available="1", bootcount="0"))
    board.paths[0].write_bytes(b"\x00" * SIZE)
    decision = board.uboot.boot()
    assert decision.default_env and decision.env_written and decision.bootcount == 1
    assert board.vars() == dict(DEFAULT_ENV, upgrade_available="1", bootcount="1")


def test_saveenv_stores_runtime_variables_too(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED)
    board.uboot.runtime_env = {"fdtcontroladdr": "1ef5b3b0", "board_rev": "0xc"}
    board.uboot.boot()
    assert board.vars() == dict(ARMED, bootcount="1", fdtcontroladdr="1ef5b3b0", board_rev="0xc")


def test_redundant_env_alternates_copies_and_rolls_back(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED, redundant=True)
    actives = []
    for n in (1, 2, 3):
        decision = board.uboot.boot()
        assert (decision.slot_value, decision.bootcount) == ("3", n)
        snap = board.env.read()
        actives.append((snap.active_copy, snap.flags))
    assert actives == [(1, 2), (0, 3), (1, 4)]
    fourth = board.uboot.boot()
    assert fourth.used_altbootcmd and fourth.slot_value == "2"
    snap = board.env.read()
    assert (snap.active_copy, snap.flags) == (1, 6)
    assert dict(snap.variables) == {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
    # The copy written before the rollback still holds the trial: the older copy is never touched.
    older = parse_image(board.paths[0].read_bytes(), SIZE, redundant=True)
    assert older == dict(ARMED, bootcount="4")
    after = board.files()
    assert {d.slot_value for d in board.boot_n(5)} == {"2"}
    assert board.files() == after


def test_redundant_env_with_one_copy_torn_uses_the_other(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED, redundant=True)
    board.uboot.boot()  # writes copy 1 with bootcount=1
    board.paths[1].write_bytes(board.paths[1].read_bytes()[:100])  # power cut mid-write
    decision = board.uboot.boot()
    assert not decision.default_env
    assert decision.bootcount == 1  # counted again from copy 0's bootcount=0


def test_redundant_env_with_both_copies_bad_uses_default(tmp_path: Path) -> None:
    board = Board(tmp_path, ARMED, redundant=True)
    board.paths[0].write_bytes(b"\xff" * SIZE)
    decision = board.uboot.boot()
    assert decision.default_env and decision.slot_value == "2"
    assert decision.console[1:3] == (
        "*** Warning - some problems detected reading environment; recovered successfully",
        "*** Warning - bad CRC, using default environment",
    )


@pytest.mark.parametrize(
    "upgrade_available, armed",
    [("1", True), ("2", True), ("0x1", True), ("01", True), ("0", False), ("0x0", False),
     ("yes", False), ("true", False), (" 1", False), ("-1", False), ("4294967296", False)],
)
def test_upgrade_available_is_parsed_like_simple_strtoul(tmp_path: Path, upgrade_available: str,
                                                         armed: bool) -> None:
    board = Board(tmp_path, dict(ARMED, upgrade_available=upgrade_available))
    decision = board.uboot.boot()
    assert decision.env_written is armed


def test_bootlimit_and_bootcount_accept_hex_prefix_and_stop_at_junk(tmp_path: Path) -> None:
    board = Board(tmp_path, dict(ARMED, bootlimit="0x2", bootcount="1abc"))
    decision = board.uboot.boot()
    assert decision.bootcount == 2 and not decision.used_altbootcmd
    assert board.vars()["bootcount"] == "2"  # written back in decimal
    assert board.uboot.boot().used_altbootcmd


def test_altbootcmd_sends_an_unknown_slot_value_to_the_first_alternative(tmp_path: Path) -> None:
    board = Board(tmp_path, dict(ARMED, rootpart="7", bootcount="3"))
    assert board.uboot.boot().slot_value == "2"


def test_simple_strtoul_matches_u_boot() -> None:
    assert simple_strtoul("10", 10) == 10
    assert simple_strtoul("0x10", 10) == 16  # the prefix overrides the base
    assert simple_strtoul("010", 10) == 10 and simple_strtoul("010", 0) == 8
    assert simple_strtoul("ff", 10) == 0 and simple_strtoul("ff", 16) == 255
    assert simple_strtoul("", 10) == 0 and simple_strtoul("0x", 10) == 0
    assert simple_strtoul("4294967297", 10) == 1  # 32-bit ulong wraps


@pytest.mark.parametrize("kwargs, message", [
    ({"slot_variable": "root part"}, "slot variable: expected a plain env name"),
    ({"alternatives": ("2", "2")}, "alternatives: expected two different"),
])
def test_emulator_rejects_bad_setup(tmp_path: Path, kwargs: Dict[str, object], message: str) -> None:
    board = Board(tmp_path, STEADY)
    with pytest.raises(ConfigError, match=message):
        UBootEmulator(board.env, default_env=DEFAULT_ENV, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("mkimage") is None, reason="mkimage (u-boot-tools) not installed")
def test_boot_script_compiles_with_mkimage(tmp_path: Path) -> None:
    script = tmp_path / "boot.scr"
    result = subprocess.run(
        ["mkimage", "-A", "arm", "-T", "script", "-C", "none", "-n", "otad A/B boot",
         "-d", str(REPO / "etc" / "boot.cmd"), str(script)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ARM Linux Script (uncompressed)" in result.stdout
    body = script.read_bytes()
    # Legacy image header: magic, then os/arch/type/comp at 28..31 (Linux, ARM, script, none).
    assert body[:4] == b"\x27\x05\x19\x56" and body[28:32] == bytes([5, 2, 6, 0])
    text = (REPO / "etc" / "boot.cmd").read_bytes()
    assert body[72:] == text  # after the 64-byte header, one length word and the 0 terminator
