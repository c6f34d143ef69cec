"""Measure the delta machinery on a fixture: bandwidth per profile, indexing speed, memory.

    .venv/bin/python -m tests.delta_bench [small|f1|f1-1g] [--workdir DIR]

Prints one line per measurement and a JSON summary. Bandwidth: bytes a device fetches for
v1 -> v2 (the zck header included) in the `compatible` profile (zck -u -h sha256, what
SWUpdate makes) and the `fine` profile (fixed chunks matched at every 4 KiB source offset),
against `zstd -9` of the whole image. Speed: CPU seconds of chunking + hashing the source
with libzck (ctypes) and in pure Python. Memory: peak RSS of a fresh process that parses the
target header, indexes the source and plans (the device's work before the first byte).
x86 figures: ratios, not Pi Zero numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from otad.delta import libzck, srcindex, zck, zckwriter
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.chunker import FixedChunker
from otad.delta.fetch import FetchPolicy, RangeFetcher
from otad.delta.plan import Plan
from tests import delta_fixtures
from tests.delta_fixtures import DeltaFixture, client_for, ddi_opener
from tests.range_server import RangeServer

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FINE_KIB = [8, 16, 32]


def say(what: str, value: Any) -> None:
    print(f"  {what:<58} {value}", flush=True)


def cpu(fn):  # type: ignore[no-untyped-def]
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def bandwidth(fx: DeltaFixture, work: Path, results: Dict[str, Any]) -> None:
    size = fx.v2.stat().st_size
    zstd_full = len(subprocess.run(["zstd", "-9", "-c", str(fx.v2)], capture_output=True, check=True).stdout)
    results["image_bytes"], results["zstd9_full"], results["zck_bytes"] = size, zstd_full, fx.v2_zck.stat().st_size
    say("image / zstd -9 full / .zck", f"{size:,} / {zstd_full:,} / {fx.v2_zck.stat().st_size:,}")
    header = zck.parse_header(fx.header_bytes)
    with open(fx.v1, "rb") as f:
        plan = Plan(header.index, srcindex.match_index(header.index, srcindex.chunk_source(f, fx.v1.stat().st_size)))
    total = header.length + plan.fetch_bytes
    results["compatible"] = {"header": header.length, "chunks": len(header.index), "fetched_chunks": len(plan.fetched()),
                             "fetch_bytes": plan.fetch_bytes, "total": total, "pct_zstd": 100 * total / zstd_full,
                             "requests_90": len(plan.requests(90)), "requests_50": len(plan.requests(50))}
    say("compatible: header + fetched chunks", f"{header.length:,} + {plan.fetch_bytes:,} "
        f"({len(plan.fetched())} of {len(header.index)} chunks) = {100 * total / zstd_full:.1f} % of zstd -9")
    for kib in FINE_KIB:
        out = work / f"v2.fine{kib}.zck"
        if not out.exists():
            with open(fx.v2, "rb") as f:
                zckwriter.write_zck(f, size, str(out), FixedChunker(kib << 10))
        fine = zck.parse_header(out.read_bytes()[:32 << 20], exact=False)
        with open(fx.v1, "rb") as f:
            (match, seconds) = cpu(lambda: srcindex.match_fine(fine.index, f, fx.v1.stat().st_size))
        p = Plan(fine.index, match)
        total = fine.length + p.fetch_bytes
        results[f"fine{kib}"] = {"header": fine.length, "chunks": len(fine.index), "fetched_chunks": len(p.fetched()),
                                 "fetch_bytes": p.fetch_bytes, "total": total, "pct_zstd": 100 * total / zstd_full,
                                 "zck_bytes": out.stat().st_size, "scan_cpu_s": seconds,
                                 "requests_50": len(p.requests(50))}
        say(f"fine {kib} KiB: header + fetched chunks", f"{fine.length:,} + {p.fetch_bytes:,} "
            f"({len(p.fetched())} of {len(fine.index)}) = {100 * total / zstd_full:.1f} % of zstd -9; "
            f"4 KiB scan {seconds:.2f} s CPU; .zck {out.stat().st_size:,}")
    if "xdelta3" in SKIP:
        return
    xd = work / "v1-v2.xdelta"
    subprocess.run(["xdelta3", "-e", "-9", "-f", "-s", str(fx.v1), str(fx.v2), str(xd)], check=True)
    results["xdelta3"] = xd.stat().st_size
    say("xdelta3 -9 (source-pinned lower bound)", f"{xd.stat().st_size:,} = "
        f"{100 * xd.stat().st_size / zstd_full:.1f} % of zstd -9")


def speed(fx: DeltaFixture, results: Dict[str, Any]) -> None:
    size = fx.v1.stat().st_size
    if libzck.available():
        with open(fx.v1, "rb") as f:
            _, seconds = cpu(lambda: srcindex.chunk_source(f, size, use_libzck=True))
        results["libzck_MBps"] = size / seconds / 1e6
        say("index the source, libzck via ctypes", f"{size / seconds / 1e6:.1f} MB/s CPU ({seconds / size * 2**30:.1f} s/GiB)")
    sample = min(size, 32 << 20)
    with open(fx.v1, "rb") as f:
        _, seconds = cpu(lambda: srcindex.chunk_source(f, sample, use_libzck=False))
    results["python_MBps"] = sample / seconds / 1e6
    say("index the source, pure Python", f"{sample / seconds / 1e6:.1f} MB/s CPU ({seconds / sample * 2**30 / 60:.1f} min/GiB)")
    header = zck.parse_header(fx.header_bytes)
    with open(fx.v1, "rb") as f:
        plan = Plan(header.index, srcindex.match_index(header.index, srcindex.chunk_source(f, size)))
    data = fx.v2_zck.read_bytes()
    decoder = ChunkDecoder(header)

    def assemble() -> None:
        """What a device does per install with a cached index: re-hash reused source chunks,
        check and decode fetched ones (no writes)."""
        with open(fx.v1, "rb") as src:
            for i, offset in enumerate(plan.match.offsets):
                chunk = header.index[i]
                if offset >= 0:
                    src.seek(offset)
                    assert hashlib.sha256(src.read(chunk.length)).digest() == chunk.digest_uncompressed
                else:
                    decoder.decode(chunk, data[chunk.start:chunk.end])
    _, seconds = cpu(assemble)
    results["assemble_s_per_GiB"] = seconds / header.index.image_length * 2**30
    say("assemble with a cached index (hash reused, decode fetched)", f"{seconds:.2f} s CPU = "
        f"{seconds / header.index.image_length * 2**30:.2f} s/GiB")


HWM = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
# VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
CHILD = """
import sys
from otad.delta import srcindex, zck
from otad.delta.plan import Plan
with open(sys.argv[1], "rb") as f:
    lead = zck.parse_lead(f.read(100))
    f.seek(0)
    header = zck.parse_header(f.read(lead.total_length))
mode = sys.argv[3]
with open(sys.argv[2], "rb") as f:
    size = f.seek(0, 2)
    if mode == "fine":
        match = srcindex.match_fine(header.index, f, size)
    elif mode == "cached":  # the source's own zck header, as a slot's cached index
        with open(sys.argv[4], "rb") as g:
            lead = zck.parse_lead(g.read(100))
            g.seek(0)
            source = zck.parse_header(g.read(lead.total_length)).index
        match = srcindex.match_index(header.index, source)
    else:
        match = srcindex.match_index(header.index, srcindex.chunk_source(f, size, use_libzck=mode == "libzck"))
plan = Plan(header.index, match)
plan.requests(50)
print(""" + HWM + """)
"""


def memory(fx: DeltaFixture, work: Path, results: Dict[str, Any]) -> None:
    base = int(subprocess.run([sys.executable, "-c", f"import otad.delta.fetch, otad.delta.srcindex; print({HWM})"],
                              capture_output=True, text=True, check=True).stdout)
    results["rss_import_kB"] = base
    say("peak RSS: python + otad.delta imported", f"{base / 1024:.1f} MB")
    v1_zck = work / "v1.ext4.zck"
    if not v1_zck.exists():
        delta_fixtures.zck(fx.v1, v1_zck)
    runs = [("cached", fx.v2_zck)] + ([("libzck", fx.v2_zck)] if libzck.available() else [])
    runs += [("fine", work / f"v2.fine{16 if 16 in FINE_KIB else FINE_KIB[0]}.zck")]
    for mode, header_file in runs:
        out = subprocess.run([sys.executable, "-c", CHILD, str(header_file), str(fx.v1), mode, str(v1_zck)],
                             capture_output=True, text=True, check=True).stdout
        results[f"rss_{mode}_kB"] = int(out)
        say(f"peak RSS: header + index source ({mode}) + plan", f"{int(out) / 1024:.1f} MB")


def fetching(fx: DeltaFixture, results: Dict[str, Any]) -> None:
    header = zck.parse_header(fx.header_bytes)
    with open(fx.v1, "rb") as f:
        plan = Plan(header.index, srcindex.match_index(header.index, srcindex.chunk_source(f, fx.v1.stat().st_size)))
    data = fx.v2_zck.read_bytes()
    for dialect in ("starlette", "hawkbit", "hawkbit-old"):
        with RangeServer(data, dialect) as srv:
            f = RangeFetcher(ddi_opener(client_for(srv.url)), srv.url, len(data), policy=FetchPolicy(max_ranges=50),
                             data_prefix=ZSTD_MAGIC)
            for _ in f.fetch(header.index, plan.requests(50)):
                pass
        overhead = 100 * (f.stats.body_bytes - f.stats.payload_bytes) / max(1, f.stats.payload_bytes)
        results[f"fetch_{dialect}"] = {"requests": f.stats.requests, "body": f.stats.body_bytes, "overhead_pct": overhead}
        say(f"fetch compatible plan, {dialect}", f"{f.stats.requests} requests, {f.stats.body_bytes:,} body bytes "
            f"(+{overhead:.2f} % framing)")


def swupdate(fx: DeltaFixture, work: Path, results: Dict[str, Any]) -> None:
    """Debian's swupdate 2022.12 delta handler on the same fixture, served by the scripted
    server in goosebit's dialect: what it fetched, next to otad's plan."""
    from tests.integration.test_delta_swupdate_oracle import plans, specs
    from tests.integration.test_swupdate_oracle import run_swupdate
    from tests.pki import make_pki
    pki = make_pki(work / "pki")
    target = work / "slot-b"
    plan, as_2022 = plans(fx)
    for max_ranges in (90, 10):
        target.write_bytes(b"\x5a" * fx.v2.stat().st_size)
        with RangeServer(fx.v2_zck.read_bytes(), "starlette") as srv:
            bundle = delta_fixtures.delta_bundle(fx, work / "delta.swu", pki, srv.url, fx.v1, target,
                                                 max_ranges=max_ranges)
            start = time.monotonic()
            ok, log = run_swupdate(bundle, pki.ca_pem, ["-e", "stable,delta"])
            seconds = time.monotonic() - start
            journal = [s for s in srv.journal if s.status == 206]
        same = target.read_bytes() == fx.v2.read_bytes()
        ranges = specs(as_2022, max_ranges)
        got = [s.range for s in journal][:len(ranges)]
        extra = sorted(set(as_2022.fetched()) - set(plan.fetched()))
        totals = re.findall(r"Total (?:bytes to be reused|bytes to be downloaded|downloaded data)\s*:\s*(\d+)", log)
        results[f"swupdate_{max_ranges}"] = {
            "ok": ok, "identical": same, "requests": len(journal), "body": sum(s.body_bytes for s in journal),
            "ranges": sum(s.ranges for s in journal), "same_requests_as_otad_2022": got == ranges,
            "chunks_otad_does_not_fetch": extra, "log_totals": totals,
            "wall_s": seconds, "swu_bytes": bundle.stat().st_size - (8 << 20)}
        say(f"swupdate 2022.12, max-ranges {max_ranges}", f"ok={ok} identical={same}, {len(journal)} requests, "
            f"{sum(s.ranges for s in journal)} ranges, {sum(s.body_bytes for s in journal):,} body bytes; "
            f"same requests as otad's plan with 2022.12's source index: {got == ranges}; chunks swupdate "
            f"fetches and otad does not: {extra}; reused/to download/downloaded {totals}")


SKIP: List[str] = []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="f1", choices=sorted(delta_fixtures.SPECS))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip", default="", help="comma list of: bandwidth,speed,memory,fetching,swupdate,xdelta3")
    ap.add_argument("--fine", default="8,16,32", help="fine chunk sizes in KiB")
    args = ap.parse_args()
    SKIP[:] = args.skip.split(",")
    FINE_KIB[:] = [int(k) for k in args.fine.split(",")]
    work = Path(args.workdir or f"/var/tmp/otad-delta-bench/{args.spec}")
    start = time.monotonic()
    fx = delta_fixtures.build(work, args.spec)
    print(f"fixture {args.spec} in {work} ({time.monotonic() - start:.0f} s)")
    results: Dict[str, Any] = {"spec": args.spec}
    for name, fn in (("bandwidth", lambda: bandwidth(fx, work, results)), ("speed", lambda: speed(fx, results)),
                     ("memory", lambda: memory(fx, work, results)), ("fetching", lambda: fetching(fx, results)),
                     ("swupdate", lambda: swupdate(fx, work, results))):
        if name not in SKIP:
            print(name)
            fn()
    results["bench_max_rss_kB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
