"""Debian's swupdate 2022.12 delta handler as the oracle: what it fetches, otad's plan fetches.

The fixture's delta bundle (swugenerator: `type = "delta"`, the zck header as the member)
is installed by `swupdate -i` from v1 as the source, with the .zck served by the scripted
Range server in goosebit's dialect. Its output must be v2 byte for byte, and the Range
requests it sent must be exactly the requests otad's planner cuts for the same max-ranges —
once otad's source index leaves out its last chunk, as 2022.12 does (it never calls
zck_end_chunk on the source: fixed in SWUpdate 2024.05, 41b8ea20). otad's own plan fetches
the same chunks, less any that only that last source chunk holds.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List, Tuple

import pytest

from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from tests.delta_fixtures import DeltaFixture, delta_bundle, small  # noqa: F401 - fixture
from tests.integration.test_swupdate_oracle import run_swupdate
from tests.pki import Pki
from tests.range_server import RangeServer

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]


def plans(small: DeltaFixture) -> Tuple[Plan, Plan]:  # noqa: F811
    """(otad's plan, the plan with swupdate 2022.12's source index: its last chunk missing)."""
    target = zck.parse_header(small.header_bytes).index
    with open(small.v1, "rb") as f:
        source = srcindex.chunk_source(f, small.v1.stat().st_size)
    size = source.digest_size
    legacy = zck.ChunkIndex.of_source(list(source.lengths)[:-1], source.digests_uncompressed[:-size])
    return Plan(target, srcindex.match_index(target, source)), Plan(target, srcindex.match_index(target, legacy))


def specs(plan: Plan, max_ranges: int) -> List[str]:
    return ["bytes=" + ",".join(r.spec() for r in request) for request in plan.requests(max_ranges)]


@pytest.mark.parametrize("max_ranges", [90, 7])
def test_swupdate_fetches_exactly_the_ranges_otad_plans(small: DeltaFixture, pki: Pki, tmp_path: Path,  # noqa: F811
                                                        max_ranges: int) -> None:
    target = tmp_path / "slot-b"
    target.write_bytes(b"\x5a" * small.v2.stat().st_size)
    with RangeServer(small.v2_zck.read_bytes(), "starlette") as srv:
        bundle = delta_bundle(small, tmp_path / "delta.swu", pki, srv.url, small.v1, target, max_ranges=max_ranges)
        ok, log = run_swupdate(bundle, pki.ca_pem, ["-e", "stable,delta"])
        assert ok, log[-3000:]
        journal = [s.range for s in srv.journal if s.status == 206]
    assert target.read_bytes() == small.v2.read_bytes()
    ours, as_2022 = plans(small)
    want = specs(as_2022, max_ranges)
    # swupdate may run twice (run_swupdate retries a run without a verdict): compare one run.
    assert journal[:len(want)] == want, (journal, want)
    reused = re.search(r"Total bytes to be reused\s*:\s*(\d+)", log)
    downloaded = re.search(r"Total bytes to be downloaded\s*:\s*(\d+)", log)
    assert reused and downloaded, log[-2000:]
    assert (int(reused.group(1)), int(downloaded.group(1))) == (as_2022.reused_bytes, as_2022.fetch_bytes)
    extra = set(as_2022.fetched()) - set(ours.fetched())
    assert set(ours.fetched()) <= set(as_2022.fetched()) and len(extra) <= 1
