"""`otad install` of delta bundles made by swugenerator (L1: a static chunk URL), on an A/B device
whose running slot holds v1: what it fetches, what it refuses, how it degrades.

The device is files (DeltaDevice in tests/delta_fixtures.py); the chunk server is tests/range_server.py
in the dialects of goosebit (Starlette) and hawkBit, misbehaving where a test says so.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from otad.delta import libzck, slotindex, srcindex, zck
from otad.delta.plan import Plan
from otad.install.status import TargetState, TargetStatusStore
from tests.bundles import signed_members, write_bundle
from tests.conftest import one_error, run_cli
from tests.delta_fixtures import (DeltaDevice, DeltaFixture, ab_delta_template, delta_device, small,  # noqa: F401
                                  swugenerator_delta)
from tests.pki import Pki
from tests.range_server import Misbehave, RangeServer


@pytest.fixture(scope="module")
def served(small: DeltaFixture) -> Iterator[RangeServer]:  # noqa: F811
    with RangeServer(small.v2_zck.read_bytes(), "starlette") as srv:
        yield srv


@pytest.fixture
def server(served: RangeServer, small: DeltaFixture) -> RangeServer:  # noqa: F811
    served.journal.clear()
    served.script.clear()
    served.data = small.v2_zck.read_bytes()
    served.dialect = "starlette"
    served.rate_bps = None
    return served


@pytest.fixture(scope="module")
def bundle(small: DeltaFixture, pki: Pki, served: RangeServer,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    return swugenerator_delta(small, tmp_path_factory.mktemp("bundle") / "delta.swu", pki,
                              ab_delta_template(f'url = "{served.url}"; max-ranges = "50";'))


@pytest.fixture
def dev(tmp_path: Path, small: DeltaFixture, pki: Pki) -> DeltaDevice:  # noqa: F811
    return delta_device(tmp_path / "dev", small, pki)


def otad(dev: DeltaDevice, capsys: pytest.CaptureFixture[str], *args: object) -> Tuple[int, str, str]:
    return run_cli(["--config", dev.config, *args], capsys)


def expected_plan(small: DeltaFixture) -> Plan:  # noqa: F811
    target = zck.parse_header(small.header_bytes).index
    with open(small.v1, "rb") as f:
        return Plan(target, srcindex.match_index(target, srcindex.chunk_source(f, small.v1.stat().st_size)))


def ranges_asked(server: RangeServer) -> List[str]:
    return [s.range or "" for s in server.journal]


def test_a_swugenerator_delta_installs_v2_fetching_exactly_the_planned_ranges(
        dev: DeltaDevice, bundle: Path, server: RangeServer, small: DeltaFixture,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = otad(dev, capsys, "install", bundle)
    assert rc == 0, err
    assert dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()
    assert dev.slot("mmcblk0p2").read_bytes() == small.v1.read_bytes()
    assert (dev.env()["rootpart"], dev.env()["upgrade_available"]) == ("3", "1")
    plan = expected_plan(small)
    assert ranges_asked(server) == ["bytes=" + ",".join(r.spec() for r in q) for q in plan.requests(50)]
    assert server.body_bytes <= plan.fetch_bytes * 1.02 + 1024
    line = f"reused {plan.reused_bytes / 1e6:.1f} MB, fetched {server.body_bytes / 1e6:.1f} MB in " \
           f"{len(plan.requests(50))} request"
    assert line in out, out
    assert re.search(r" [5-6]\d% rootfs.ext4 \(", err) and "100% rootfs.ext4 (" in err  # progress in planned bytes
    record = TargetStatusStore(str(dev.state / "targets.json")).get(str(dev.slot("mmcblk0p3")))
    assert record is not None and (record.state, record.sha256) == \
        (TargetState.INSTALLED, hashlib.sha256(small.header_bytes).hexdigest())


def test_the_same_image_again_is_neither_fetched_nor_written(dev: DeltaDevice, bundle: Path, server: RangeServer,
                                                             small: DeltaFixture,  # noqa: F811
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert otad(dev, capsys, "install", "--no-switch", bundle)[0] == 0
    server.journal.clear()
    before = dev.slot("mmcblk0p3").stat().st_mtime_ns
    rc, out, err = otad(dev, capsys, "install", "--no-switch", bundle)
    assert rc == 0, err
    assert server.requests == 0
    assert "fetched 0.0 kB in 0 requests; 25.2 MB already in place, not written" in out, out
    assert dev.slot("mmcblk0p3").stat().st_mtime_ns == before  # not one byte written
    assert dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()


@pytest.fixture(scope="module")
def v1_bundle(small: DeltaFixture, pki: Pki, served: RangeServer,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, bytes]:
    """v1 as a delta bundle (into slot a, from slot b) and its .zck: the way back."""
    work = tmp_path_factory.mktemp("v1")
    back = DeltaFixture(work, small.v2, small.v1, work / "v1.ext4.zck", work / "v1.hdr")
    swu = swugenerator_delta(back, work / "v1.swu", pki,
                             ab_delta_template(f'url = "{served.url}"; max-ranges = "50";', version="3.0.0"))
    return swu, (work / "v1.swu.d" / "artifacts" / "rootfs.ext4.zck").read_bytes()  # swugenerator leaves it there


def boot_b_and_wipe_a(dev: DeltaDevice) -> None:
    dev.boot("3")
    dev.slot("mmcblk0p2").write_bytes(b"\x5a" * dev.slot("mmcblk0p2").stat().st_size)


def test_the_next_delta_reads_the_running_slots_cached_index_without_chunking_it(
        tmp_path: Path, bundle: Path, v1_bundle: Tuple[Path, bytes], server: RangeServer, small: DeltaFixture,  # noqa: F811
        pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    dev = delta_device(tmp_path / "dev", small, pki)
    dev.config.write_text(dev.config.read_text().replace(
        "delta = { min_interval_s = 0; };", "delta = { min_interval_s = 0; libzck = false; python_index = false; };"))
    # slot a was not installed by otad: with neither libzck nor the Python chunker every chunk is fetched
    rc, out, err = otad(dev, capsys, "install", "--no-switch", bundle)
    assert rc == 0, err
    assert "reused 0.0 kB" in out and dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()
    assert slotindex.load(str(dev.state), str(dev.slot("mmcblk0p3")), "none") is None  # bound to the record
    boot_b_and_wipe_a(dev)
    swu, v1_zck = v1_bundle
    server.data, server.journal[:] = v1_zck, []
    rc, out, err = otad(dev, capsys, "install", "--no-switch", swu)
    assert rc == 0, err
    assert dev.slot("mmcblk0p2").read_bytes() == small.v1.read_bytes()
    assert "(25165824 bytes, cached index)" in err
    target = zck.parse_header(v1_zck, exact=False).index
    with open(small.v2, "rb") as f:
        plan = Plan(target, srcindex.match_index(target, srcindex.chunk_source(f, small.v2.stat().st_size)))
    assert server.body_bytes <= plan.fetch_bytes * 1.02 + 1024  # as good as chunking slot b itself


def test_source_chunks_that_changed_since_they_were_indexed_are_fetched_instead(
        tmp_path: Path, bundle: Path, v1_bundle: Tuple[Path, bytes], server: RangeServer, small: DeltaFixture,  # noqa: F811
        pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    dev = delta_device(tmp_path / "dev", small, pki)
    assert otad(dev, capsys, "install", "--no-switch", bundle)[0] == 0
    boot_b_and_wipe_a(dev)
    swu, v1_zck = v1_bundle
    target = zck.parse_header(v1_zck, exact=False).index
    match = srcindex.match_index(target, zck.parse_header(small.header_bytes).index)
    uses: "dict[int, int]" = {}
    for i in range(len(target)):
        uses[match.offsets[i]] = uses.get(match.offsets[i], 0) + 1
    once = [o for o, n in sorted(uses.items()) if o >= 0 and n == 1]
    with open(dev.slot("mmcblk0p3"), "r+b") as f:  # the running slot changes after it was indexed
        for offset in once[5:8]:
            f.seek(offset + 100)
            f.write(b"\xee")
    server.data, server.journal[:] = v1_zck, []
    rc, out, err = otad(dev, capsys, "install", "--no-switch", swu)
    assert rc == 0, err
    assert dev.slot("mmcblk0p2").read_bytes() == small.v1.read_bytes()
    assert "3 chunks changed in the source, fetched instead" in out
    assert server.requests == len(Plan(target, match).requests(50)) + 3, err


def test_the_source_must_be_the_running_slot_and_not_the_target(tmp_path: Path, dev: DeltaDevice, server: RangeServer,
                                                                 small: DeltaFixture, pki: Pki,  # noqa: F811
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (dev.dev / "mmcblk0p1").write_bytes(small.v1.read_bytes())
    for source, message in (("/dev/mmcblk0p3", "is the device the image is written to"),
                            ("/dev/mmcblk0p1", "is not the running slot a (/dev/mmcblk0p2)")):
        swu = swugenerator_delta(small, tmp_path / f"bad{source[-1]}.swu", pki,
                                 ab_delta_template(f'url = "{server.url}";', copy2_source=source))
        rc, _, err = otad(dev, capsys, "install", swu)
        assert rc == 3 and message in one_error(err), err
        assert dev.slot("mmcblk0p3").read_bytes() == b"\x5a" * small.v2.stat().st_size
    assert server.requests == 0


def test_a_header_other_than_the_signed_one_is_refused_before_the_first_byte(
        tmp_path: Path, dev: DeltaDevice, bundle: Path, server: RangeServer, small: DeltaFixture,  # noqa: F811
        pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    header = bytearray(small.header_bytes)
    header[-40] ^= 1
    desc = ab_delta_template(f'url = "{server.url}";').replace(
        'type = "delta";', f'type = "delta"; sha256 = "{hashlib.sha256(small.header_bytes).hexdigest()}";')
    swu = write_bundle(tmp_path / "x.swu", signed_members(desc.encode(), [], pki, tmp_path) +
                       [("rootfs.ext4", bytes(header))])
    rc, _, err = otad(dev, capsys, "install", swu)
    assert rc == 4 and "the signed sw-description says" in one_error(err)
    assert dev.slot("mmcblk0p3").read_bytes() == b"\x5a" * small.v2.stat().st_size
    assert dev.env()["rootpart"] == "2" and server.requests == 0
    assert TargetStatusStore(str(dev.state / "targets.json")).get(str(dev.slot("mmcblk0p3"))) is None


def test_tampered_chunk_data_fails_closed_and_the_slot_is_not_armed(dev: DeltaDevice, bundle: Path,
                                                                    server: RangeServer, small: DeltaFixture,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    plan = expected_plan(small)
    chunk = plan.target[plan.fetched()[len(plan.fetched()) // 2]]
    data = bytearray(small.v2_zck.read_bytes())
    data[chunk.start + chunk.comp_length // 2] ^= 0x40
    server.data = bytes(data)
    rc, _, err = otad(dev, capsys, "install", bundle)
    assert rc == 4 and f"chunk {chunk.number}: checksum of the stored bytes" in one_error(err), err
    assert dev.env()["rootpart"] == "2" and dev.env()["upgrade_available"] == "0"
    record = TargetStatusStore(str(dev.state / "targets.json")).get(str(dev.slot("mmcblk0p3")))
    assert record is not None and record.state is TargetState.FAILED
    assert slotindex.load(str(dev.state), str(dev.slot("mmcblk0p3")), "x") is None


@pytest.mark.parametrize("dialect, faults, fallback", [
    ("hawkbit", [], None),
    ("hawkbit-old", [], None),
    ("starlette", [Misbehave(ignore_range=True)], "HTTP 200 to"),
    ("hawkbit", [Misbehave(garble=True)], "unreadable multipart body"),
    ("hawkbit-old", [Misbehave(drop_after=300_000)], None),
    ("starlette", [Misbehave(ignore_range=True)] * 8, "the server ignores Range"),
    # issue 12's misbehaving server, all in one install: a 200, old hawkBit's framing, a dropped connection
    ("starlette", [Misbehave(ignore_range=True), Misbehave(dialect="hawkbit-old"), Misbehave(drop_after=100_000)],
     "HTTP 200 to"),
])
def test_misbehaving_servers_cost_bytes_never_the_install(dev: DeltaDevice, bundle: Path, server: RangeServer,
                                                          small: DeltaFixture, dialect: str,  # noqa: F811
                                                          faults: List[Misbehave], fallback: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    server.dialect, server.script[:] = dialect, list(faults)
    rc, out, err = otad(dev, capsys, "install", bundle)
    assert rc == 0, err
    assert dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()
    if fallback:
        assert fallback in err
        summary = next(line for line in out.splitlines() if "reused " in line)
        assert fallback in summary and re.search(
            r": fetched by (fewer ranges a request|single ranges|one sequential read)$", summary), summary
    fetched = re.search(r"fetched ([0-9.]+) MB in (\d+) request", out)
    assert fetched and int(fetched.group(2)) == server.requests
    # what otad read: what the server sent, less what was still on the way when otad hung up
    assert float(fetched.group(1)) <= server.body_bytes / 1e6 + 0.05
    if not faults:
        assert abs(float(fetched.group(1)) - server.body_bytes / 1e6) < 0.06
    assert server.body_bytes <= len(small.v2_zck.read_bytes()) * 1.05 + len(server.data) * len(faults)


def test_without_libzck_the_python_chunker_indexes_the_source_where_enabled(
        dev: DeltaDevice, bundle: Path, server: RangeServer, small: DeltaFixture,  # noqa: F811
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libzck, "available", lambda: False)
    dev.config.write_text(dev.config.read_text().replace("delta = { min_interval_s = 0; };",
                                                         "delta = { min_interval_s = 0; python_index = true; };"))
    rc, out, err = otad(dev, capsys, "install", bundle)
    assert rc == 0, err
    assert "pure-Python chunker" in err
    assert dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()
    assert server.body_bytes <= expected_plan(small).fetch_bytes * 1.02 + 1024


def test_a_dry_run_fetches_and_checks_every_chunk_but_writes_nothing(dev: DeltaDevice, bundle: Path,
                                                                     server: RangeServer,
                                                                     small: DeltaFixture,  # noqa: F811
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = otad(dev, capsys, "install", "-n", bundle)
    assert rc == 0, err
    assert "verified (dry run, nothing written)" in out and server.requests == 1
    assert dev.slot("mmcblk0p3").read_bytes() == b"\x5a" * small.v2.stat().st_size
    assert not (dev.state / "targets.json").exists() or "mmcblk0p3" not in (dev.state / "targets.json").read_text()


def test_otad_info_shows_the_plan(dev: DeltaDevice, bundle: Path, server: RangeServer, small: DeltaFixture,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    plan = expected_plan(small)
    rc, out, err = otad(dev, capsys, "info", bundle)
    assert rc == 0, err
    assert f"reuse {plan.reused_bytes / 1e6:.1f} MB, fetch {plan.fetch_bytes / 1e6:.1f} MB in 1 request" in out, out
    assert server.requests == 0



@pytest.mark.parametrize("right", [True, False])
def test_image_sha256_checks_the_whole_assembled_image(tmp_path: Path, dev: DeltaDevice, server: RangeServer,
                                                       small: DeltaFixture, pki: Pki, right: bool,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    image_sha256 = hashlib.sha256(small.v2.read_bytes() if right else b"another image").hexdigest()
    desc = ab_delta_template(f'url = "{server.url}"; image-sha256 = "{image_sha256}";').replace(
        'type = "delta";', f'type = "delta"; sha256 = "{hashlib.sha256(small.header_bytes).hexdigest()}";')
    swu = write_bundle(tmp_path / "x.swu", signed_members(desc.encode(), [], pki, tmp_path) +
                       [("rootfs.ext4", small.header_bytes)])
    rc, _, err = otad(dev, capsys, "install", swu)
    if right:
        assert rc == 0, err
        return
    assert rc == 4 and "properties.image-sha256: the assembled image hashes to" in one_error(err)
    assert dev.env()["rootpart"] == "2"
    record = TargetStatusStore(str(dev.state / "targets.json")).get(str(dev.slot("mmcblk0p3")))
    assert record is not None and record.state is TargetState.FAILED
