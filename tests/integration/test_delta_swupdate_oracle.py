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
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from tests.delta_fixtures import DeltaFixture, delta_bundle, self_contained, small  # noqa: F401 - fixture
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


def otad_install(bundle: Path, selection: str, pki: Pki, tmp_path: Path) -> None:
    """`otad install -e SELECTION BUNDLE` as a process, without slots (as `swupdate -i`)."""
    conf = tmp_path / "otad.conf"
    conf.write_text(f'system = {{ state_dir = "{tmp_path / "state"}"; hardware = "rpi0w:1.0"; }};\n'
                    f'install = {{ trust_file = "{pki.ca_pem}"; }};\ndelta = {{ min_interval_s = 0; }};\n')
    done = subprocess.run([sys.executable, "-m", "otad", "--config", str(conf), "install", "-e", selection,
                           str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def chunks_fetched(target: zck.ChunkIndex, ranges: List[str]) -> List[int]:
    """The chunk numbers whose bytes the Range headers asked for."""
    starts = {target.starts[i]: i for i in range(len(target))}
    found = []
    for header in ranges:
        for spec in header.split("=", 1)[1].split(","):
            first, last = (int(x) for x in spec.split("-"))
            i = starts[first]
            while i < len(target) and target.starts[i] <= last:
                found.append(i)
                i += 1
    return found


def test_otad_installs_swupdates_bundle_byte_identically_fetching_the_same_chunks(
        small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    """Debian swupdate and otad install the same swugenerator bundle from the same source: the
    same bytes, and the same chunks (otad also indexes the source's last chunk, which 2022.12
    forgets: at most that one chunk less)."""
    swupdate_slot, otad_slot = tmp_path / "slot-swupdate", tmp_path / "slot-otad"
    for slot in (swupdate_slot, otad_slot):
        slot.write_bytes(b"\x5a" * small.v2.stat().st_size)
    target = zck.parse_header(small.header_bytes).index
    with RangeServer(small.v2_zck.read_bytes(), "starlette") as srv:
        swupdate_bundle = delta_bundle(small, tmp_path / "a.swu", pki, srv.url, small.v1, swupdate_slot)
        ok, log = run_swupdate(swupdate_bundle, pki.ca_pem, ["-e", "stable,delta"])
        assert ok, log[-3000:]
        theirs = [s.range or "" for s in srv.journal if s.status == 206]
        srv.journal.clear()
        otad_install(delta_bundle(small, tmp_path / "b.swu", pki, srv.url, small.v1, otad_slot), "stable,delta",
                     pki, tmp_path)
        ours = [s.range or "" for s in srv.journal]
    assert otad_slot.read_bytes() == swupdate_slot.read_bytes() == small.v2.read_bytes()
    swupdate_chunks, otad_chunks = chunks_fetched(target, theirs), chunks_fetched(target, ours)
    assert len(set(swupdate_chunks)) == len(swupdate_chunks)  # one run of swupdate, each chunk once
    assert set(otad_chunks) <= set(swupdate_chunks) and len(set(swupdate_chunks) - set(otad_chunks)) <= 1
    assert sorted(otad_chunks) == plans(small)[0].fetched()


def test_the_self_contained_bundles_full_selection_installs_by_swupdate_and_by_otad(
        small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    """The body member as a raw zstd image (`stable,copy2-full`): a device without a usable source,
    or SWUpdate (which cannot resolve `url = "dynamic"` without hawkBit), installs the same file."""
    swupdate_slot, otad_slot = tmp_path / "slot-swupdate", tmp_path / "slot-otad"
    for slot in (swupdate_slot, otad_slot):
        slot.write_bytes(b"\x5a" * small.v2.stat().st_size)
    swupdate_bundle = self_contained(small, tmp_path / "a.swu", pki, devices=(str(small.v1), str(swupdate_slot)))
    ok, log = run_swupdate(swupdate_bundle, pki.ca_pem, ["-e", "stable,copy2-full"])
    assert ok, log[-3000:]
    otad_install(self_contained(small, tmp_path / "b.swu", pki, devices=(str(small.v1), str(otad_slot))),
                 "stable,copy2-full", pki, tmp_path)
    assert otad_slot.read_bytes() == swupdate_slot.read_bytes() == small.v2.read_bytes()
