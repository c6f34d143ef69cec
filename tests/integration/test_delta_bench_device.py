"""The benchmark's device side (tests/delta_bench.py) and its report, on the small fixture: what
`scripts/bench --delta` measures must be a real `otad install`, and its verdicts must follow the numbers.

Each row is `otad install` of an url-layout bundle on a file-backed A/B device: it rebuilds v2 in
slot b for each source index, the bytes it reports are the bundle plus exactly what the Range
server sent for the planned chunks, an identical source fetches nothing, and the traced run
counts the bytes written into slot b (all of it into a slot of 0x5a, nothing when slot b already
holds v2). The goal table says MISS where a number misses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from tests import delta_bench
from tests.delta_bench import Env, Holds, Row, SpecResult
from tests.delta_fixtures import DeltaFixture, ab_delta_template, small, source_zck  # noqa: F401 - fixture
from tests.pki import Pki
from tests.range_server import RangeServer, Served

OTAD = Path(sys.executable).parent / "otad"


def measure(args: List[str], *, env: Optional[Dict[str, str]] = None, scratch: Optional[Path] = None,
            **_: object) -> SimpleNamespace:
    """scripts/bench's measure, reduced to what the rows read: wait4's rusage and the output."""
    start = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert p.stdout is not None
    output = p.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return SimpleNamespace(rc=p.returncode, user=usage.ru_utime, sys=usage.ru_stime, maxrss_kb=usage.ru_maxrss,
                           wall=time.monotonic() - start, output=output)


@pytest.fixture(scope="module")
def env(small: DeltaFixture, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Env:  # noqa: F811
    scratch = tmp_path_factory.mktemp("bench-device")
    return Env(small, small.dir, scratch, measure, (pki.ca_pem, pki.signer_cert, pki.signer_key), OTAD)


@pytest.fixture(scope="module")
def served(env: Env) -> Iterator[Dict[str, Tuple[Path, RangeServer]]]:
    """otad's url-layout bundle of each profile and the server of its .zck."""
    out = {}
    with RangeServer(b"") as compatible, RangeServer(b"") as fine:
        for profile, srv in (("compatible", compatible), ("fine", fine)):
            bundle, _ = delta_bench.mkswu(env, profile, ab_delta_template(f'url = "{srv.url}";'), "--delta", profile,
                                          "--delta-layout", "url")
            srv.data = (bundle.parent / "file").read_bytes()
            out[profile] = (bundle, srv)
        yield out


def planned_fetch(fixture: DeltaFixture, zck_file: bytes) -> int:  # noqa: F811
    target = zck.parse_header(zck_file, exact=False).index
    with open(fixture.v1, "rb") as f:
        size = fixture.v1.stat().st_size
        found = srcindex.match_fine(target, f, size) if target.uniform_length() else \
            srcindex.match_index(target, srcindex.chunk_source(f, size))
    return Plan(target, found).fetch_bytes


@pytest.mark.parametrize("profile, cached", [("compatible", True), ("compatible", False), ("fine", False)])
def test_each_row_is_an_otad_install_that_rebuilds_v2_and_counts_what_the_server_sent(
        env: Env, served: Dict[str, Tuple[Path, RangeServer]], small: DeltaFixture,  # noqa: F811
        profile: str, cached: bool) -> None:
    bundle, srv = served[profile]
    srv.journal.clear()
    row = delta_bench.install_delta(env, "row", bundle, srv, Holds(small.v1, source_zck(small) if cached else None),
                                    count_writes=cached)
    assert row.ok, row.detail
    sent = sum(s.body_bytes for s in srv.journal[:row.requests])
    assert row.head == bundle.stat().st_size and row.downloaded == row.head + sent
    fetch = planned_fetch(small, srv.data)
    assert fetch <= sent <= fetch * 1.02 + 1024  # the planned chunks, plus multipart framing
    assert 1 <= row.requests <= 4 and row.per_s is not None and 1 <= row.per_s <= row.requests
    assert row.detail.startswith("otad: reused ") and row.cpu_s and row.rss_kB
    if cached:  # a slot of 0x5a: every byte of the image is written
        assert row.written == small.v2.stat().st_size


def test_an_identical_source_fetches_nothing_and_a_slot_holding_v2_is_not_written(
        env: Env, served: Dict[str, Tuple[Path, RangeServer]], small: DeltaFixture) -> None:  # noqa: F811
    bundle, srv = served["compatible"]
    srv.journal.clear()
    row = delta_bench.install_delta(env, "identical", bundle, srv, Holds(small.v2, small.v2_zck))
    assert row.ok and srv.journal == [] and row.downloaded == row.head and row.requests == 0
    row = delta_bench.install_delta(env, "in place", bundle, srv, Holds(small.v1, source_zck(small), small.v2,
                                                                        small.v2_zck), count_writes=True)
    assert row.ok and row.written == 0 and row.in_place is not None and row.in_place > 0.99 * small.v2.stat().st_size


def test_the_marked_install_says_where_memory_and_cpu_go_step_by_step(
        env: Env, served: Dict[str, Tuple[Path, RangeServer]], small: DeltaFixture) -> None:  # noqa: F811
    bundle, _ = served["compatible"]
    found = delta_bench.marks(env, bundle, Holds(small.v1, source_zck(small)))
    assert [m[0].split()[0] for m in found] == ["Python", "otad.cli", "bundle", "zck", "planning", "chunks", "exit"]
    rss, hwm, cpu, modules = ([m[i] for m in found] for i in (1, 4, 5, 6))
    assert all(r <= h for r, h in zip(rss, hwm)) and hwm == sorted(hwm) and cpu == sorted(cpu)
    assert modules == sorted(modules) and modules[2] > modules[1]  # the installer's imports come before the header
    lines = delta_bench.memory_table([SpecResult("small", marks=found)])
    assert len(lines) == 7 + len(found) and "planning begins" in lines[-3]


def test_writes_to_the_target_are_summed_from_strace_output_split_calls_included() -> None:
    trace = "\n".join([
        '101 write(7</dev/b>, ""..., 4096) = 4096',
        '101 write(3</state/x.json>, ""..., 50) = 50',
        '102 pwrite64(7</dev/b>, ""..., 8192, 0 <unfinished ...>',
        '101 write(7</dev/b>, ""..., 100) = 60',
        '102 <... pwrite64 resumed>) = 8192',
        '103 write(4</state/y>, ""..., 9 <unfinished ...>',
        '103 <... write resumed>) = 9',
        'write(7</dev/b>, ""..., 5) = -1 ENOSPC (No space left on device)',
    ])
    assert delta_bench.target_writes(trace, "/dev/b") == 4096 + 8192 + 60


def test_requests_per_second_are_the_most_that_began_within_one_second() -> None:
    def at(t: float) -> Served:
        return Served(None, 206, 0, 1, at=t)

    assert delta_bench.per_second([]) == 0
    assert delta_bench.per_second([at(t) for t in (0.0, 0.5, 0.99, 1.0, 1.2, 5.0)]) == 4


def result(ours: int, theirs: int, fine: int, extra: int = 0, written: Tuple[int, int] = (100, 40)) -> SpecResult:
    r = SpecResult("f1", image_bytes=100 << 20, files=10, zstd9=1000)
    r.rows = {"compatible-cached": Row("otad", ours, 2, ok=True, rss_kB=30000, per_s=2, written=written[0]),
              "swupdate-compatible": Row("Debian swupdate", theirs, 1, ok=True),
              "fine": Row("otad fine", fine, 3, ok=True, rss_kB=30000),
              "identical-fine": Row("identical", 500 + extra, 0 if not extra else 1, ok=True, head=500),
              "inplace-v1": Row("in place", ours, 2, ok=True, written=written[1], in_place=written[0] - written[1])}
    return r


@pytest.mark.parametrize("ours, fine, extra, written, misses", [
    (102, 100, 0, (100, 40), []), (103, 100, 0, (100, 40), ["within 2 %"]), (100, 101, 0, (100, 40), ["≤ 10 %"]),
    (100, 100, 1025, (100, 40), ["head + 1 KiB"]), (100, 100, 0, (100, 100), ["not written"])])
def test_the_goal_table_follows_the_numbers(ours: int, fine: int, extra: int, written: Tuple[int, int],
                                            misses: List[str]) -> None:
    lines = delta_bench.goals({"f1": result(ours, 100, fine, extra, written)})
    for m in misses:
        assert any(m in line and "MISS" in line for line in lines), (m, lines)
    assert sum("MISS" in line for line in lines) == len(misses), lines
