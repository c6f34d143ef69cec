"""`otad env set` argument forms and `.flags` refusals, without the fw tools (the comparison with
Debian's fw_setenv itself is tests/integration/test_env_set_fw_setenv.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from otad.boot.envcmd import parse_arguments, print_variables, requested_changes, set_variables
from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.ubootenv import UBootEnv
from otad.errors import EnvError, UsageError

SIZE = 0x4000


@pytest.mark.parametrize("args, changes", [
    (["rootpart", "3"], {"rootpart": "3"}),  # issue 9: this deleted rootpart
    (["a", "1", "b", "2"], {"a": "1", "b": "2"}),
    (["a", "1", "b"], {"a": "1", "b": None}),
    (["a", ""], {"a": ""}),
    (["note", "x=1 y=2"], {"note": "x=1 y=2"}),
    (["a", "1", "a"], {"a": None}),
    (["a=1", "b=2"], {"a": "1", "b": "2"}),
    (["a=", "note=k=v"], {"a": None, "note": "k=v"}),
    ([], {}),
])
def test_fw_setenv_pairs_and_otads_assignments(args, changes) -> None:
    assert parse_arguments(args) == changes


@pytest.mark.parametrize("args", [["a=1", "b"], ["a", "1", "b=2"], ["a", "1", "=x", "2"]])
def test_a_mix_of_the_two_forms_is_a_usage_error(args) -> None:
    with pytest.raises(UsageError, match="where a NAME belongs.*not a mix") as info:
        parse_arguments(args)
    assert info.value.exit_code == 2


def test_a_script_and_arguments_together_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="fw_setenv would ignore the arguments"):
        requested_changes(["a", "1"], str(tmp_path / "script"))


def env_with(tmp_path: Path, variables) -> UBootEnv:
    path = tmp_path / "uboot.env"
    path.write_bytes(build_image(variables, SIZE))
    (tmp_path / "fw_env.config").write_text(f"{path} 0x0 0x{SIZE:x}\n")
    return UBootEnv(load_fw_env_config(str(tmp_path / "fw_env.config")), lock_path=str(tmp_path / "lock"))


BASE = {"rootpart": "2", "bootcount": "0", "a": "1"}


@pytest.mark.parametrize("flags, changes, fragment", [
    ("rootpart:sr", {"rootpart": "3"}, "'rootpart' is read-only"),
    ("rootpart:so", {"rootpart": None}, "'rootpart' is write-once"),
    ("bootcount:dw", {"bootcount": "5"}, "'bootcount' is typed decimal"),
    ("bootcount:x", {"bootcount": ""}, "'bootcount' is typed hex"),
])
def test_what_flags_makes_fw_setenv_keep_is_refused(tmp_path: Path, flags, changes, fragment) -> None:
    env = env_with(tmp_path, dict(BASE, **{".flags": flags}))
    before = (tmp_path / "uboot.env").read_bytes()
    with pytest.raises(EnvError, match=fragment):
        set_variables(env, changes)
    assert (tmp_path / "uboot.env").read_bytes() == before


@pytest.mark.parametrize("flags, changes", [
    ("rootpart:sr", {"rootpart": "2", "a": "5"}),  # unchanged value: fw_setenv does not even try
    ("bootcount:dw", {"bootcount": None}),  # deleting a typed variable works
    ("a:sa,rootpart:sr", {"rootpart": "3"}),  # libubootenv 0.3.2 reads only the first entry
    ("nosuch:sr", {"nosuch": "1"}),  # attributes of a variable that does not exist are dropped
    ("rootpart:sc", {"rootpart": "3"}),  # change-default: allowed
])
def test_what_flags_lets_fw_setenv_change_goes_through(tmp_path: Path, flags, changes) -> None:
    env = env_with(tmp_path, dict(BASE, **{".flags": flags}))
    set_variables(env, changes)
    after = dict(env.read().variables)
    assert all(after.get(name) == value for name, value in changes.items())


def test_print_hides_flags_like_fw_printenv(tmp_path: Path) -> None:
    env = env_with(tmp_path, dict(BASE, **{".flags": "rootpart:sr"}))
    assert print_variables(env, []).lines == ["a=1", "bootcount=0", "rootpart=2"]
    assert print_variables(env, [".flags"]).lines == [".flags="]
