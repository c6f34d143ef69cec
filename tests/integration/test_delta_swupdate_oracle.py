"""Debian's swupdate 2022.12 delta handler as the oracle: what it fetches, otad's plan fetches.

The fixture's delta bundle (swugenerator: `type = "delta"`, the zck header as the member)
is installed by `swupdate -i` from v1 as the source, with the .zck served by the scripted
Range server in goosebit's dialect. Its output must be v2 byte for byte, and the Range
requests it sent must be exactly the requests otad's planner cuts for the same max-ranges.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List

import pytest

from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from tests.delta_fixtures import DeltaFixture, delta_bundle, small  # noqa: F401 - fixture
from tests.integration.test_swupdate_oracle import run_swupdate
from tests.pki import Pki
from tests.range_server import RangeServer

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]


def planned(small: DeltaFixture, max_ranges: int) -> List[str]:  # noqa: F811
    target = zck.parse_header(small.header_bytes)
    with open(small.v1, "rb") as f:
        plan = Plan(target.index, srcindex.match_index(target.index, srcindex.chunk_source(f, small.v1.stat().st_size)))
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
    want = planned(small, max_ranges)
    # swupdate may run twice (run_swupdate retries a run without a verdict): compare one run.
    assert journal[:len(want)] == want, (journal, want)
    reused = re.search(r"Total bytes to be reused\s*:\s*(\d+)", log)
    downloaded = re.search(r"Total bytes to be downloaded\s*:\s*(\d+)", log)
    assert reused and downloaded, log[-2000:]
    target_header = zck.parse_header(small.header_bytes)
    with open(small.v1, "rb") as f:
        plan = Plan(target_header.index, srcindex.match_index(target_header.index,
                                                               srcindex.chunk_source(f, small.v1.stat().st_size)))
    assert (int(reused.group(1)), int(downloaded.group(1))) == (plan.reused_bytes, plan.fetch_bytes)
