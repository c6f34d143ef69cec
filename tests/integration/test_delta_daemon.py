"""Delta deployments through `otad run` on a simulated Pi whose slot a runs v1.

L2 (SWUpdate 2026.05's layout: the .swu and the .zck as two artifacts of one deployment) against
the DDI fake, in both multipart dialects of hawkBit, through the DDI client's auth; L3 (the
self-contained .swu, chunks by Range from its own link) against the fake and a real goosebit.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator, List

import pytest

from otad.delta import srcindex, zck
from otad.delta.plan import Plan
from otad.sim.device import SimDevice
from tests.bundles import signed_members, write_bundle
from tests.delta_fixtures import DeltaFixture, ab_delta_template, self_contained, small, swugenerator_delta  # noqa: F401
from tests.goosebit import Goosebit, goosebit  # noqa: F401 - fixture
from tests.hawkbit_fakes import DdiFake, FaultProxy, Feedback
from tests.pki import Pki
from tests.unit.hawkbit.test_agent import hawkbit_section

ACTION = "41"


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f
    assert not f.server_errors, f.server_errors[0]


def make_sim(root: Path, small: DeltaFixture, pki: Pki, url: str, delta: str = "", **hawkbit: object) -> SimDevice:  # noqa: F811
    sim = SimDevice.create(root, slot_size=small.v1.stat().st_size, image_a=small.v1, trust_file=pki.ca_pem,
                           extra_config=hawkbit_section(url, **hawkbit) + f"delta = {{ min_interval_s = 0; {delta} }};")
    sim.boot(healthy=lambda _head: True)  # slot a runs v1 (an ext4 image, no simulated kernel marker)
    return sim


def run_once(sim: SimDevice) -> str:
    done = sim.otad("run", "--once", "--no-reboot", timeout_s=180)
    assert done.returncode == 0, done.stderr
    return done.stderr


def plan_of(small: DeltaFixture) -> Plan:  # noqa: F811
    target = zck.parse_header(small.header_bytes).index
    with open(small.v1, "rb") as f:
        return Plan(target, srcindex.match_index(target, srcindex.chunk_source(f, small.v1.stat().st_size)))


def details(feedback: List[Feedback]) -> List[str]:
    return [line for f in feedback for line in f.body["status"].get("details", [])]


def armed_with_v2(sim: SimDevice, small: DeltaFixture) -> bool:  # noqa: F811
    env = sim.env()
    return sim.read_slot("b", small.v2.stat().st_size) == small.v2.read_bytes() and \
        (env["rootpart"], env["upgrade_available"]) == ("3", "1")


@pytest.mark.parametrize("dialect", ["hawkbit", "hawkbit-old"])
def test_a_two_artifact_delta_comes_by_range_through_the_ddi_clients_auth(
        dialect: str, fake: DdiFake, small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    fake.multipart = dialect
    fake.auth = "TargetToken t0ken"
    (tmp_path / "token").write_text("t0ken\n")
    swu = swugenerator_delta(small, tmp_path / "update.swu", pki, ab_delta_template(
        'url = "dynamic"; zckfile = "rootfs.ext4.zck"; max-ranges = "20";'))
    fake.offer(ACTION, swu.read_bytes(), version="2.0.0",
               extra_artifacts=[("rootfs.ext4.zck", small.v2_zck.read_bytes())])
    sim = make_sim(tmp_path / "sim", small, pki, fake.url, auth="target_token", token_file=str(tmp_path / "token"))
    log = run_once(sim)
    assert armed_with_v2(sim, small), log[-3000:]
    plan = plan_of(small)
    chunk_requests = [r for r in fake.requests if r.path.endswith("rootfs.ext4.zck")]
    assert [r.headers.get("Range") for r in chunk_requests] == \
        ["bytes=" + ",".join(r.spec() for r in q) for q in plan.requests(20)]
    assert all(r.headers.get("Authorization") == "TargetToken t0ken" for r in chunk_requests)
    sent = details(fake.feedback_log)
    summary = [line for line in sent if line.startswith("rootfs.ext4: reused 20.9 MB, fetched 1.3 MB in ")]
    assert summary and f"in {len(plan.requests(20))} requests" in summary[0], sent
    assert summary[0] in log  # the same line in the log
    progress = [f.body["status"]["result"].get("progress") for f in fake.feedback_log
                if "planned bytes" in " ".join(f.body["status"].get("details", []))]
    assert progress and progress[-1] == {"cnt": 100, "of": 100}


def test_a_self_contained_delta_ranges_into_its_own_bundle_link(fake: DdiFake, small: DeltaFixture, pki: Pki,  # noqa: F811
                                                                tmp_path: Path) -> None:
    swu = self_contained(small, tmp_path / "update.swu", pki)
    fake.offer(ACTION, swu.read_bytes(), version="2.0.0")
    sim = make_sim(tmp_path / "sim", small, pki, fake.url)
    log = run_once(sim)
    assert armed_with_v2(sim, small), log[-3000:]
    ranges = [r.headers.get("Range", "") for r in fake.requests if r.endpoint == "artifact"]
    stream = [r for r in ranges if "," not in r]  # the bundle read in order, up to its last member...
    assert stream[0] == "bytes=0-16383" and len(stream) <= 3
    head = swu.read_bytes().index(small.v2_zck.read_bytes()[len(small.header_bytes):][:4096])
    assert int(stream[-1].rsplit("-", 1)[1]) + 1 <= head + 1024  # ...and not one kB of it further
    assert len(ranges) - len(stream) == len(plan_of(small).requests(50))  # then its chunks by Range
    assert "is not checked, every chunk written was checked against the signed zchunk header" in log


def test_without_a_usable_source_the_self_contained_bundle_is_read_through_once(
        fake: DdiFake, small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    swu = self_contained(small, tmp_path / "update.swu", pki)
    fake.offer(ACTION, swu.read_bytes(), version="2.0.0")
    sim = make_sim(tmp_path / "sim", small, pki, fake.url, delta="libzck = false;")
    log = run_once(sim)
    assert armed_with_v2(sim, small), log[-3000:]
    ranges = [r.headers.get("Range") or "bytes=0-" for r in fake.requests if r.endpoint == "artifact"]
    starts = [int(r[6:].split("-")[0]) for r in ranges]
    ends = [int(r.split("-")[1]) + 1 for r in ranges[:-1]]
    assert "," not in "".join(ranges) and starts[1:] == ends  # no chunk by Range: the bundle read once, in order
    assert re.search(r"rootfs.ext4: reused [0-9.]+ MB, fetched [0-9.]+ MB with the bundle; [0-9.]+ MB already in place", log), log


def test_goosebit_serves_a_self_contained_delta_by_range(goosebit: Goosebit, small: DeltaFixture, pki: Pki,  # noqa: F811
                                                         tmp_path: Path) -> None:
    controller = "otad-delta-sim-1"
    with FaultProxy(goosebit.base) as proxy:  # counts what the device downloads
        sim = make_sim(tmp_path / "sim", small, pki, proxy.rewrite(goosebit.base), controller_id=controller,
                       read_timeout_s=10, connect_timeout_s=5)
        run_once(sim)  # registers: goosebit offers nothing before the first configData
        swu = self_contained(small, tmp_path / "update.swu", pki, board="rpi0w")
        goosebit.rollout(goosebit.upload(swu), name="otad-delta")
        before = proxy.bytes_down
        log = run_once(sim)
        assert armed_with_v2(sim, small), log[-3000:]
        downloaded = proxy.bytes_down - before
    plan = plan_of(small)
    assert re.search(r"rootfs.ext4: reused 20.9 MB, fetched 1.3 MB in [1-4] requests?", log), log[-2000:]
    head = swu.stat().st_size - (len(small.v2_zck.read_bytes()) - len(small.header_bytes))
    # the bundle's head, the chunks, multipart framing and HTTP headers: nothing of the body streamed
    assert downloaded <= head + plan.fetch_bytes * 1.02 + (16 << 10), (downloaded, head, plan.fetch_bytes)
    assert goosebit.device(controller)["last_state"] == "Running"


def test_two_self_contained_deltas_the_first_body_is_read_through_the_last_fetched_by_range(
        fake: DdiFake, small: DeltaFixture, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    """Bodies are the bundle's last members (delta-layout.md): only the very last can be left for
    Range requests; the ones before it are read from the stream."""
    header = small.header_bytes
    body = small.v2_zck.read_bytes()[len(header):]
    h = hashlib.sha256(header).hexdigest()

    def entry(name: str, device: str) -> str:
        return (f'{{ filename = "{name}"; type = "delta"; device = "{device}"; sha256 = "{h}"; properties: {{ '
                f'url = "dynamic"; zckfile = "{name}.zckbody"; chain = "raw"; source = "/dev/mmcblk0p2"; }}; }}')
    desc = (f'software = {{ version = "2.0.0"; hardware-compatibility: [ "1.0" ]; stable = {{ '
            f'copy2 = {{ images: ( {entry("rootfs.ext4", "/dev/mmcblk0p3")}, {entry("spare.ext4", "/dev/spare")} ); '
            f'}}; }}; }};\n').encode()
    swu = write_bundle(tmp_path / "two.swu", signed_members(desc, [], pki, tmp_path) + [
        ("rootfs.ext4", header), ("spare.ext4", header), ("rootfs.ext4.zckbody", body), ("spare.ext4.zckbody", body)])
    fake.offer(ACTION, swu.read_bytes(), version="2.0.0")
    sim = make_sim(tmp_path / "sim", small, pki, fake.url)
    (sim.layout.dev_dir / "spare").write_bytes(bytes(small.v2.stat().st_size))
    log = run_once(sim)
    assert armed_with_v2(sim, small), log[-3000:]
    assert (sim.layout.dev_dir / "spare").read_bytes() == small.v2.read_bytes()
    assert re.search(r"rootfs.ext4: reused [0-9.]+ MB, fetched [0-9.]+ MB with the bundle", log)
    assert re.search(r"spare.ext4: reused 20.9 MB, fetched 1.3 MB in \d requests?", log)
    ranges = [r.headers.get("Range", "") for r in fake.requests if r.endpoint == "artifact"]
    assert len([r for r in ranges if "," in r]) == len(plan_of(small).requests(50))
