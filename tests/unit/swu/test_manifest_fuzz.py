"""Property tests for otad.swu.manifest: hostile sw-descriptions only ever raise ManifestError
(malformed) or CompatibilityError (valid but not for this device), never anything else."""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from otad.errors import CompatibilityError, ManifestError
from otad.swu.manifest import HardwareRevision, Manifest, parse

FUZZ = settings(max_examples=200, deadline=None)

VALID = b"""
software = {
    version = "1.0";
    hardware-compatibility = [ "1.0", "#RE:^2\\.[0-9]$" ];
    stable = {
        copy1 = {
            images: ( {
                filename = "rootfs.ext4.gz"; device = "mmcblk0p2"; compressed = "zlib"; offset = "16K";
                sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                properties = { atomic-install = "true"; };
            }, { ref = "#./../common"; } );
            bootenv: ( { name = "rootpart"; value = "2"; } );
        };
        copy2 = { ref = "#./copy1"; };
        common: ( { filename = "extra.img"; device = "/dev/mmcblk0p4"; } );
    };
    rpi0w = { stable = { copy1 = { files: ( { filename = "motd"; path = "/etc/motd"; } ); }; }; };
};
"""

BOARDS = st.sampled_from([None, "rpi0w", "other"])
SELECTIONS = st.sampled_from([None, ("stable", "copy1"), ("stable", "copy2"), ("beta", "copy1")])
Selection = Optional[Tuple[str, str]]


def exercise(data: bytes, board: Optional[str], selection: Selection, revision: str = "1.0") -> None:
    """Everything a caller does with a description; only otad's two bundle errors may escape."""
    try:
        description = parse(data)
        description.boards()
        for available in description.selections():
            assert len(available) == 2
        manifest = description.select(board, selection)
        assert isinstance(manifest, Manifest)
        for entry in manifest.entries():
            assert isinstance(entry.filename, str) and entry.filename
        manifest.is_hardware_compatible(revision)
        manifest.check_hardware(HardwareRevision(board or "board", revision))
    except (ManifestError, CompatibilityError):
        pass


def test_the_valid_description_itself_selects_cleanly() -> None:
    manifest = parse(VALID).select("rpi0w", ("stable", "copy1"))
    assert [entry.filename for entry in manifest.entries()] == ["rootfs.ext4.gz", "extra.img", "motd"]


@FUZZ
@given(st.binary(max_size=400), BOARDS, SELECTIONS)
def test_arbitrary_bytes(data: bytes, board: Optional[str], selection: Selection) -> None:
    exercise(data, board, selection)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('software={}()[];:,"#./\\ \n\tabcxyz019-*LrefTRUE@')), max_size=300),
       BOARDS, SELECTIONS)
def test_arbitrary_text_from_libconfig_characters(text: str, board: Optional[str], selection: Selection) -> None:
    exercise(text.encode(), board, selection)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 4), st.binary(max_size=6)), min_size=1,
                max_size=4), BOARDS, SELECTIONS)
def test_mutations_of_a_valid_description(edits: Any, board: Optional[str], selection: Selection) -> None:
    data = VALID
    for position, cut, insert in edits:
        data = data[:position] + insert + data[position + cut:]
    exercise(data, board, selection)


# Trees built from the names and values that matter, written both as JSON and as libconfig.
KEYS = st.sampled_from(["software", "version", "images", "files", "scripts", "bootenv", "uboot", "filename",
                        "device", "offset", "sha256", "compressed", "ref", "name", "value", "properties", "stable",
                        "copy1", "copy2", "rpi0w", "hardware-compatibility", "type", "volume", "size", "ivt",
                        "encrypted", "embedded-script", "hook", "partitions", "bootloader_state_marker"])
SCALARS = st.one_of(
    st.sampled_from(["#./copy1", "#./../stable", "#software/stable/copy1", "#./images", "#..", "#./x/../copy2",
                     "16K", "0x10", "zlib", "zstd", "raw", "a.img", "mmcblk0p2", "#RE:^1\\.0$", "#RE:[", "", "a" * 64]),
    st.booleans(), st.integers(-(2**31), 2**32 - 1), st.text(max_size=8))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(KEYS, inner, max_size=5)), max_leaves=40)


def libconfig_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + " ".join(f"{key} = {libconfig_text(item)};" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "( " + ", ".join(libconfig_text(item) for item in value) + " )"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


@FUZZ
@given(st.dictionaries(KEYS, TREES, max_size=6), BOARDS, SELECTIONS, st.sampled_from(["1.0", "2.3", "x"]))
def test_structured_trees_as_json_and_as_libconfig(software: Any, board: Optional[str], selection: Selection,
                                                  revision: str) -> None:
    exercise(json.dumps({"software": software}).encode(), board, selection, revision)
    exercise(f"software = {libconfig_text(software)};".encode(), board, selection, revision)
