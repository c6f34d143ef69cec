"""Version policy as Debian's swupdate 2022.12 applies it (each rule was checked against the binary).

-N refuses only a strictly lower bundle, --max-version only a strictly higher one, -R compares
strings literally. install-if-different skips when compare() says equal ("1.0" == "1.0.0"),
install-if-higher unless strictly higher; a component sw-versions does not list is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from otad.errors import CompatibilityError, ConfigError
from otad.install.versionpolicy import (VersionPolicy, apply, check_bundle_version, drop_skipped,
                                        parse_sw_versions, read_sw_versions, skip_reason)
from otad.swu.manifest import BootenvVar, File, Image, Manifest


def image(version: str, flag: str = "higher", name: str = "rootfs", filename: str = "rootfs.img") -> Image:
    return Image(filename, device="/dev/mmcblk0p3", name=name, version=version,
                 install_if_higher=flag == "higher", install_if_different=flag == "different")


@pytest.mark.parametrize("bundle,minimum,allowed", [
    ("1.0.0", "1.0.0", True),  # equal passes (swupdate's message says '<=' but it compares '<')
    ("1.0.0", "1.0.1", False),
    ("1.0.0", "0.9", True),
    ("1.2.10", "1.2.9", True),  # numeric fields, not strings
    ("1.0.0-rc1", "1.0.0", False),  # semver: a prerelease is lower
])
def test_min_version_refuses_only_strictly_lower_bundles(bundle, minimum, allowed) -> None:
    policy = VersionPolicy(min_version=minimum)
    if allowed:
        check_bundle_version(bundle, policy)
    else:
        with pytest.raises(CompatibilityError, match=rf"bundle version '{bundle}' is lower than the minimum version "
                                                     rf"'{minimum}' \(-N / install.min_version\): downgrade refused"):
            check_bundle_version(bundle, policy)


@pytest.mark.parametrize("bundle,maximum,allowed", [("1.0.0", "1.0.0", True), ("1.0.0", "0.9", False),
                                                    ("2.0", "10.0", True)])
def test_max_version_refuses_only_strictly_higher_bundles(bundle, maximum, allowed) -> None:
    policy = VersionPolicy(max_version=maximum)
    if allowed:
        check_bundle_version(bundle, policy)
    else:
        with pytest.raises(CompatibilityError, match=rf"'{bundle}' is higher than the maximum version '{maximum}'"):
            check_bundle_version(bundle, policy)


def test_no_reinstall_compares_version_strings_literally() -> None:
    with pytest.raises(CompatibilityError, match=r"bundle version '1.0.0' equals '1.0.0', which must not be installed"):
        check_bundle_version("1.0.0", VersionPolicy(no_reinstall="1.0.0"))
    check_bundle_version("1.0.0", VersionPolicy(no_reinstall="1.0"))  # compare() would call these equal


@pytest.mark.parametrize("flag,proposed,installed,skipped", [
    ("different", "1.0.0", "1.0.0", True),
    ("different", "1.0.0", "1.0", True),  # 2022.12 uses compare_versions(), not strcmp
    ("different", "1.0.0", "2.0", False),
    ("different", "1.0.0", "0.9", False),  # different, even if lower
    ("higher", "1.2.9", "1.2.10", True),
    ("higher", "1.10", "1.9", False),  # dotted numeric: 10 > 9
    ("higher", "1.0", "1.0.0", True),  # equal is not higher
    ("higher", "1.2.3.4.5", "1.2.3.4", True),  # fields past the fourth are ignored
    ("higher", "1.0.0", "1.0.0-rc1", False),  # semver: release above prerelease
    ("higher", "1.0.0-rc1", "1.0.0", True),
    ("higher", "1.0.0-rc.10", "1.0.0-rc.9", False),  # numeric prerelease identifiers
    ("higher", "2.0.0-beta", "2.0.0-alpha", False),
])
def test_install_if_rules_follow_swupdate(flag, proposed, installed, skipped) -> None:
    reason = skip_reason(image(proposed, flag), {"rootfs": installed})
    assert (reason is not None) == skipped
    if skipped:
        assert f"rootfs {proposed}" in reason and installed in reason and f"install-if-{flag}" in reason


def test_entries_without_name_version_or_flag_or_not_in_sw_versions_are_installed() -> None:
    installed = {"rootfs": "9.0"}
    assert skip_reason(image("1.0", name="kernel"), installed) is None  # component not listed
    assert skip_reason(image("1.0", flag="none"), installed) is None
    assert skip_reason(Image("a.img", name="rootfs", install_if_higher=True), installed) is None
    assert skip_reason(image("1.0"), {}) is None


def manifest(*images: Image, files=(), bootenv=()) -> Manifest:
    return Manifest(version="1.0", images=images, files=tuple(files), bootenv=tuple(bootenv))


def test_drop_skipped_keeps_the_rest_and_says_why() -> None:
    kept, skipped = drop_skipped(manifest(image("1.0"), Image("boot.img", device="/dev/x")), {"rootfs": "2.0"})
    assert [i.filename for i in kept.images] == ["boot.img"]
    assert [(e.filename, "not higher" in why) for e, why in skipped] == [("rootfs.img", True)]


def test_files_entries_are_gated_too() -> None:
    gated = File("etc.tar", path="/etc", name="config", version="3", install_if_different=True)
    kept, skipped = drop_skipped(manifest(image("5.0"), files=[gated]), {"config": "3", "rootfs": "1"})
    assert kept.files == () and len(kept.images) == 1 and skipped[0][0] is gated


def test_skipping_every_entry_is_nothing_to_install() -> None:
    with pytest.raises(CompatibilityError, match=r"nothing to install: every entry is skipped by its version rule "
                                                 r"\(rootfs 1.0 is not higher than the installed 2.0"):
        drop_skipped(manifest(image("1.0")), {"rootfs": "2.0"})


def test_bootenv_alone_still_counts_as_something_to_install() -> None:
    kept, _ = drop_skipped(manifest(image("1.0"), bootenv=[BootenvVar("x", "1")]), {"rootfs": "2.0"})
    assert kept.images == () and kept.bootenv


def test_sw_versions_is_name_version_per_line() -> None:
    assert parse_sw_versions("rootfs 1.2.3\n\n  kernel\t5.10.0-rc1  \r\n", "sw") == {"rootfs": "1.2.3",
                                                                                       "kernel": "5.10.0-rc1"}


@pytest.mark.parametrize("text,line,fragment", [
    ("rootfs 1.0\nkernel\n", 2, "got 1 word(s): 'kernel'"),
    ("rootfs 1.0 extra\n", 1, "got 3 word(s)"),
    ("# installed versions\nrootfs 1.0\n", 1, "got 3 word(s)"),  # no comments: swupdate would misread them
    ("rootfs 1.0\nkernel 5\nrootfs 2.0\n", 3, "'rootfs' listed twice (first on line 1)"),
])
def test_malformed_sw_versions_is_a_config_error_naming_the_line(text, line, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sw_versions(text, "/etc/sw-versions")
    assert info.value.where == f"/etc/sw-versions:{line}" and fragment in info.value.what


def test_missing_sw_versions_means_nothing_installed(tmp_path: Path) -> None:
    assert read_sw_versions(str(tmp_path / "nope")) == {}
    (tmp_path / "bin").write_bytes(b"rootfs \xff\n")
    with pytest.raises(ConfigError, match="as UTF-8 text, got byte 0xff"):
        read_sw_versions(str(tmp_path / "bin"))


def test_apply_reads_sw_versions_only_when_an_entry_is_gated(tmp_path: Path, caplog) -> None:
    broken = tmp_path / "sw-versions"
    broken.write_text("not a valid line at all\n")
    policy = VersionPolicy(sw_versions_file=str(broken))
    plain = manifest(Image("a.img", device="/dev/x"))
    assert apply(plain, policy) is plain  # the broken file is never read
    with pytest.raises(ConfigError, match=r"sw-versions:1"):
        apply(manifest(image("1.0"), Image("a.img", device="/dev/x")), policy)
    broken.write_text("rootfs 2.0\n")
    with caplog.at_level(logging.INFO):
        kept = apply(manifest(image("1.0"), Image("a.img", device="/dev/x")), policy)
    assert [i.filename for i in kept.images] == ["a.img"]
    assert "skipping 'rootfs.img': rootfs 1.0 is not higher than the installed 2.0" in caplog.text


def test_apply_checks_the_bundle_version_first() -> None:
    with pytest.raises(CompatibilityError, match="downgrade refused"):
        apply(manifest(image("9.9")), VersionPolicy(min_version="2.0"))
