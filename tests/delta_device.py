"""A delta install the way a device does it, put together from otad.delta's stage-1 functions: the
benchmark's device process until `otad install` installs delta bundles itself.

    python -m tests.delta_device BUNDLE URL SOURCE TARGET MODE [CACHED]

BUNDLE is a self-contained .swu (otad mkswu --delta-layout self-contained), served at URL (its
own download link). The device reads it up to the data of its zck body member (the "head":
sw-description, signature, the zck header member, any other members), indexes SOURCE (MODE:
`cached` = CACHED is the zck header of what SOURCE holds, as otad keeps one per slot; `libzck`
or `python` = chunk SOURCE itself; `fine` = hash a window at every 4 KiB of SOURCE), plans,
fetches the missing chunks by Range from URL through otad's DDI client, checks and decodes them,
and writes the image into TARGET in order, every reused chunk pread from SOURCE and re-hashed.
Prints one JSON line: what it read and fetched, its CPU for indexing and for the whole install
(after start-up and imports), its VmHWM.
Only what a device imports is imported here (no pytest): the peak RSS is the device's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from otad import libconfig
from otad.delta import srcindex, zck
from otad.delta.chunkdata import ChunkDecoder
from otad.delta.fetch import FetchPolicy, RangeFetcher
from otad.delta.plan import Plan
from otad.swu.cpio import CpioReader

MODES = ("cached", "libzck", "python", "fine")
MAX_RANGES = 50  # docs/delta.md §7's default
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def delta_entry(tree: Any) -> Optional[Dict[str, Any]]:
    """The first `type = "delta"` image anywhere in sw-description."""
    if isinstance(tree, dict):
        if tree.get("type") == "delta" and "filename" in tree:
            return tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = delta_entry(item)
            if found is not None:
                return found
    return None


def read_head(bundle: str) -> Tuple[zck.ZckHeader, int]:
    """The delta entry's header (its sha256 checked) and where the body member's data begins."""
    entry: Optional[Dict[str, Any]] = None
    header: Optional[zck.ZckHeader] = None
    with open(bundle, "rb") as f:
        reader = CpioReader(f, source_name=bundle)
        for member in reader:
            if member.name == "sw-description":
                entry = delta_entry(libconfig.loads(member.read_all(1 << 20), source=bundle))
                assert entry is not None, "no delta image in sw-description"
            elif entry is not None and member.name == entry["filename"]:
                header = zck.verify_signed(member.read_all(zck.Limits().max_header_bytes), entry["sha256"])
                zck.check_delta_usable(header)
            elif entry is not None and member.name == entry["properties"]["zckfile"]:
                assert header is not None and member.size == header.index.data_length
                return header, reader.bytes_read
    raise AssertionError(f"{bundle}: no zck body member")


def match(header: zck.ZckHeader, source: str, mode: str, cached: Optional[str]) -> srcindex.SourceMatch:
    size = os.path.getsize(source)
    with open(source, "rb") as f:
        if mode == "fine":
            return srcindex.match_fine(header.index, f, size)
        if mode == "cached":
            assert cached is not None
            with open(cached, "rb") as g:
                lead = zck.parse_lead(g.read(64))
                g.seek(0)
                index = zck.parse_header(g.read(lead.total_length), exact=False).index
        else:
            index = srcindex.chunk_source(f, size, use_libzck=mode == "libzck")
    return srcindex.match_index(header.index, index)


def install(bundle: str, url: str, source: str, target: str, mode: str, cached: Optional[str]) -> Dict[str, Any]:
    from tests.delta_http import client_for, ddi_opener  # requests and the DDI client: not for planning alone

    begin = time.process_time()
    header, body_at = read_head(bundle)
    start = time.process_time()
    found = match(header, source, mode, cached)
    index_cpu = time.process_time() - start
    plan = Plan(header.index, found)
    fetcher = RangeFetcher(ddi_opener(client_for(url)), url, os.path.getsize(bundle),
                           policy=FetchPolicy(max_ranges=MAX_RANGES), data_prefix=ZSTD_MAGIC)
    fetched = fetcher.fetch(header.index, plan.requests(MAX_RANGES), shift=body_at - header.length)
    decoder = ChunkDecoder(header)
    with open(source, "rb") as src, open(target, "r+b") as out:
        for i, offset in enumerate(found.offsets):
            chunk = header.index[i]
            if offset != srcindex.NOT_FOUND:
                data = os.pread(src.fileno(), chunk.length, offset)
                if hashlib.sha256(data).digest() != chunk.digest_uncompressed:
                    raise AssertionError(f"source chunk {i} at {offset} changed")
            else:
                number, stored = next(fetched)  # in file order: every server measured answers so
                assert number == i, (number, i)
                data = decoder.decode(chunk, stored)
            os.pwrite(out.fileno(), data, chunk.offset)
        os.fsync(out.fileno())
    s = fetcher.stats
    return {"head": body_at, "requests": s.requests, "body_bytes": s.body_bytes, "payload_bytes": s.payload_bytes,
            "mode": s.mode, "fallbacks": list(s.fallbacks), "chunks": len(header.index),
            "fetched_chunks": len(plan.fetched()), "reused_bytes": plan.reused_bytes, "fetch_bytes": plan.fetch_bytes,
            "header_bytes": header.length, "image_bytes": header.index.image_length, "index_cpu_s": index_cpu,
            "work_cpu_s": time.process_time() - begin, "hwm_kB": _vm_hwm()}


def _vm_hwm() -> int:
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM")))


def main(argv: List[str]) -> int:
    if len(argv) not in (5, 6) or argv[4] not in MODES:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(json.dumps(install(*argv[:5], argv[5] if len(argv) == 6 else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
