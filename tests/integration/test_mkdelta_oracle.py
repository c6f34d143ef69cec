"""otad mkswu's delta bundles judged by the reference tools, on the rootfs fixture of issue 12.

- `compatible`, url layout: what swugenerator makes from the same template and artifacts — the
  header member and the .zck byte for byte, sw-description the same but otad's image-sha256.
- `fine`, url layout: Debian's swupdate 2022.12 delta handler installs it byte-identically from
  a loopback Range server; it fetches exactly the requests otad's planner cuts under SWUpdate's
  rule (its own content-defined source index, last chunk missing as in 2022.12), which is more
  than it fetches for the compatible bundle: a fine bundle still works on SWUpdate, it only
  downloads more.
- self-contained: swupdate full-installs the MODE-full selection (the body member as a raw zstd
  image) byte-identically.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List

import pytest

from otad import libconfig
from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from otad.mkswu import cli as mkswu
from otad.mkswu.delta import FINE_KIB
from otad.swu.cpio import CpioReader
from tests.delta_fixtures import DeltaFixture, delta_bundle, delta_template, small  # noqa: F401 - fixture
from tests.integration.test_swupdate_oracle import run_swupdate
from tests.pki import Pki
from tests.range_server import RangeServer

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(shutil.which("swupdate") is None, reason="Debian swupdate not installed")]

PAD = 8 << 20  # swupdate 2022.12's IPC race on tiny bundles (tests/delta_fixtures.py)


def members(bundle: Path) -> List[tuple]:
    with open(bundle, "rb") as f:
        return [(m.name, m.read_all(1 << 30)) for m in CpioReader(f)]


def description(bundle: Path) -> dict:
    return libconfig.loads(dict(members(bundle))["sw-description"], source=str(bundle))


def mkswu_bundle(work: Path, template: str, fixture: DeltaFixture, pki: Pki, *args: str) -> Path:  # noqa: F811
    art = work / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fixture.v2, art / "rootfs.ext4")
    (art / "pad.bin").write_bytes(bytes(PAD))
    (work / "sw-description.in").write_text(template)
    out = work / "out" / "delta.swu"
    out.parent.mkdir(exist_ok=True)
    assert mkswu.main(["-s", str(work / "sw-description.in"), "-a", str(art), "-o", str(out),
                       "-k", f"CMS,{pki.signer_key},{pki.signer_cert}", *args]) == 0
    return out


def without_image_sha256(tree: dict) -> dict:
    props = tree["software"]["stable"]["delta"]["images"][0]["properties"]
    assert re.fullmatch(r"[0-9a-f]{64}", props.pop("image-sha256"))
    return tree


def test_compatible_is_what_swugenerator_makes(small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    url, target, source = "http://127.0.0.1:1/v2.ext4.zck", tmp_path / "slot-b", small.v1
    theirs = delta_bundle(small, tmp_path / "gen" / "delta.swu", pki, url, source, target)
    ours = mkswu_bundle(tmp_path / "mk", delta_template(url, source, target), small, pki,
                        "--delta", "compatible", "--delta-layout", "url")
    assert (ours.parent / "v2.ext4.zck").read_bytes() == small.v2_zck.read_bytes()
    a, b = members(ours), members(theirs)
    assert [n for n, _ in a] == [n for n, _ in b] == ["sw-description", "sw-description.sig", "rootfs.ext4",
                                                       "pad.bin"]
    assert a[2:] == b[2:] and a[2][1] == small.header_bytes
    assert without_image_sha256(description(ours)) == description(theirs)


def test_swupdate_installs_a_fine_bundle_downloading_more(small: DeltaFixture, pki: Pki,  # noqa: F811
                                                          tmp_path: Path) -> None:
    target, max_ranges = tmp_path / "slot-b", 90
    target.write_bytes(b"\x5a" * small.v2.stat().st_size)
    with RangeServer(b"", "starlette") as srv:
        bundle = mkswu_bundle(tmp_path, delta_template(srv.url, small.v1, target, max_ranges=max_ranges), small,
                              pki, "--delta", "fine", "--delta-layout", "url")
        srv.data = (bundle.parent / "file").read_bytes()
        ok, log = run_swupdate(bundle, pki.ca_pem, ["-e", "stable,delta"])
        assert ok, log[-3000:]
        journal = [s.range for s in srv.journal if s.status == 206]
    assert target.read_bytes() == small.v2.read_bytes()
    header = zck.parse_header(dict(members(bundle))["rootfs.ext4"])
    assert header.index.uniform_length() == FINE_KIB << 10
    with open(small.v1, "rb") as f:
        source = srcindex.chunk_source(f, small.v1.stat().st_size)
    size = source.digest_size  # swupdate 2022.12 never indexes its source's last chunk
    legacy = zck.ChunkIndex.of_source(list(source.lengths)[:-1], source.digests_uncompressed[:-size])
    plan = Plan(header.index, srcindex.match_index(header.index, legacy))
    want = ["bytes=" + ",".join(r.spec() for r in q) for q in plan.requests(max_ranges)]
    assert journal[:len(want)] == want, (journal, want)
    downloaded = re.search(r"Total bytes to be downloaded\s*:\s*(\d+)", log)
    assert downloaded and int(downloaded.group(1)) == plan.fetch_bytes
    compatible = zck.parse_header(small.header_bytes).index
    assert plan.fetch_bytes > Plan(compatible, srcindex.match_index(compatible, legacy)).fetch_bytes


def test_swupdate_full_installs_the_self_contained_bundle(small: DeltaFixture, pki: Pki,  # noqa: F811
                                                          tmp_path: Path) -> None:
    target = tmp_path / "slot-b"
    target.write_bytes(b"\x5a" * small.v2.stat().st_size)
    template = re.sub(r'\s*url = "[^"]*";', "", delta_template("unused", small.v1, target))
    bundle = mkswu_bundle(tmp_path, template, small, pki, "--delta", "fine")
    names = [n for n, _ in members(bundle)]
    assert names == ["sw-description", "sw-description.sig", "rootfs.ext4", "pad.bin", "rootfs.ext4.zckbody"]
    assert description(bundle)["software"]["stable"]["delta-full"]["images"][0]["filename"] == "rootfs.ext4.zckbody"
    ok, log = run_swupdate(bundle, pki.ca_pem, ["-e", "stable,delta-full"])
    assert ok, log[-3000:]
    assert target.read_bytes() == small.v2.read_bytes()
