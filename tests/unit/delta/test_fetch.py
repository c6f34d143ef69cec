"""The Range fetcher against a scripted server: every dialect, every fallback, every failure.

Requests go through otad's DDI client (its session, auth header and error mapping: the
`ddi_opener` of tests/delta_fixtures.py); the chunks fetched are the fixture's real plan (v1 -> v2) and
every one is decoded against the signed header. The real goosebit is in test_fetch_goosebit.py.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from otad.delta import srcindex, zck
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.fetch import MULTIPART, SEQUENTIAL, SINGLE, FetchPolicy, RangeFetcher
from otad.delta.plan import Plan
from otad.delta.srcindex import NOT_FOUND, SourceMatch
from otad.errors import ArtifactChanged, RangeFetchError
from otad.retry import Backoff, ResumePolicy
from tests.delta_fixtures import DeltaFixture
from tests.range_server import DIALECTS, Misbehave, RangeServer
from tests.delta_fixtures import client_for, ddi_opener

ZSTD = b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def plan(small: DeltaFixture) -> Plan:
    target = zck.parse_header(small.header_bytes)
    with open(small.v1, "rb") as f:
        return Plan(target.index, srcindex.match_index(target.index, srcindex.chunk_source(f, small.v1.stat().st_size)))


class Clock:
    """monotonic + sleep that only advance time; `gaps` are the times between requests."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: List[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def fetcher(srv: RangeServer, size: int, clock: Optional[Clock] = None, **policy: object) -> RangeFetcher:
    clock = clock or Clock()
    pol = FetchPolicy(**{"resume": ResumePolicy(max_attempts=3, backoff=Backoff(0.01, 0.02)), **policy})  # type: ignore[arg-type]
    return RangeFetcher(ddi_opener(client_for(srv.url)), srv.url, size, policy=pol, data_prefix=ZSTD,
                        sleep=clock.sleep, monotonic=clock.monotonic)


def fetch_all(f: RangeFetcher, plan: Plan, small: DeltaFixture, requests=None) -> Dict[int, bytes]:  # type: ignore[no-untyped-def]
    header = zck.parse_header(small.header_bytes)
    decoder, image = ChunkDecoder(header), small.v2.read_bytes()
    got: Dict[int, bytes] = {}
    for number, stored in f.fetch(plan.target, requests if requests is not None else plan.requests(50)):
        assert number not in got, f"chunk {number} delivered twice"
        got[number] = stored
        chunk = plan.target[number]
        assert decoder.decode(chunk, stored) == image[chunk.offset:chunk.offset + chunk.length]
    assert sorted(got) == plan.fetched()
    return got


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_dialect_delivers_every_chunk_once_in_the_planned_requests(plan: Plan, small: DeltaFixture,
                                                                       dialect: str) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data, dialect) as srv:
        f = fetcher(srv, len(data))
        fetch_all(f, plan, small)
    assert f.stats.mode == MULTIPART and f.stats.fallbacks == ()
    assert f.stats.requests == srv.requests == len(plan.requests(50))
    assert f.stats.payload_bytes == plan.fetch_bytes
    assert plan.fetch_bytes < f.stats.body_bytes <= plan.fetch_bytes * 1.02 + 2000  # multipart framing
    assert all(s.ranges <= 50 for s in srv.journal)


def test_a_server_that_caps_ranges_gets_half_as_many(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    requests = plan.requests(40)
    n = len(requests[0])
    assert 20 < n <= 40  # the fixture's first request: more than twice the server's limit
    with RangeServer(data, "starlette", max_ranges=10) as srv:
        f = fetcher(srv, len(data), max_ranges=40)
        fetch_all(f, plan, small, requests)
    assert f.stats.mode == MULTIPART
    assert f.stats.fallbacks == (f"HTTP 200 to {n} ranges", f"HTTP 200 to {n // 2} ranges")
    assert [s.status for s in srv.journal[:3]] == [200, 200, 206] and srv.journal[2].ranges == n // 4
    assert f.stats.payload_bytes == plan.fetch_bytes


def test_a_server_without_range_support_costs_one_sequential_read(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data, "starlette", max_ranges=0) as srv:  # every ranged request: 200
        f = fetcher(srv, len(data))
        fetch_all(f, plan, small)
    assert f.stats.mode == SEQUENTIAL
    assert f.stats.body_bytes <= len(data)  # the one sequential read, stopped after the last chunk needed
    assert f.stats.requests <= 8


def test_the_sequential_read_stops_after_the_last_chunk_needed(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    offsets = array("q", plan.match.offsets)
    for i in range(len(offsets)):
        offsets[i] = NOT_FOUND if i < 5 else (offsets[i] if offsets[i] != NOT_FOUND else 0)
    early = Plan(plan.target, SourceMatch(offsets))
    with RangeServer(data, "hawkbit", max_ranges=0) as srv:
        f = fetcher(srv, len(data), multipart=False)
        got = [n for n, _ in f.fetch(early.target, early.requests(50))]
    assert got == [0, 1, 2, 3, 4] and f.stats.mode == SEQUENTIAL
    assert f.stats.body_bytes < early.target.starts[5] + (2 << 20)  # one read buffer past chunk 4 at most


def test_the_misbehaving_server_of_issue_12(plan: Plan, small: DeltaFixture) -> None:
    """Some 200s, old-hawkBit framing on some answers, one dropped connection: all chunks,
    few extra bytes, never more than 10 requests a second."""
    data = small.v2_zck.read_bytes()
    clock = Clock()
    with RangeServer(data, "hawkbit") as srv:
        srv.script = [Misbehave(dialect="hawkbit-old"), Misbehave(drop_after=30_000), Misbehave(ignore_range=True),
                      Misbehave(dialect="hawkbit-old")]
        f = fetcher(srv, len(data), clock, max_ranges=10)
        times: List[float] = []
        opener = f._open_url
        f._open_url = lambda url, headers: times.append(clock.now) or opener(url, headers)  # type: ignore[func-returns-value]
        fetch_all(f, plan, small, plan.requests(10))
    assert f.stats.retries == 1 and len(f.stats.fallbacks) == 1 and f.stats.fallbacks[0].startswith("HTTP 200 to")
    assert [s.status for s in srv.journal[:3]] == [206, 206, 200]
    assert f.stats.payload_bytes == plan.fetch_bytes
    assert f.stats.body_bytes <= plan.fetch_bytes * 1.05 + 30_000
    assert len(times) == srv.requests and all(b - a >= 0.1 - 1e-9 for a, b in zip(times, times[1:]))


def test_a_garbled_multipart_body_falls_back_to_single_ranges(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data, "starlette") as srv:
        srv.script = [Misbehave(garble=True)]
        f = fetcher(srv, len(data))
        fetch_all(f, plan, small)
    assert f.stats.mode == SINGLE and "unreadable multipart body" in f.stats.fallbacks[0]
    assert f.stats.payload_bytes == plan.fetch_bytes


def test_a_changed_file_fails_the_fetch(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data, "hawkbit") as srv:
        srv.script = [Misbehave(), Misbehave(new_data=data[:-1] + b"\0")]
        f = fetcher(srv, len(data), max_ranges=5)
        with pytest.raises(ArtifactChanged, match="the file changed on the server \\(ETag"):
            list(f.fetch(plan.target, plan.requests(5)))
    assert srv.journal[1].headers.get("If-Range") == f.etag


def test_a_file_of_another_size_fails_the_fetch(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data + b"more", "hawkbit") as srv:
        with pytest.raises(ArtifactChanged, match=f"the server has {len(data) + 4} bytes, expected {len(data)}"):
            list(fetcher(srv, len(data)).fetch(plan.target, plan.requests(50)))


def test_chunk_requests_carry_the_ddi_clients_auth(plan: Plan, small: DeltaFixture, tmp_path: Path) -> None:
    data = small.v2_zck.read_bytes()
    (tmp_path / "token").write_text("sekrit\n")
    with RangeServer(data, "hawkbit", auth="TargetToken sekrit") as srv:
        client = client_for(srv.url, auth="target_token", token_file=str(tmp_path / "token"))
        f = RangeFetcher(ddi_opener(client), srv.url, len(data), policy=FetchPolicy(min_interval_s=0))
        assert len(list(f.fetch(plan.target, plan.requests(50)))) == len(plan.fetched())
        (tmp_path / "token").write_text("wrong\n")
        f = RangeFetcher(ddi_opener(client), srv.url, len(data), policy=FetchPolicy(min_interval_s=0))
        with pytest.raises(RangeFetchError, match="chunk request refused: HTTP 401"):
            list(f.fetch(plan.target, plan.requests(50)))


def test_a_503_is_retried_and_persistent_drops_give_up(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    with RangeServer(data, "hawkbit") as srv:
        srv.script = [Misbehave(status=503)]
        f = fetcher(srv, len(data))
        fetch_all(f, plan, small)
        assert f.stats.retries == 1
        srv.script = [Misbehave(drop_after=100)] * 10
        f = fetcher(srv, len(data))
        with pytest.raises(RangeFetchError, match="gave up after 3 retries"):
            list(f.fetch(plan.target, plan.requests(50)))


def test_chunks_inside_a_bigger_file_are_fetched_at_a_shift(plan: Plan, small: DeltaFixture) -> None:
    """The self-contained layout: the .zck body is a member of the .swu, at some offset."""
    zck_data = small.v2_zck.read_bytes()
    header_length = len(small.header_bytes)
    prefix = b"cpio and sw-description" * 100
    served = prefix + zck_data[header_length:] + b"TRAILER!!!" + bytes(500)
    with RangeServer(served, "starlette") as srv:
        f = fetcher(srv, len(served))
        header = zck.parse_header(small.header_bytes)
        decoder = ChunkDecoder(header)
        got = 0
        for number, stored in f.fetch(plan.target, plan.requests(50), shift=len(prefix) - header_length):
            decoder.decode(plan.target[number], stored)
            got += 1
    assert got == len(plan.fetched())


def test_nothing_to_fetch_sends_nothing(plan: Plan, small: DeltaFixture) -> None:
    with RangeServer(b"x", "hawkbit") as srv:
        assert list(fetcher(srv, 1).fetch(plan.target, [])) == [] and srv.requests == 0


def test_max_ranges_is_bounded_by_starlettes_limit() -> None:
    with pytest.raises(ValueError, match="max_ranges: expected 1..100"):
        FetchPolicy(max_ranges=150)


def test_a_single_range_whose_chunk_arrives_in_pieces_is_read_in_one_request(plan: Plan, small: DeltaFixture) -> None:
    data = small.v2_zck.read_bytes()
    big = max(plan.fetched(), key=lambda i: plan.target.comp_lengths[i])
    chunk = plan.target[big]
    assert chunk.comp_length > 20_000
    one = [(ByteRangeOf(chunk),)]
    with RangeServer(data, "starlette", rate_bps=1_000_000) as srv:  # 20 kB a piece: many socket reads
        f = fetcher(srv, len(data))
        got = list(f.fetch(plan.target, one))
    assert [n for n, _ in got] == [big] and len(got[0][1]) == chunk.comp_length
    assert srv.requests == 1 and f.stats.retries == 0


def ByteRangeOf(chunk: zck.Chunk) -> "ByteRange":  # noqa: N802 - reads like the type it builds
    from otad.delta.plan import ByteRange

    return ByteRange(chunk.start, chunk.end, chunk.number, chunk.number)
