"""docs/deploying.md's "Publishing a delta release", step by step, as far as it can run here.

goosebit (a real 0.2.12): `otad mkswu --delta fine` makes the self-contained bundle, goosebit
takes it as one software and rolls it out, and a device polling through otad's DDI client gets
one .swu whose chunks it fetches by Range from that same link (multipart, Starlette's dialect),
rebuilding v2 from v1. hawkBit (the DDI fake; a real hawkBit is Java and not packaged): the two
artifacts of `--delta-layout artifact` in one deployment — otad picks the .swu, the chunks come
from the .zck artifact's own link — and the self-contained bundle alone. The fake answers single
ranges only, so the fetcher asks for single ranges there. The device side proper (`otad run`
installing the release) is the delta wiring's; these tests end where it begins: the chunks a
device needs, from the link the server gave it, decoded to v2 byte for byte.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from otad.delta import srcindex, zck
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.fetch import MULTIPART, SINGLE, FetchPolicy, RangeFetcher
from otad.delta.plan import Plan
from otad.hawkbit.ddi import Artifact, DdiClient, HawkbitSettings
from otad.mkswu import cli as mkswu
from otad.swu.cpio import CpioReader
from tests.delta_fixtures import DeltaFixture, ddi_opener, small  # noqa: F401 - fixture
from tests.goosebit import Goosebit, goosebit  # noqa: F401 - fixture
from tests.hawkbit_fakes import DdiFake
from tests.integration.test_goosebit_ddi import new_device, register
from tests.pki import Pki

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def template(rev: str) -> str:
    """docs/deploying.md's template: the rootfs as a delta image of both slots."""
    images = []
    for mode, device, source in (("copy1", "/dev/mmcblk0p2", "/dev/mmcblk0p3"),
                                 ("copy2", "/dev/mmcblk0p3", "/dev/mmcblk0p2")):
        images.append(f'    {mode} = {{ images = ( {{ filename = "rootfs.ext4"; type = "delta"; device = "{device}";\n'
                      f'        properties = {{ chain = "raw"; source = "{source}"; max-ranges = "50"; }}; }} ); }};\n')
    return (f'software = {{\n  version = "2.0.1";\n  hardware-compatibility = [ "{rev}" ];\n  stable = {{\n'
            + "".join(images) + "  };\n};\n")


def build(tmp_path: Path, fixture: DeltaFixture, pki: Pki, rev: str, *args: str) -> Path:  # noqa: F811
    art = tmp_path / "artifacts"
    art.mkdir()
    (art / "rootfs.ext4").symlink_to(fixture.v2)
    (tmp_path / "sw-description").write_text(template(rev))
    out = tmp_path / "release" / "update-2.0.1.swu"
    out.parent.mkdir()
    assert mkswu.main(["-s", str(tmp_path / "sw-description"), "-a", str(art), "-o", str(out),
                       "-k", f"CMS,{pki.signer_key},{pki.signer_cert}", *args]) == 0
    return out


def header_and_shift(bundle: Path, served_whole_zck: bool) -> Tuple[zck.ZckHeader, int]:
    """The zck header member and where its chunks sit in the served file (the .zck or the .swu)."""
    with open(bundle, "rb") as f:
        reader = CpioReader(f)
        header: Optional[zck.ZckHeader] = None
        for m in reader:
            if m.name == "rootfs.ext4":
                header = zck.parse_header(m.read_all(1 << 25))
            elif m.name == "rootfs.ext4.zckbody":
                assert header is not None
                return header, reader.bytes_read - header.length
    assert header is not None and served_whole_zck
    return header, 0


def fetch_image(client: DdiClient, artifact: Artifact, header: zck.ZckHeader, shift: int, v1: Path,
                policy: FetchPolicy) -> Tuple[bytes, RangeFetcher]:
    """v2 as a device rebuilds it: chunks v1 holds from v1, the rest by Range from `artifact`."""
    with open(v1, "rb") as f:
        plan = Plan(header.index, srcindex.match_fine(header.index, f, v1.stat().st_size)
                    if header.index.uniform_length() else srcindex.match_index(
                        header.index, srcindex.chunk_source(f, v1.stat().st_size)))
    assert 0 < len(plan.fetched()) < len(header.index) // 4
    fetcher = RangeFetcher(ddi_opener(client), artifact.download_url, artifact.size, policy=policy,
                           data_prefix=ZSTD_MAGIC)
    fetched = dict(fetcher.fetch(header.index, plan.requests(policy.max_ranges), shift=shift))
    decoder, source, parts = ChunkDecoder(header), v1.read_bytes(), []
    for i, offset in enumerate(plan.match.offsets):
        c = header.index[i]
        parts.append(source[offset:offset + c.length] if offset >= 0 else decoder.decode(c, fetched.pop(i)))
    assert fetched == {}
    return b"".join(parts), fetcher


def test_goosebit_self_contained_release(goosebit: Goosebit, small: DeltaFixture, pki: Pki,  # noqa: F811
                                         tmp_path: Path) -> None:
    cid, rev, client = new_device(goosebit)
    bundle = build(tmp_path, small, pki, rev, "--delta", "fine")
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]  # one file to upload
    goosebit.rollout(goosebit.upload(bundle))
    with client:
        register(client, rev)
        link = client.poll().deployment
        assert link is not None
        artifact = client.deployment(link).swu_artifact()
        assert (artifact.size, artifact.sha1) == (bundle.stat().st_size, hashlib.sha1(bundle.read_bytes()).hexdigest())
        header, shift = header_and_shift(bundle, served_whole_zck=False)
        image, fetcher = fetch_image(client, artifact, header, shift, small.v1, FetchPolicy(max_ranges=50))
    assert image == small.v2.read_bytes()
    assert fetcher.stats.mode == MULTIPART and fetcher.stats.fallbacks == () and fetcher.stats.requests <= 4


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f
    assert not f.server_errors, f.server_errors[0]


@pytest.mark.parametrize("layout", ["artifact", "self-contained"])
def test_hawkbit_release(fake: DdiFake, small: DeltaFixture, pki: Pki, tmp_path: Path, layout: str) -> None:  # noqa: F811
    bundle = build(tmp_path, small, pki, "1.0", "--delta", "compatible", "--delta-layout", layout)
    files = sorted(p.name for p in bundle.parent.iterdir())
    extra: List[Tuple[str, bytes]] = []
    if layout == "artifact":
        assert files == ["rootfs.ext4.zck", bundle.name]
        extra = [("rootfs.ext4.zck", (bundle.parent / "rootfs.ext4.zck").read_bytes())]
    else:
        assert files == [bundle.name]
    fake.offer("7", bundle.read_bytes(), filename=bundle.name, version="2.0.1", extra_artifacts=extra)
    with DdiClient(HawkbitSettings(url=fake.url, controller_id=fake.controller_id, read_timeout_s=10.0)) as client:
        link = client.poll().deployment
        assert link is not None
        deployment = client.deployment(link)
        assert deployment.swu_artifact().filename == bundle.name  # the .zck is not taken for the bundle
        by_name = {a.filename: a for c in deployment.chunks for a in c.artifacts}
        header, shift = header_and_shift(bundle, served_whole_zck=layout == "artifact")
        artifact = by_name["rootfs.ext4.zck" if layout == "artifact" else bundle.name]
        image, fetcher = fetch_image(client, artifact, header, shift, small.v1,
                                     FetchPolicy(max_ranges=50, multipart=False, min_interval_s=0))
    assert image == small.v2.read_bytes()
    assert fetcher.stats.mode == SINGLE and fetcher.stats.fallbacks == ()
    assert fetcher.stats.body_bytes == fetcher.stats.payload_bytes
