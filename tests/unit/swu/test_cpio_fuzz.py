"""Property tests for otad.swu.cpio: hostile bytes only ever raise BundleFormatError."""

from __future__ import annotations

import io
import random
from typing import List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from otad.errors import BundleFormatError
from otad.swu.cpio import CRC, NEWC, TRAILER, CpioReader, CpioWriter

FUZZ = settings(max_examples=300, deadline=None)

Members = List[Tuple[str, bytes]]

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/."),
    min_size=1,
    max_size=40,
).filter(lambda n: len(n.encode()) < 250 and n != TRAILER)
member_lists = st.lists(st.tuples(names, st.binary(max_size=600)), max_size=6)
formats = st.sampled_from([NEWC, CRC])


class Trickle:
    """A pipe-like source whose reads return between 1 and `most` bytes."""

    def __init__(self, data: bytes, seed: int, most: int) -> None:
        self._data = io.BytesIO(data)
        self._rng = random.Random(seed)
        self._most = most

    def read(self, n: int) -> bytes:
        return self._data.read(min(n, self._rng.randint(1, self._most)))


def written(members: Members, fmt: str) -> bytes:
    out = io.BytesIO()
    with CpioWriter(out, fmt) as writer:
        for name, data in members:
            writer.add(name, data)
    return out.getvalue()


def read_everything(data: bytes) -> None:
    """Iterate and read every member; a BundleFormatError is the one allowed failure."""
    try:
        for index, member in enumerate(CpioReader(io.BytesIO(data))):
            if index % 3 == 0:
                member.read_all(limit=1 << 16)
            elif index % 3 == 1:
                for _ in member.chunks(7):
                    pass
            # every third member is left for the reader to skip
    except BundleFormatError:
        pass


hex_field = st.integers(0, 0xFFFFFFFF).map(lambda n: b"%08X" % n)


@st.composite
def plausible_entries(draw: st.DrawFn) -> bytes:
    """A header with valid hex, a name that often matches its c_namesize, then random bytes."""
    magic = draw(st.sampled_from([b"070701", b"070702"]))
    name = draw(st.one_of(names, st.just("TRAILER!!!"))).encode() + b"\0"
    namesize = draw(st.one_of(st.just(len(name)), st.integers(0, 300)))
    filesize = draw(st.one_of(st.integers(0, 64), st.integers(0, 0xFFFFFFFF)))
    chksum = draw(st.one_of(st.integers(0, 64 * 255), st.integers(0, 0xFFFFFFFF)))
    others = draw(st.lists(hex_field, min_size=10, max_size=10))
    fields = others[:6] + [b"%08x" % filesize] + others[6:] + [b"%08X" % namesize, b"%08x" % chksum]
    pad = bytes(draw(st.integers(0, 3)))
    return magic + b"".join(fields) + name + pad + draw(st.binary(max_size=600))


hostile_bytes = st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=600).map(lambda b: b"070701" + b),
    st.binary(max_size=600).map(lambda b: b"070702" + b),
    plausible_entries(),
    st.lists(plausible_entries(), min_size=2, max_size=4).map(b"".join),
)


@FUZZ
@given(hostile_bytes)
def test_reader_raises_only_bundle_format_error_on_arbitrary_bytes(data: bytes) -> None:
    read_everything(data)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 8)),
    st.tuples(st.just("digit"), st.integers(0, 1 << 16), st.sampled_from(b"0f9aF+ x\0")),
)


def mutate(data: bytes, mutations: List[Tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, position, value in mutations:
        if not buf:
            break
        at = position % len(buf)
        if kind == "flip":
            buf[at] ^= value
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = bytes([value])
        elif kind == "delete":
            del buf[at : at + value]
        else:
            buf[at] = value
    return bytes(buf)


@FUZZ
@given(member_lists, formats, st.lists(mutation, min_size=1, max_size=4))
def test_reader_raises_only_bundle_format_error_on_mutated_archives(
    members: Members, fmt: str, mutations: List[Tuple[str, int, int]]
) -> None:
    read_everything(mutate(written(members, fmt), mutations))


@FUZZ
@given(member_lists, formats, st.integers(0, 1 << 30), st.integers(1, 64), st.integers(1, 97))
def test_writer_then_reader_round_trips_any_member_list(
    members: Members, fmt: str, seed: int, most: int, chunk: int
) -> None:
    data = written(members, fmt)
    reader = CpioReader(Trickle(data, seed, most))
    assert [(m.name, b"".join(m.chunks(chunk))) for m in reader] == members
    assert len(data) - 512 < reader.bytes_read <= len(data)
