"""Unit tests for otad.boot.envtext: fw_setenv -s scripts and fw_printenv's name=value lines."""

from __future__ import annotations

import pytest

from otad.boot.envtext import format_env_text, parse_env_text, parse_set_script
from otad.errors import EnvError


# ------------------------------------------------------------ text formats


def test_parse_set_script_reads_libubootenvs_name_equals_value_lines() -> None:
    text = (
        "# comment\n"
        "\n"
        "upgrade_available=1\n"
        "bootcmd=  run a; run b  \n"
        "otad_prev=\n"
        "eq==x\n"
        "crlf=v w\r\n"
        "rootpart=3\n"
        "rootpart=2"
    )
    assert parse_set_script(text, source="s") == {
        "upgrade_available": "1",
        "bootcmd": "  run a; run b  ",
        "otad_prev": None,
        "eq": "=x",
        "crlf": "v w",
        "rootpart": "2",
    }


@pytest.mark.parametrize(
    "text, where, fragment",
    [
        ("a=1\nrootpart 3\n", "s:2", "expected 'name=value'"),
        ("a=1\nbootcount\n", "s:2", "expected 'name=value'"),
        ("a=1\n#x=1\n #x=1\n", "s:3", "' #x': contains blanks"),
        ("a=1\nbootcmd=echo a\\b\n", "s:2", "backslash"),
        ("=value\n", "s:1", "non-empty name"),
        ("a\0b=1\n", "s:1", "NUL"),
        ("v=" + "y" * 1022 + "\n", "s:1", "1024 bytes: fw_setenv -s reads at most 1023"),
        ("v=" + "y" * 1020 + "ä\n", "s:1", "1024 bytes"),
    ],
)
def test_parse_set_script_names_the_bad_line(text: str, where: str, fragment: str) -> None:
    with pytest.raises(EnvError, match=fragment) as info:
        parse_set_script(text, source="s")
    assert info.value.where == where


def test_parse_set_script_takes_a_1023_byte_line_and_trailing_carriage_returns() -> None:
    assert parse_set_script("v=" + "y" * 1021 + "\r\r\n", source="s") == {"v": "y" * 1021}


def test_parse_env_text_and_format_env_text_round_trip() -> None:
    text = "# default env\nbootcmd=run distro_bootcmd\n\nbootdelay=2\nx=a=b\n"
    variables = parse_env_text(text, source="u-boot-initial-env")
    assert variables == {"bootcmd": "run distro_bootcmd", "bootdelay": "2", "x": "a=b"}
    assert parse_env_text(format_env_text(variables), source="-") == variables
    assert format_env_text({"b": "1", "a": "2"}) == "a=2\nb=1\n"


def test_parse_env_text_names_a_line_without_equals() -> None:
    with pytest.raises(EnvError, match="expected 'name=value', got 'bootcmd'") as info:
        parse_env_text("a=1\nbootcmd\n", source="defenv")
    assert info.value.where == "defenv:2"
