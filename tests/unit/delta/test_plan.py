"""The plan: which chunks are fetched, cut into requests the way SWUpdate cuts them."""

from __future__ import annotations

import hashlib
from array import array
from typing import List

import pytest

from otad.delta import zck
from otad.delta.plan import ByteRange, Plan
from otad.delta.srcindex import NOT_FOUND, SourceMatch


def plan_with(missing: List[int], n: int = 12, comp: int = 10, length: int = 100) -> Plan:
    digests = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(n))
    entries = [zck.ChunkEntry(digests[i * 32:(i + 1) * 32], digests[i * 32:(i + 1) * 32], comp, length) for i in range(n)]
    header = zck.parse_header(zck.build_header(entries))
    offsets = array("q", [NOT_FOUND if i in missing else i * length for i in range(n)])
    return Plan(header.index, SourceMatch(offsets))


def spans(requests) -> List[List[tuple]]:  # type: ignore[no-untyped-def]
    return [[(r.first, r.last) for r in q] for q in requests]


def test_adjacent_missing_chunks_make_one_range() -> None:
    plan = plan_with([1, 2, 3, 5, 6, 9])
    start = plan.target.starts[0]
    assert plan.ranges() == [ByteRange(start + 10, start + 40, 1, 3), ByteRange(start + 50, start + 70, 5, 6),
                             ByteRange(start + 90, start + 100, 9, 9)]
    assert plan.ranges()[0].spec() == f"{start + 10}-{start + 39}"


def test_requests_close_when_their_last_range_starts_as_in_zchunk_range_c() -> None:
    # zchunk_get_missing_range stops right after the chunk that opens range number max-ranges:
    # the rest of that run starts the next request.
    plan = plan_with([1, 2, 3, 5, 6, 9])
    assert spans(plan.requests(2)) == [[(1, 3), (5, 5)], [(6, 6), (9, 9)]]
    assert spans(plan.requests(1)) == [[(1, 1)], [(2, 2)], [(3, 3)], [(5, 5)], [(6, 6)], [(9, 9)]]
    assert spans(plan.requests(50)) == [[(1, 3), (5, 6), (9, 9)]]


def test_a_gap_merges_runs_and_fetches_the_bytes_between() -> None:
    plan = plan_with([1, 3, 9])
    assert [(r.first, r.last) for r in plan.ranges(gap=10)] == [(1, 3), (9, 9)]
    assert sum(r.length for r in plan.ranges(gap=10)) == 40
    assert spans(plan.requests(5, gap=10)) == [[(1, 3), (9, 9)]]


def test_totals_and_summary() -> None:
    plan = plan_with([1, 2, 3, 5, 6, 9], comp=40_000, length=100_000)
    assert (plan.reused_bytes, plan.fetch_bytes) == (6 * 100_000, 6 * 40_000)
    assert plan.summary(plan.requests(2)) == "reuse 0.6 MB, fetch 0.2 MB in 2 requests"
    assert plan_with([]).summary(plan_with([]).requests(2)) == "reuse 1.2 kB, fetch 0.0 kB in 0 requests"


def test_a_plan_needs_one_match_per_chunk() -> None:
    plan = plan_with([])
    with pytest.raises(ValueError):
        Plan(plan.target, SourceMatch(array("q", [0])))
    with pytest.raises(ValueError):
        plan.requests(0)
