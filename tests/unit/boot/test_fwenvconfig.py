"""Unit tests for otad.boot.fwenvconfig: fw_env.config parsed as fw_printenv does, and the env layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout, load_fw_env_config, parse_fw_env_config
from otad.errors import ConfigError


# ----------------------------------------------------------------- fw_env.config


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/boot/uboot.env 0x0000 0x4000\n", [("/boot/uboot.env", 0, 0x4000, None, None)]),
        ("/boot/uboot.env 0 4000\n", [("/boot/uboot.env", 0, 0x4000, None, None)]),
        ("/dev/mmcblk0 0x400000 0x4000\n", [("/dev/mmcblk0", 0x400000, 0x4000, None, None)]),
        ("/dev/mmcblk0 4194304 0x4000\n", [("/dev/mmcblk0", 0x400000, 0x4000, None, None)]),
        ("/dev/mmcblk0 020000000 0x4000\n", [("/dev/mmcblk0", 0x400000, 0x4000, None, None)]),
        ("/dev/mmcblk0 -0x4000 0x4000\n", [("/dev/mmcblk0", -0x4000, 0x4000, None, None)]),
        ("/dev/mmcblk0 +16 0X4000\n", [("/dev/mmcblk0", 16, 0x4000, None, None)]),
        ("/dev/mtd0 0 0x4000 0x200 2\n", [("/dev/mtd0", 0, 0x4000, 0x200, 2)]),
        ("/dev/mtd0\t0\t4000\t200\t2\textra-6th-column\n", [("/dev/mtd0", 0, 0x4000, 0x200, 2)]),
        ("/boot/uboot.env 0x0000 0x4000   # Pi: single copy\n", [("/boot/uboot.env", 0, 0x4000, None, None)]),
        ("/dev/x 0 0x4000 0x200 # sector count omitted\n", [("/dev/x", 0, 0x4000, 0x200, None)]),
        ("  /boot/uboot.env 0 0x4000\r\n", [("/boot/uboot.env", 0, 0x4000, None, None)]),
        (
            "# device offset size\n#/old.env 0 0x4000\n\n/dev/x 0\njust two\n/a.env 0 0x4000\n",
            [("/a.env", 0, 0x4000, None, None)],
        ),
        (
            "/boot/uboot.env 0x0 0x4000\n/boot/uboot-redund.env 0x0 0x4000\n",
            [("/boot/uboot.env", 0, 0x4000, None, None), ("/boot/uboot-redund.env", 0, 0x4000, None, None)],
        ),
        (
            "/dev/mmcblk0 0x400000 0x4000\n/dev/mmcblk0 0x404000 0x4000\nthird line is never read\n",
            [("/dev/mmcblk0", 0x400000, 0x4000, None, None), ("/dev/mmcblk0", 0x404000, 0x4000, None, None)],
        ),
    ],
)
def test_parse_fw_env_config_accepts_both_line_forms(
    text: str, expected: List[Tuple[str, int, int, Optional[int], Optional[int]]]
) -> None:
    layout = parse_fw_env_config(text, source="fw_env.config")
    assert [(c.device, c.offset, c.size, c.sector_size, c.sector_count) for c in layout.copies] == expected
    assert layout.redundant == (len(expected) == 2)


@pytest.mark.parametrize(
    "text, where, fragment",
    [
        ("/a 0x4g 0x4000\n", "fw_env.config:1", "offset: expected .* got '0x4g'"),
        ("# c\n/a 08 0x4000\n", "fw_env.config:2", "offset: .* got '08'"),
        ("/a 0 0x4000k\n", "fw_env.config:1", "env size: expected a hex number .* got '0x4000k'"),
        ("/a 0 -0x4000\n", "fw_env.config:1", "env size: .* got '-0x4000'"),
        ("/a 0 0\n", "fw_env.config:1", "env size: expected 0x8"),
        ("/a 0 0x2000000\n", "fw_env.config:1", "env size: expected .* got 0x2000000"),
        ("/a 0 0x4000 0x2oo\n", "fw_env.config:1", "sector size: .* got '0x2oo'"),
        ("/a 0 0x4000 0x200 two\n", "fw_env.config:1", "sector count: .* got 'two'"),
        ("  # device offset size\n", "fw_env.config:1", "'#' starts a comment only at column 0"),
        ("/a 0 0x4000\n\n/b 0 0x2000\n", "fw_env.config:3", "0x2000 differs from 0x4000 on line 1"),
        ("/d 0 0x4000\n/d 0x2000 0x4000\n", "fw_env.config:2", "overlaps"),
        ("/a 0x7fffffffffffffff 0x4000\n", "fw_env.config:1", "out of range"),
    ],
)
def test_parse_fw_env_config_names_line_and_bad_field(text: str, where: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_fw_env_config(text, source="fw_env.config")
    assert info.value.where == where
    assert str(info.value).startswith(where + ": ")


def test_parse_fw_env_config_without_a_device_line_names_the_file() -> None:
    with pytest.raises(ConfigError, match="no environment line") as info:
        parse_fw_env_config("# only comments\n\n/dev/x 0\n", source="/etc/fw_env.config")
    assert info.value.where == "/etc/fw_env.config"


def test_load_fw_env_config_reads_the_file_and_names_a_missing_one(tmp_path: Path) -> None:
    cfg = tmp_path / "fw_env.config"
    cfg.write_text("/boot/uboot.env 0 0x4000\n")
    assert load_fw_env_config(str(cfg)).copies == (EnvCopyLocation("/boot/uboot.env", 0, 0x4000),)
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_fw_env_config(str(tmp_path / "missing.config"))
    assert info.value.where == str(tmp_path / "missing.config")


def test_load_fw_env_config_reports_a_bad_line_with_the_path(tmp_path: Path) -> None:
    cfg = tmp_path / "fw_env.config"
    cfg.write_bytes(b"/boot/uboot.env 0 0x4000\n/boot/r\xff.env zero 0x4000\n")
    with pytest.raises(ConfigError, match="offset: .* got 'zero'") as info:
        load_fw_env_config(str(cfg))
    assert info.value.where == f"{cfg}:2"


def test_env_layout_refuses_copies_of_different_sizes() -> None:
    with pytest.raises(ConfigError, match="differ in size"):
        EnvLayout((EnvCopyLocation("/a", 0, 0x4000), EnvCopyLocation("/b", 0, 0x2000)))
    with pytest.raises(ConfigError, match="1 or 2"):
        EnvLayout(())


@given(st.text(max_size=300))
def test_parse_fw_env_config_raises_only_config_error_on_random_text(text: str) -> None:
    try:
        layout = parse_fw_env_config(text, source="fuzz")
    except ConfigError:
        return
    assert 1 <= len(layout.copies) <= 2


config_lines = st.lists(
    st.tuples(
        st.sampled_from(["/dev/x", "#c", " #c", "/y", ""]),
        st.sampled_from(["0", "0x10", "-010", "08", "x", "+7", "0x"]),
        st.sampled_from(["4000", "0x4000", "0", "-1", "zz", "0x100000000", ""]),
        st.sampled_from(["", "200", "#", "0x200 4", "junk"]),
    ),
    max_size=4,
)


@given(config_lines)
def test_parse_fw_env_config_raises_only_config_error_on_random_lines(
    lines: List[Tuple[str, str, str, str]]
) -> None:
    text = "\n".join(" ".join(fields) for fields in lines)
    try:
        parse_fw_env_config(text, source="fuzz")
    except ConfigError as exc:
        assert exc.where is not None and exc.where.startswith("fuzz")
