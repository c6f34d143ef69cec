"""Chunks by Range from a real goosebit 0.2.12: the self-contained layout, through otad's DDI client.

goosebit serves one artifact per software, so the zck body travels inside the .swu as its
last member and the chunks are fetched from the .swu's own DDI download link (Starlette's
FileResponse: RFC multipart, ranges sorted and merged, 200 above 100 ranges).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from otad.delta import srcindex, zck
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.fetch import MULTIPART, FetchPolicy, RangeFetcher
from otad.delta.plan import Plan
from tests.delta_fixtures import DeltaFixture
from tests.goosebit import Goosebit, goosebit, newc  # noqa: F401 - fixture
from tests.integration.test_goosebit_ddi import new_device, register
from tests.delta_fixtures import ddi_opener, small  # noqa: F401 - fixture


def self_contained_swu(small: DeltaFixture, rev: str) -> bytes:  # noqa: F811
    header = small.header_bytes
    body = small.v2_zck.read_bytes()[len(header):]
    desc = (f'software = {{ version = "2.0.0"; hardware-compatibility = ["{rev}"];\n'
            f'  images = ( {{ filename = "rootfs.ext4"; type = "delta"; device = "/dev/mmcblk0p3";\n'
            f'    sha256 = "{hashlib.sha256(header).hexdigest()}";\n'
            f'    properties = {{ url = "dynamic"; zckfile = "rootfs.ext4.zckbody"; chain = "raw";\n'
            f'                    source = "/dev/mmcblk0p2"; }}; }} ); }};\n').encode()
    return newc([("sw-description", desc), ("rootfs.ext4", header), ("rootfs.ext4.zckbody", body)])


def test_chunks_come_by_range_from_the_swus_own_goosebit_link(goosebit: Goosebit, small: DeltaFixture,  # noqa: F811
                                                               tmp_path: Path) -> None:
    cid, rev, client = new_device(goosebit)
    with client:
        register(client, rev)
        swu = self_contained_swu(small, rev)
        (tmp_path / "delta.swu").write_bytes(swu)
        goosebit.rollout(goosebit.upload(tmp_path / "delta.swu"))
        link = client.poll().deployment
        assert link is not None
        artifact = client.deployment(link).swu_artifact()
        assert artifact.size == len(swu)

        header = zck.parse_header(small.header_bytes)
        body = small.v2_zck.read_bytes()[header.length:]
        shift = swu.index(body[:4096]) - header.length  # the member's data offset, less the header
        with open(small.v1, "rb") as f:
            plan = Plan(header.index, srcindex.match_index(header.index, srcindex.chunk_source(f, small.v1.stat().st_size)))
        fetcher = RangeFetcher(ddi_opener(client), artifact.download_url, artifact.size,
                               policy=FetchPolicy(max_ranges=50), data_prefix=b"\x28\xb5\x2f\xfd")
        decoder, image = ChunkDecoder(header), small.v2.read_bytes()
        got = 0
        for number, stored in fetcher.fetch(header.index, plan.requests(50), shift=shift):
            chunk = header.index[number]
            assert decoder.decode(chunk, stored) == image[chunk.offset:chunk.offset + chunk.length]
            got += 1
    assert got == len(plan.fetched()) > 0
    assert fetcher.stats.mode == MULTIPART and fetcher.stats.fallbacks == ()
    assert fetcher.stats.requests == len(plan.requests(50))
    assert fetcher.stats.body_bytes <= plan.fetch_bytes * 1.02 + 2000
    assert fetcher.etag  # Starlette's: If-Range was sent with it after the first answer
