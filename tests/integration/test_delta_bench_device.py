"""The benchmark's device process (tests/delta_device.py) and its report, on the small fixture: what
`scripts/bench --delta` measures must be a real install, and its verdicts must follow the numbers.

The device process rebuilds v2 from v1 for each source index, fetching from the .swu's own URL
exactly the chunks the plan names (the server's journal agrees with what it counts); an
identical source fetches nothing. The goal table says MISS where a number misses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from otad.delta import libzck, zck
from otad.mkswu import cli as mkswu
from tests import delta_bench
from tests.delta_bench import Row, SpecResult
from tests.delta_fixtures import DeltaFixture, small  # noqa: F401 - fixture
from tests.range_server import RangeServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles(small: DeltaFixture, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:  # noqa: F811
    work = tmp_path_factory.mktemp("bench-device")
    (work / "art").mkdir()
    (work / "art" / "rootfs.ext4").symlink_to(small.v2)
    (work / "sw-description").write_text(delta_bench.template(work / "target", small.v1))
    out = {}
    for profile in ("compatible", "fine"):
        out[profile] = work / profile / "update.swu"
        out[profile].parent.mkdir()
        assert mkswu.main(["-s", str(work / "sw-description"), "-a", str(work / "art"), "-o", str(out[profile]),
                           "--delta", profile]) == 0
    with open(small.v1, "rb") as f, open(work / "v1.zck", "wb") as o:
        libzck.write_zck(f, small.v1.stat().st_size, o, tmpdir=str(work))
    out["v1-header"] = work / "v1.zck"
    return out


def device(bundle: Path, url: str, source: Path, target: Path, mode: str, cached: Optional[Path] = None) -> dict:
    target.write_bytes(b"\x5a" * 4096)
    args = [sys.executable, "-m", "tests.delta_device", str(bundle), url, str(source), str(target), mode]
    out = subprocess.run(args + ([str(cached)] if cached else []), capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("profile, mode", [("compatible", "cached"), ("compatible", "libzck"), ("fine", "fine")])
def test_the_device_process_rebuilds_v2(small: DeltaFixture, bundles: Dict[str, Path], tmp_path: Path,  # noqa: F811
                                        profile: str, mode: str) -> None:
    with RangeServer(bundles[profile].read_bytes(), "starlette") as srv:
        r = device(bundles[profile], srv.url, small.v1, tmp_path / "target", mode,
                   bundles["v1-header"] if mode == "cached" else None)
        sent = sum(s.body_bytes for s in srv.journal)
    assert (tmp_path / "target").read_bytes() == small.v2.read_bytes()
    header = zck.parse_header(small.header_bytes) if profile == "compatible" else None
    assert 0 < r["fetched_chunks"] < r["chunks"] and r["requests"] == len(srv.journal) <= 4
    assert r["body_bytes"] == sent and r["payload_bytes"] == r["fetch_bytes"] and r["fallbacks"] == []
    assert r["head"] < r["header_bytes"] + 8192  # sw-description and the header: the chunk data is not read
    if header is not None:
        assert r["header_bytes"] == header.length and r["chunks"] == len(header.index)


def test_an_identical_source_fetches_nothing(small: DeltaFixture, bundles: Dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    with RangeServer(bundles["fine"].read_bytes(), "starlette") as srv:
        r = device(bundles["fine"], srv.url, small.v2, tmp_path / "target", "fine")
        assert srv.journal == []
    assert r["fetched_chunks"] == r["requests"] == r["body_bytes"] == 0
    assert (tmp_path / "target").read_bytes() == small.v2.read_bytes()


def result(ours: int, theirs: int, fine: int, extra: int = 0) -> SpecResult:
    r = SpecResult("f1", image_bytes=100 << 20, files=10, zstd9=1000)
    r.rows = {"compatible-cached": Row("otad", ours, 2, ok=True, rss_kB=30000),
              "swupdate-compatible": Row("Debian swupdate", theirs, 1, ok=True),
              "fine": Row("otad fine", fine, 3, ok=True, rss_kB=30000),
              "identical-fine": Row("identical", 500 + extra, 0 if not extra else 1, ok=True, head=500)}
    return r


@pytest.mark.parametrize("ours, fine, extra, misses", [
    (102, 100, 0, []), (103, 100, 0, ["within 2 %"]), (100, 101, 0, ["≤ 10 %"]), (100, 100, 1025, ["head + 1 KiB"])])
def test_the_goal_table_follows_the_numbers(ours: int, fine: int, extra: int, misses: List[str]) -> None:
    lines = delta_bench.goals({"f1": result(ours, 100, fine, extra)})
    for m in misses:
        assert any(m in line and "MISS" in line for line in lines), (m, lines)
    assert sum("MISS" in line for line in lines) == len(misses), lines
