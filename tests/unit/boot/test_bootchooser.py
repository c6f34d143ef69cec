"""The env-level A/B switch against real env files, cross-checked with the U-Boot emulator."""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest

from otad.boot.bootchooser import Bootchooser, env_ulong
from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout
from otad.boot.slots import Slot, SlotTable
from otad.boot.ubootenv import EnvSnapshot, UBootEnv
from otad.config import PI_SLOTS, Config
from otad.errors import ConfigError, EnvCorrupt, EnvError, SlotError
from otad.sim.uboot import UBootEmulator

SIZE = 0x4000
A = Slot("a", "/dev/mmcblk0p2", "2", ("stable", "copy1"))
B = Slot("b", "/dev/mmcblk0p3", "3", ("stable", "copy2"))
TABLE = SlotTable((A, B))
STEADY = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}


class CountingEnv(UBootEnv):
    """A real UBootEnv that remembers each change set it was asked to write."""

    def __init__(self, layout: EnvLayout, *, lock_path: str) -> None:
        super().__init__(layout, lock_path=lock_path)
        self.calls: List[Dict[str, Optional[str]]] = []

    def update(self, changes: Mapping[str, Optional[str]], *,
               allow_default: Optional[Mapping[str, str]] = None) -> EnvSnapshot:
        self.calls.append(dict(changes))
        return super().update(changes, allow_default=allow_default)


def make(tmp_path: Path, variables: Mapping[str, str] = STEADY, *, slot_variable: str = "rootpart",
         bootlimit: int = 3) -> Tuple[Bootchooser, CountingEnv, Path]:
    path = tmp_path / "uboot.env"
    path.write_bytes(build_image(variables, SIZE))
    env = CountingEnv(EnvLayout((EnvCopyLocation(str(path), 0, SIZE),)), lock_path=str(tmp_path / "fw.lock"))
    return Bootchooser(env, TABLE, slot_variable=slot_variable, bootlimit=bootlimit), env, path


def variables(env: UBootEnv) -> Dict[str, str]:
    return dict(env.read().variables)


def stamp(path: Path) -> Tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("text, value", [
    (None, 0), ("0", 0), ("1", 1), ("3", 3), ("0x10", 16), ("12abc", 12), ("yes", 0), ("", 0),
    ("4294967297", 1),  # the Pi's 32-bit ulong wraps
])
def test_env_ulong_reads_numbers_like_uboot(text: Optional[str], value: int) -> None:
    assert env_ulong(text) == value


def test_env_slot_and_trial_armed_follow_the_env(tmp_path: Path) -> None:
    chooser, _, _ = make(tmp_path, {"rootpart": "3", "upgrade_available": "1", "bootcount": "2"})
    assert chooser.env_slot() is B
    assert chooser.trial_armed()
    view = chooser.read()
    assert (view.bootcount, view.bootlimit, view.prev_value) == (2, 0, None)
    assert dict(view.values) == {"rootpart": "3", "upgrade_available": "1", "bootcount": "2",
                                 "bootlimit": None, "otad_prev": None}


@pytest.mark.parametrize("env", [{"upgrade_available": "0"}, {"rootpart": "7"}, {"rootpart": ""}])
def test_env_slot_is_none_when_unset_or_not_a_slot(tmp_path: Path, env: Dict[str, str]) -> None:
    chooser, _, _ = make(tmp_path, env)
    assert chooser.env_slot() is None
    assert not chooser.trial_armed()


def test_slot_variable_is_configurable(tmp_path: Path) -> None:
    chooser, _, _ = make(tmp_path, {"mmcpart": "3", "rootpart": "2"}, slot_variable="mmcpart")
    assert chooser.env_slot() is B


def test_corrupt_env_is_an_error_naming_the_file(tmp_path: Path) -> None:
    chooser, _, path = make(tmp_path)
    path.write_bytes(b"\xff" * SIZE)
    with pytest.raises(EnvCorrupt, match="uboot.env"):
        chooser.env_slot()


@pytest.mark.parametrize("kwargs, message", [
    ({"bootlimit": 0}, "bootlimit: expected 1..99, got 0"),
    ({"bootlimit": 100}, "bootlimit: expected 1..99, got 100"),
    ({"slot_variable": "bootcount"}, "slot variable: expected e.g. 'rootpart', got 'bootcount'"),
])
def test_constructor_refuses_bad_settings(tmp_path: Path, kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, **kwargs)


# ----------------------------------------------------------------------------- arming


def test_arm_trial_is_one_write_of_the_trial_variables(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path)
    chooser.arm_trial(B, A)
    assert len(env.calls) == 1
    assert variables(env) == {"bootcount": "0", "bootlimit": "3", "otad_prev": "2", "rootpart": "3",
                              "upgrade_available": "1"}


@pytest.mark.parametrize("env, configured, expected", [
    ({"rootpart": "2", "bootlimit": "5"}, 3, "5"),
    ({"rootpart": "2"}, 4, "4"),
    ({"rootpart": "2", "bootlimit": "0"}, 3, "3"),  # 0 would never fall back
])
def test_arm_trial_adds_bootlimit_only_when_the_env_has_none(
        tmp_path: Path, env: Dict[str, str], configured: int, expected: str) -> None:
    chooser, counting, _ = make(tmp_path, env, bootlimit=configured)
    chooser.arm_trial(B, A)
    assert variables(counting)["bootlimit"] == expected


def test_arm_trial_resets_a_stale_bootcount(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path, dict(STEADY, bootcount="3"))
    chooser.arm_trial(B, A)
    assert variables(env)["bootcount"] == "0"


def test_arm_trial_applies_bundle_bootenv_in_the_same_write(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path, dict(STEADY, old="x", kernel="zImage"))
    chooser.arm_trial(B, A, {"kernel": "zImage-6.1", "old": "", "fdtfile": "bcm2708-rpi-zero-w.dtb",
                             "bootlimit": "5"})
    assert len(env.calls) == 1
    got = variables(env)
    assert got["kernel"] == "zImage-6.1" and got["fdtfile"] == "bcm2708-rpi-zero-w.dtb"
    assert "old" not in got and got["bootlimit"] == "5" and got["rootpart"] == "3"


AGREEING = [  # a SWUpdate A/B bundle's own switch to slot b: the same as otad's arming write
    {"rootpart": "3", "upgrade_available": "1"},
    {"rootpart": "3", "upgrade_available": "1", "bootcount": "0"},
    {"upgrade_available": "0x1", "bootcount": ""},  # U-Boot reads hex; unset bootcount counts as 0
    {"upgrade_available": "2", "bootcount": "00"},
]


@pytest.mark.parametrize("bootenv", AGREEING)
def test_bundle_bootenv_that_switches_to_the_target_is_folded_into_the_arming_write(tmp_path: Path,
                                                                                     bootenv) -> None:
    chooser, env, _ = make(tmp_path)
    chooser.arm_trial(B, A, {**bootenv, "kernel": "zImage-6.1"})
    assert env.calls == [{"kernel": "zImage-6.1", "rootpart": "3", "upgrade_available": "1", "bootcount": "0",
                          "otad_prev": "2"}]


DISAGREEING = [  # (variable, value, what the refusal says)
    ("rootpart", "2", "the bundle boots slot a, but otad arms a trial of slot b (rootpart=3)"),
    ("rootpart", "7", "the bundle names no configured slot, but otad arms a trial of slot b"),
    ("rootpart", "", "the bundle deletes it, but otad arms a trial of slot b"),
    ("upgrade_available", "0", "0 turns the bootcount off"),
    ("upgrade_available", "", "expected a number U-Boot reads as non-zero"),
    ("upgrade_available", "yes", "expected a number U-Boot reads as non-zero"),
    ("bootcount", "1", "expected 0 (or unset)"),
    ("bootcount", "0abc", "expected 0 (or unset)"),
    ("otad_prev", "2", "it is otad's own record of the slot a trial came from"),
]


@pytest.mark.parametrize("name, value, fragment", DISAGREEING)
def test_bundle_bootenv_that_disagrees_with_the_trial_is_refused(tmp_path: Path, name: str, value: str,
                                                                  fragment: str) -> None:
    chooser, env, path = make(tmp_path)
    before = stamp(path)
    with pytest.raises(EnvError, match=f"^bootenv: {name} = {value!r}: ") as info:
        chooser.bundle_changes({name: value}, B)
    assert fragment in info.value.what
    with pytest.raises(EnvError):
        chooser.arm_trial(B, A, {name: value})
    assert env.calls == [] and stamp(path) == before


@pytest.mark.parametrize("value", ["", "0", "100", "three"])
def test_bundle_bootenv_may_not_turn_off_the_fallback(tmp_path: Path, value: str) -> None:
    chooser, env, _ = make(tmp_path)
    with pytest.raises(EnvError, match=f"bootenv: bootlimit = {value!r}: expected 1..99"):
        chooser.arm_trial(B, A, {"bootlimit": value})
    assert env.calls == []


def test_bundle_bootenv_with_a_backslash_is_refused_before_writing(tmp_path: Path) -> None:
    chooser, _, path = make(tmp_path)
    before = stamp(path)
    with pytest.raises(EnvError, match="backslash"):
        chooser.arm_trial(B, A, {"bootargs": "a\\b"})
    assert stamp(path) == before


def test_slot_variable_named_in_config_is_protected_too(tmp_path: Path) -> None:
    chooser, _, _ = make(tmp_path, {"mmcpart": "2"}, slot_variable="mmcpart")
    with pytest.raises(EnvError, match="mmcpart = '2': the bundle boots slot a"):
        chooser.arm_trial(B, A, {"mmcpart": "2"})
    assert chooser.bundle_changes({"mmcpart": "3", "rootpart": "2"}, B) == {"rootpart": "2"}


def test_arm_trial_refuses_same_or_foreign_slot(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path)
    with pytest.raises(SlotError, match="also the previous slot"):
        chooser.arm_trial(B, B)
    with pytest.raises(SlotError, match="not one of the configured slots"):
        chooser.arm_trial(Slot("c", "/dev/sda2", "4"), A)
    assert env.calls == []


# ----------------------------------------------------------------------------- commit / abort


def test_mark_good_clears_counting_and_drops_otad_prev_in_one_write(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path, {"rootpart": "3", "upgrade_available": "1", "bootcount": "2",
                                      "bootlimit": "3", "otad_prev": "2"})
    chooser.mark_good()
    assert variables(env) == {"rootpart": "3", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3"}


def test_mark_good_does_not_write_when_already_good(tmp_path: Path) -> None:
    chooser, _, path = make(tmp_path)
    before = stamp(path)
    chooser.mark_good()
    assert stamp(path) == before


def test_mark_bad_switches_to_the_other_slot_uncounted(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path, {"rootpart": "3", "upgrade_available": "1", "bootcount": "1",
                                      "bootlimit": "3", "otad_prev": "2"})
    assert chooser.mark_bad(B) is A
    assert len(env.calls) == 1
    assert variables(env) == {"rootpart": "2", "upgrade_available": "0", "bootcount": "0", "bootlimit": "3"}


# ----------------------------------------------------------------------------- against U-Boot


def test_armed_trial_boots_target_then_falls_back_keeping_otad_prev(tmp_path: Path) -> None:
    chooser, env, _ = make(tmp_path)
    uboot = UBootEmulator(env, default_env=STEADY)
    chooser.arm_trial(B, A)
    assert [uboot.boot().slot_value for _ in range(4)] == ["3", "3", "3", "2"]
    view = chooser.read()
    assert view.slot is A and not view.upgrade_available and view.bootcount == 0
    assert view.prev_value == "2"  # altbootcmd leaves otad's breadcrumb alone


def test_mark_good_after_first_trial_boot_keeps_the_new_slot(tmp_path: Path) -> None:
    chooser, env, path = make(tmp_path)
    uboot = UBootEmulator(env, default_env=STEADY)
    chooser.arm_trial(B, A)
    assert uboot.boot().slot_value == "3"
    chooser.mark_good()
    after = stamp(path)
    assert {uboot.boot().slot_value for _ in range(10)} == {"3"}
    assert stamp(path) == after  # no counting, no writes


def test_from_config_reads_fw_env_config(tmp_path: Path) -> None:
    (tmp_path / "uboot.env").write_bytes(build_image(STEADY, SIZE))
    fw = tmp_path / "fw_env.config"
    fw.write_text(f"{tmp_path / 'uboot.env'} 0x0 0x4000\n")
    cfg = dataclasses.replace(Config(), slots=PI_SLOTS).replace(
        "bootloader", fw_env_config=str(fw), lock_file=str(tmp_path / "lock"), bootlimit=5)
    chooser = Bootchooser.from_config(cfg)
    assert chooser.env_slot() == A and chooser.bootlimit == 5


def test_from_config_names_a_missing_fw_env_config(tmp_path: Path) -> None:
    cfg = dataclasses.replace(Config(), slots=PI_SLOTS).replace("bootloader", fw_env_config=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="nope: cannot read"):
        Bootchooser.from_config(cfg)
