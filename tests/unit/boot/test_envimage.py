"""Unit tests for otad.boot.envimage: the image format (CRC, flags, sorted list, padding), built and parsed."""

from __future__ import annotations

import struct
import zlib
from typing import Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otad.boot.envimage import build_image, parse_image
from otad.errors import EnvError

SIZE = 0x4000
VECTOR = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}


def crc_of(blob: bytes) -> int:
    return int(struct.unpack("<I", blob[:4])[0])


# ------------------------------------------------------------------ image format


def test_single_image_with_zero_padding_matches_notes_vector() -> None:
    image = build_image(VECTOR, SIZE)
    assert len(image) == SIZE
    assert crc_of(image) == 0xC3C525C3
    assert image[:5] == bytes.fromhex("c325c5c362")


def test_redundant_image_with_flags_1_matches_notes_vector() -> None:
    image = build_image(VECTOR, SIZE, redundant=True, flags=1)
    assert crc_of(image) == 0xC6C112DB
    assert image[4] == 1


def test_single_image_with_ff_padding_matches_notes_vector() -> None:
    assert crc_of(build_image(VECTOR, SIZE, pad=0xFF)) == 0x97F92536


def test_build_image_sorts_by_name_and_ends_list_with_double_nul() -> None:
    image = build_image({"b": "2", "a": "x=y z", "B": "3"}, 64)
    assert image[4:].startswith(b"B=3\0a=x=y z\0b=2\0\0")
    assert image[4:].rstrip(b"\0") == b"B=3\0a=x=y z\0b=2"


def test_build_image_sorts_by_utf8_bytes_like_strcmp() -> None:
    image = build_image({"\u00e9": "1", "z": "2", "\U0001f600": "3"}, 64)
    assert image[4:].startswith("z=2\0\u00e9=1\0\U0001f600=3\0\0".encode())


def test_crc_covers_padding_but_not_the_flags_byte() -> None:
    image = build_image(VECTOR, SIZE, redundant=True, flags=7)
    assert crc_of(image) == zlib.crc32(image[5:])
    other_flags = image[:4] + bytes([200]) + image[5:]
    assert parse_image(other_flags, SIZE, redundant=True) == VECTOR
    padded = bytearray(image)
    padded[-1] ^= 0xFF
    assert parse_image(bytes(padded), SIZE, redundant=True) is None


@pytest.mark.parametrize("redundant", [False, True])
def test_parse_image_round_trips_values_with_equals_newlines_and_utf8(redundant: bool) -> None:
    variables = {"bootcmd": "setenv a=b; run x\nrun y", "name": "\u00e4\u00f6\u00fc \u2603", "empty_ok": "v"}
    assert parse_image(build_image(variables, SIZE, redundant=redundant), SIZE, redundant=redundant) == variables


def test_parse_image_keeps_non_utf8_bytes_through_a_round_trip() -> None:
    data = b"name=\xff\xfe\0\0"
    blob = struct.pack("<I", zlib.crc32(data + b"\0" * (60 - len(data)))) + data + b"\0" * (60 - len(data))
    variables = parse_image(blob, 64, redundant=False)
    assert variables is not None
    assert build_image(variables, 64) == blob


def raw_image(data: bytes, size: int = 64) -> bytes:
    data = data + b"\0" * (size - 4 - len(data))
    return struct.pack("<I", zlib.crc32(data)) + data


def test_parse_image_last_duplicate_wins_and_entries_without_equals_are_skipped() -> None:
    blob = raw_image(b"a=1\0junk\0=noname\0a=2\0b=\0\0c=after-terminator\0")
    assert parse_image(blob, 64, redundant=False) == {"a": "2", "b": ""}


def test_parse_image_ends_an_unterminated_list_at_the_end_of_the_data() -> None:
    body = b"a=1\0b=" + b"x" * (60 - 6)
    assert parse_image(raw_image(body), 64, redundant=False) == {"a": "1", "b": "x" * 54}


def test_parse_image_of_an_empty_env() -> None:
    assert parse_image(build_image({}, 64), 64, redundant=False) == {}


def test_parse_image_returns_none_for_short_bad_crc_big_endian_and_erased() -> None:
    good = build_image(VECTOR, SIZE)
    assert parse_image(good[:-1], SIZE, redundant=False) is None
    bad = good[:4] + b"X" + good[5:]
    assert parse_image(bad, SIZE, redundant=False) is None
    big_endian = struct.pack(">I", crc_of(good)) + good[4:]
    assert parse_image(big_endian, SIZE, redundant=False) is None
    assert parse_image(b"\xff" * SIZE, SIZE, redundant=False) is None


def test_build_image_fills_the_data_area_exactly_and_refuses_one_byte_more() -> None:
    # data area 60 bytes: "a=" + value + "\0" + "\0" must fit
    fits = {"a": "v" * 56}
    assert parse_image(build_image(fits, 64), 64, redundant=False) == fits
    with pytest.raises(EnvError, match="too large"):
        build_image({"a": "v" * 57}, 64)
    with pytest.raises(EnvError, match="too large"):
        build_image(fits, 64, redundant=True)


@pytest.mark.parametrize(
    "variables, fragment",
    [
        ({"a=b": "1"}, "'a=b'"),
        ({"": "1"}, "non-empty"),
        ({"a\0b": "1"}, "NUL"),
        ({"a": "x\0y"}, "NUL"),
        ({"a": "\ud800"}, "UTF-8"),
    ],
)
def test_build_image_rejects_unstorable_names_and_values(variables: Dict[str, str], fragment: str) -> None:
    with pytest.raises(EnvError, match=fragment):
        build_image(variables, SIZE)


def test_build_image_rejects_flags_and_pad_outside_a_byte() -> None:
    with pytest.raises(EnvError, match="flags"):
        build_image(VECTOR, SIZE, redundant=True, flags=256)
    with pytest.raises(EnvError, match="pad"):
        build_image(VECTOR, SIZE, pad=-1)


names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#\\"),
    min_size=1,
    max_size=20,
)
values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0\\"), max_size=40
)


@given(variables=st.dictionaries(names, values, max_size=20), redundant=st.booleans(), flags=st.integers(0, 255))
def test_build_then_parse_returns_the_variables(variables: Dict[str, str], redundant: bool, flags: int) -> None:
    image = build_image(variables, 0x1000, redundant=redundant, flags=flags)
    assert len(image) == 0x1000
    assert parse_image(image, 0x1000, redundant=redundant) == variables


@given(blob=st.binary(max_size=300), size=st.integers(-5, 300), redundant=st.booleans())
def test_parse_image_never_raises_on_random_blobs(blob: bytes, size: int, redundant: bool) -> None:
    result = parse_image(blob, size, redundant=redundant)
    assert result is None or isinstance(result, dict)


@given(data=st.binary(max_size=120), redundant=st.booleans())
def test_parse_image_never_raises_on_random_data_with_a_valid_crc(data: bytes, redundant: bool) -> None:
    header = 5 if redundant else 4
    data = data.ljust(128 - header, b"\xff")
    blob = struct.pack("<I", zlib.crc32(data)) + (b"\x01" if redundant else b"") + data
    result = parse_image(blob, 128, redundant=redundant)
    assert isinstance(result, dict)
