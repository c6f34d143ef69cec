"""otad.smallfile: small files read whole, with a cap and one wording, in the caller's error class."""

from __future__ import annotations

from pathlib import Path

import pytest

from otad.errors import AuthError, ConfigError, SlotError
from otad.install.versionpolicy import read_sw_versions
from otad.smallfile import peek_text, read_bytes, read_text


def test_a_file_over_its_cap_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hwrevision"
    path.write_bytes(b"x" * 101)
    with pytest.raises(ConfigError, match=f"^{path}: expected the hardware revision of at most 100 bytes"):
        read_text(str(path), "the hardware revision", limit=100, error=ConfigError)
    assert read_bytes(str(path), "the hardware revision", limit=101, error=ConfigError) == b"x" * 101


def test_a_proc_file_without_a_size_is_read_whole() -> None:
    text = read_text("/proc/self/mountinfo", "the mount table", limit=4 << 20, error=SlotError)
    assert " / / " in text


def test_a_missing_file_is_an_error_or_none(tmp_path: Path) -> None:
    path = str(tmp_path / "none")
    assert read_text(path, "the installed versions", limit=10, error=ConfigError, missing_ok=True) is None
    with pytest.raises(SlotError, match="none: cannot read the kernel command line: No such file"):
        read_text(path, "the kernel command line", limit=10, error=SlotError)


def test_bytes_that_are_not_utf8_are_named_by_offset_unless_kept(tmp_path: Path) -> None:
    path = tmp_path / "script"
    path.write_bytes(b"a=1\nb=\xff\n")
    with pytest.raises(ConfigError, match="expected the script as UTF-8 text, got byte 0xff at offset 6"):
        read_text(str(path), "the script", limit=100, error=ConfigError)
    assert read_text(str(path), "the script", limit=100, error=ConfigError, errors="surrogateescape") == \
        "a=1\nb=\udcff\n"


def test_the_caller_may_build_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(AuthError) as info:
        read_bytes(str(tmp_path / "token"), "the token file", limit=10,
                   error=lambda what, where: AuthError(f"{where}: {what}", "https://hawkbit/x"))
    assert info.value.url == "https://hawkbit/x" and "token: cannot read the token file" in str(info.value)


def test_sw_versions_past_its_cap_is_refused_not_cut(tmp_path: Path) -> None:
    """Before, the first MiB was parsed and the rest silently ignored (a line cut in the middle)."""
    path = tmp_path / "sw-versions"
    path.write_text("".join(f"component{i} 1.{i}\n" for i in range(70000)))
    with pytest.raises(ConfigError, match="expected the installed versions of at most 1048576 bytes"):
        read_sw_versions(str(path))


def test_a_system_file_otad_only_looks_at_is_none_when_it_cannot_be_read(tmp_path: Path) -> None:
    assert peek_text(str(tmp_path / "none")) is None
    assert peek_text(str(tmp_path)) is None  # a directory
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    assert peek_text(str(big), limit=10) is None and peek_text(str(big), limit=11) == "x" * 11
    odd = tmp_path / "mountinfo"
    odd.write_bytes(b"36 35 98:0 / /mnt/\xff rw - ext4 /dev/root rw\n")  # a mount point that is not UTF-8
    assert peek_text(str(odd)) == "36 35 98:0 / /mnt/\ufffd rw - ext4 /dev/root rw\n"
    assert peek_text("/proc/self/status").startswith("Name:")  # type: ignore[union-attr]


def test_a_sysctl_file_is_read_in_chunks_whatever_the_cap() -> None:
    """/proc/sys refuses one read of a few MiB (ENOMEM): the boot id used to read as unknown."""
    boot_id = read_text("/proc/sys/kernel/random/boot_id", "the boot id", limit=4 << 20, error=ConfigError)
    assert len(boot_id.strip()) == 36
    assert peek_text("/proc/sys/kernel/random/boot_id") == boot_id
