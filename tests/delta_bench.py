"""The delta benchmark of `scripts/bench --delta`: what a device downloads, writes and spends to go
from v1 to v2 of issue 12's fixture (tests/delta_fixtures.py) — otad's bundles next to Debian
swupdate 2022.12 on the same bundle, in the same run.

Every bundle is built by `otad mkswu --delta PROFILE --delta-layout url` from the same v2 (the
compatible .zck is swugenerator's byte for byte: tests/integration/test_mkdelta_oracle.py); its
chunk file is served by the loopback Range server in goosebit's dialect (tests/range_server.py).

The device side is the shipped code path: `otad install BUNDLE` in its own process on a
file-backed A/B device (tests/delta_fixtures.py's delta_device: slot a running, slot b the
target, a U-Boot env, otad.conf with the shipped delta defaults), measured from outside: CPU and
peak RSS by scripts/bench's `measure` (GNU time + wait4), bytes, requests and their rate from the
Range server's journal, `cmp` of slot b against v2, and — in a second, traced run of the same
case — the bytes written into slot b (strace of every write to it). A row's bytes are the head
(the bundle file `otad install` reads: sw-description, signature, zck header) plus every HTTP body
byte of the chunk requests (multipart framing included).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from otad.delta import libzck, srcindex, zck
from otad.delta.plan import Plan
from tests import delta_fixtures
from tests.delta_fixtures import DeltaDevice, DeltaFixture, ab_delta_template, cache_index, delta_device, source_zck
from tests.range_server import Misbehave, RangeServer, Served

REPO = Path(__file__).resolve().parent.parent
PYTHON_SAMPLE = 32 << 20  # the pure-Python chunker reads this much of the source (5 MB/s)
SWUPDATE_MAX_RANGES = 90  # Starlette (goosebit) answers 200 above 100 ranges; 2022.12's default is 150
PAD = 8 << 20  # swupdate 2022.12's IPC race on tiny bundles: an unreferenced member (not counted)
SWUPDATE_OK = "SWUPDATE successful"

# The misbehaving server of issue 12: a 200 to a multi-range request, a multipart body framed as
# hawkBit before 0.10 frames it, a connection dropped mid-body.
MISBEHAVING = (Misbehave(ignore_range=True), Misbehave(dialect="hawkbit-old"), Misbehave(drop_after=100_000))
MISBEHAVING_LABEL = ("otad, `compatible`, cached index, misbehaving server (200 to the first request, "
                     "old-hawkBit multipart, one dropped connection)")
WRITES = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
# `otad install` with marks at its steps: VmRSS (anonymous, file-backed), VmHWM, CPU and modules
# loaded, printed at exit: where the memory and the start-up CPU go.
MARKS = r"""
import resource, sys
def mark(name):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    kb = {k: int(status[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    use = resource.getrusage(resource.RUSAGE_SELF)
    marks.append((name, kb["VmRSS"], kb["RssAnon"], kb["RssFile"], kb["VmHWM"], use.ru_utime + use.ru_stime,
                  len(sys.modules)))
marks = []
mark("Python started")
import otad.cli
from otad.install import delta
mark("otad.cli and otad.install.delta imported")
def wrap(name, before, after):
    def measured(self, *args, **kw):
        mark(before)
        try:
            return getattr(delta.DeltaInstall, "_" + name)(self, *args, **kw)
        finally:
            mark(after)
    setattr(delta.DeltaInstall, "_" + name, getattr(delta.DeltaInstall, name))
    setattr(delta.DeltaInstall, name, measured)
wrap("begin", "bundle open, sw-description verified (the installer's imports, cryptography)",
     "zck header checked, chunk source opened (urllib3 for a static URL)")
wrap("run", "planning begins", "chunks placed, image checked, index stored")
rc = otad.cli.main(sys.argv[1:])
mark("exit")
for m in marks:
    print("MARK", *m, sep="\t", file=sys.stderr)
sys.exit(rc)
"""
DEBIAN_LABEL = "otad, {}, on Debian 12's python3 and python3-* packages (a device's stack)"
WARM_IMPORTS = "import otad.cli, otad.update, otad.install.delta, otad.delta.libzck, otad.httpget, requests"

Measure = Callable[..., Any]  # scripts/bench's measure(args, env=, timeout=, marker=, scratch=) -> Measured


@dataclass
class Row:
    """One way of getting v2 onto a device that holds v1 (or v2 itself: the identical image)."""

    label: str
    downloaded: int
    requests: Optional[int] = None
    cpu_s: Optional[float] = None  # the whole process (GNU time + wait4)
    rss_kB: Optional[int] = None
    wall_s: Optional[float] = None
    ok: Optional[bool] = None
    detail: str = ""
    head: int = 0
    per_s: Optional[int] = None  # the most requests the server saw within one second
    written: Optional[int] = None  # bytes written into the target slot (strace, a second run)
    in_place: Optional[int] = None  # bytes otad says it found in place and did not write


@dataclass
class SpecResult:
    spec: str
    image_bytes: int = 0
    files: int = 0
    zstd9: int = 0
    full_bundle: int = 0
    rows: Dict[str, Row] = field(default_factory=dict)
    sweep: List[Dict[str, Any]] = field(default_factory=list)
    speeds: Dict[str, float] = field(default_factory=dict)
    marks: List[Tuple[str, int, int, int, int, float, int]] = field(default_factory=list)  # MARKS' lines
    builds: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # profile -> (CPU s, bundle + .zck bytes)
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def log(msg: str) -> None:
    print(f"[bench delta {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def template(target: Path, source: Path, url: Optional[str] = None, *, pad: bool = False) -> str:
    """swupdate's sw-description: one delta image in `stable,copy2`, `target` from `source` (files)."""
    url_line = f'url = "{url}"; ' if url else ""
    pad_mode = '        pad = { images = ( { filename = "pad.bin"; type = "raw"; device = "/dev/null"; } ); };\n' \
        if pad else ""
    return ('software = {\n    version = "2.0.0";\n    hardware-compatibility = [ "1.0" ];\n    stable = {\n'
            f'        copy2 = {{ images = ( {{ filename = "rootfs.ext4"; type = "delta"; device = "{target}";\n'
            f'            properties = {{ {url_line}chain = "raw"; source = "{source}"; '
            f'max-ranges = "{SWUPDATE_MAX_RANGES}"; }}; }} ); }};\n{pad_mode}    }};\n}};\n')


FULL = """software = {{ version = "2.0.0"; hardware-compatibility = [ "1.0" ]; stable = {{ copy2 = {{
    images = ( {{ filename = "rootfs.ext4"; device = "{target}"; compressed = "zstd"; installed-directly = true; }} );
}}; }}; }};
"""


@dataclass(frozen=True)
class Env:
    fx: DeltaFixture
    work: Path
    scratch: Path
    measure: Measure
    pki: Tuple[Path, Path, Path]  # ca.pem, signer.pem, signer.key
    otad: Path  # the venv's otad


def mkswu(env: Env, name: str, text: str, *args: str) -> Tuple[Path, float]:
    """`otad mkswu` of v2 with `text`; (bundle, CPU seconds of the build)."""
    d = env.scratch / name
    art = d / "art"
    art.mkdir(parents=True, exist_ok=True)
    if not (art / "rootfs.ext4").exists():
        os.link(env.fx.v2, art / "rootfs.ext4")
    (art / "pad.bin").write_bytes(bytes(PAD))
    (d / "sw-description.in").write_text(text)
    _ca, signer, key = env.pki
    out = d / "out" / "update.swu"
    out.parent.mkdir(exist_ok=True)
    m = env.measure([str(env.otad), "mkswu", "-s", str(d / "sw-description.in"), "-a", str(art), "-o", str(out),
                     "-k", f"CMS,{key},{signer}", *args], scratch=env.scratch)
    if m.rc != 0:
        raise RuntimeError(f"otad mkswu {' '.join(args)} failed: {m.output[-2000:]}")
    return out, m.user + m.sys


def member_offsets(bundle: Path) -> Dict[str, Tuple[int, int]]:
    """Each member's (header offset, data offset)."""
    from otad.swu.cpio import CpioReader

    found = {}
    with open(bundle, "rb") as f:
        reader = CpioReader(f)
        for m in reader:
            found[m.name] = (m.header.offset, reader.bytes_read)
            if m.name.endswith(".zckbody"):
                break  # the last members: do not read through them
    return found


def fresh_target(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


@dataclass(frozen=True)
class Holds:
    """What the device holds before a row's install: slot a (running) and slot b (the target)."""

    source: Path
    source_zck: Optional[Path] = None  # the .zck whose header is slot a's cached index
    target: Optional[Path] = None  # None: slot b filled with 0x5a
    target_zck: Optional[Path] = None
    delta: str = ""  # otad.conf's delta section: the shipped defaults unless a row says


def device(env: Env, holds: Holds) -> DeltaDevice:
    """A fresh file-backed A/B device in the scratch directory, holding what `holds` says."""
    root = env.scratch / "device"
    shutil.rmtree(root, ignore_errors=True)
    dev = delta_device(root, replace(env.fx, v1=holds.source), SimpleNamespace(ca_pem=env.pki[0]),
                       delta=holds.delta, slot_b=holds.target)
    for slot, zck_file in (("mmcblk0p2", holds.source_zck), ("mmcblk0p3", holds.target_zck)):
        if zck_file is not None:
            cache_index(dev, slot, zck_file)
    return dev


def debian_stack(env: Env) -> Optional[Path]:
    """An `otad` that runs this checkout on Debian's /usr/bin/python3 and its python3-* packages
    (python3-cryptography links the system's libssl3; PyPI's wheel maps its own OpenSSL), its
    bytecode warmed like the venv's; None when those packages are not installed."""
    python = Path("/usr/bin/python3")
    check = "import cryptography, requests, urllib3, asn1crypto, libconf, zstandard"
    if not python.exists() or subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        return None
    d = env.scratch / "debian-stack"
    d.mkdir(exist_ok=True)
    for name, tail in (("otad", '-m otad "$@"'), ("python", '"$@"')):
        (d / name).write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {python} {tail}\n')
        (d / name).chmod(0o755)
    env.measure([str(d / "python"), "-c", WARM_IMPORTS.replace(", requests", ", urllib3")])
    return d / "otad"


def per_second(served: Sequence[Served]) -> int:
    """The most requests that began within any one second."""
    times = sorted(s.at for s in served)
    return max((sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times)), default=0)


def install_delta(env: Env, label: str, bundle: Path, served: RangeServer, holds: Holds,
                  faults: Sequence[Misbehave] = (), count_writes: bool = False) -> Row:
    """`otad install BUNDLE` on a device holding `holds`, measured from outside. With `faults`,
    the server misbehaves on the first requests, and the bytes are what it sent (a cut or
    unwanted body counts as far as it went). `count_writes`: a second run of the same case under
    strace counts the bytes written into slot b."""
    dev = device(env, holds)
    before = len(served.journal)
    served.script = list(faults)
    m = env.measure([str(env.otad), "--config", str(dev.config), "install", str(bundle)], scratch=env.scratch)
    sent = served.journal[before:]
    said = re.findall(r"reused [^\n]*", m.output)
    summary = said[-1] if said else ""
    ok = m.rc == 0 and same(dev.slot("mmcblk0p3"), env.fx.v2) and served.script == [] \
        and (bool(faults) or "fell back" not in summary)
    if m.rc != 0:
        return Row(label, 0, ok=False, detail=f"failed: {m.output[-500:]}")
    in_place = re.search(r"; ([\d.]+) (MB|kB) already in place, not written", summary)
    row = Row(label, bundle.stat().st_size + sum(s.body_bytes for s in sent), len(sent), m.user + m.sys,
              m.maxrss_kb, m.wall, ok, f"otad: {summary}", head=bundle.stat().st_size, per_s=per_second(sent),
              in_place=round(float(in_place.group(1)) * (1e6 if in_place.group(2) == "MB" else 1e3)) if in_place else 0)
    if count_writes:
        row.written = written(env, bundle, holds)
    return row


def marks(env: Env, bundle: Path, holds: Holds) -> List[Tuple[str, int, int, int, int, float, int]]:
    """`otad install` run with MARKS: kB of VmRSS, RssAnon, RssFile, VmHWM, CPU s and modules at each step."""
    dev = device(env, holds)
    done = subprocess.run([str(env.otad.parent / "python"), "-c", MARKS, "--config", str(dev.config), "install",
                           str(bundle)], capture_output=True, text=True)
    if done.returncode != 0 or not same(dev.slot("mmcblk0p3"), env.fx.v2):
        raise RuntimeError(f"the marked otad install failed: {done.stderr[-1000:]}")
    found = []
    for line in done.stderr.splitlines():
        if line.startswith("MARK\t"):
            name, rss, anon, file, hwm, cpu, modules = line.split("\t")[1:]
            found.append((name, int(rss), int(anon), int(file), int(hwm), float(cpu), int(modules)))
    return found


def written(env: Env, bundle: Path, holds: Holds) -> int:
    """Bytes `otad install` writes into slot b (every write syscall to it, traced), on a fresh device
    holding `holds` (the chunks come from the same server)."""
    dev = device(env, holds)
    trace = env.scratch / "strace.out"
    done = subprocess.run(["strace", "-f", "-qq", "-y", "-s", "0", "-e", "signal=none", "-e",
                           "trace=" + ",".join(WRITES), "-o", str(trace), str(env.otad), "--config", str(dev.config),
                           "install", str(bundle)], capture_output=True, text=True)
    if done.returncode != 0 or not same(dev.slot("mmcblk0p3"), env.fx.v2):
        raise RuntimeError(f"the traced otad install failed: {done.stderr[-1000:]}")
    return target_writes(trace.read_text(), os.path.realpath(dev.slot("mmcblk0p3")))


def target_writes(trace: str, path: str) -> int:
    """Sum of the results of write calls to `path` in `strace -f -y` output (split calls joined)."""
    call = re.compile(r"^(\d+ +)?(" + "|".join(WRITES) + r")\((\d+)<([^>]*)>")
    result = re.compile(r"\) += (\d+)")
    pending: Dict[str, bool] = {}  # pid -> its unfinished write is to `path`
    total = 0
    for line in trace.splitlines():
        started = call.match(line)
        pid = (started.group(1) or "").strip() if started else line.split(" ", 1)[0]
        if started and line.endswith("<unfinished ...>"):
            pending[pid] = started.group(4) == path
            continue
        to_target = started.group(4) == path if started else ("resumed>" in line and pending.pop(pid, False))
        done = result.search(line)
        if to_target and done:
            total += int(done.group(1))
    return total


def swupdate(env: Env, label: str, bundle: Path, served: RangeServer, target: Path) -> Row:
    """Debian swupdate 2022.12 `-i`, its delta handler fetching from `served`."""
    ca = env.pki[0]
    tmp = env.scratch / "swupdate-tmp"
    tmp.mkdir(exist_ok=True)  # libzck 1.2.3 copies the whole source here: on disk, not tmpfs
    head = member_offsets(bundle)["pad.bin"][0]  # everything a device streams before the padding member
    for attempt in range(4):
        fresh_target(target, env.fx.v2.stat().st_size)
        before = len(served.journal)
        m = env.measure(["swupdate", "-i", str(bundle), "-k", str(ca), "-H", "rpi0w:1.0", "-v", "-e", "stable,copy2"],
                        env=dict(os.environ, TMPDIR=str(tmp)), marker=SWUPDATE_OK, scratch=env.scratch)
        if SWUPDATE_OK in m.output or "SWUPDATE failed" in m.output:
            break
        log(f"  swupdate gave no verdict (attempt {attempt + 1}): running it again")
    served_now = [s for s in served.journal[before:] if s.status == 206]
    ok = SWUPDATE_OK in m.output and same(target, env.fx.v2)
    body = sum(s.body_bytes for s in served_now)
    totals = dict(re.findall(r"Total bytes to be (reused|downloaded)\s*:\s*(\d+)", m.output))
    detail = (f"{sum(s.ranges for s in served_now)} range(s); its log: {int(totals.get('downloaded', 0)):,} B of "
              f"chunk data to download, {int(totals.get('reused', 0)) / 1e6:.1f} MB reused")
    return Row(label, head + body, len(served_now), m.user + m.sys, m.maxrss_kb, m.wall, ok, detail,
               head=head)


def write_zck(image: Path, out: Path, chunk_bytes: Optional[int]) -> float:
    """A .zck of `image` by libzck (what mkswu runs); CPU seconds."""
    start = time.process_time()
    if not out.exists():  # kept between runs: written under another name, then renamed
        tmp = out.with_name(out.name + ".tmp")
        with open(image, "rb") as f, open(tmp, "wb") as o:
            libzck.write_zck(f, image.stat().st_size, o, chunk_bytes, tmpdir=str(out.parent))
        os.replace(tmp, out)
    return time.process_time() - start


def header_of(zck_file: Path) -> zck.ZckHeader:
    with open(zck_file, "rb") as f:
        lead = zck.parse_lead(f.read(64))
        f.seek(0)
        return zck.parse_header(f.read(lead.total_length), exact=False)


def run(spec: str, work: Path, scratch: Path, measure: Measure, pki: Tuple[Path, Path, Path], otad: Path,
        fine_kib: Sequence[int], default_kib: int, swupdate_runs: bool = True, xdelta: bool = True) -> SpecResult:
    """Everything for one fixture; `work` keeps the fixture between runs, `scratch` is thrown away."""
    res = SpecResult(spec)
    start = time.monotonic()
    fx = delta_fixtures.build(work, spec)
    log(f"{spec}: fixture in {work} ({time.monotonic() - start:.0f} s)")
    env = Env(fx, work, scratch, measure, pki, otad)
    size = fx.v2.stat().st_size
    res.image_bytes = size
    packages, _mib, copies = delta_fixtures.SPECS[spec]
    res.files = len(delta_fixtures.package_files(packages)) * copies
    res.zstd9 = zstd9_size(fx.v2, work / "v2.zstd9.size")
    full, _ = mkswu(env, "full", FULL.format(target=scratch / "target.img"))
    res.full_bundle = full.stat().st_size
    res.rows["zstd9"] = Row("full image, `zstd -9` (the design notes' reference)", res.zstd9, 1)
    res.rows["full"] = Row("full bundle, `otad mkswu` (zstd -3, 4 MiB frames)", res.full_bundle, 1)

    # v1's compatible header is what otad keeps as slot a's index after installing v1 there.
    v1_zck, v2_zck = source_zck(fx), fx.v2_zck
    measure([str(otad.parent / "python"), "-c", WARM_IMPORTS])  # their .pyc, as an installed otad has them
    fine = f"fine:{default_kib}"
    device_rows = [("compatible-cached", "compatible", Holds(fx.v1, v1_zck), True),
                   ("compatible-libzck", "compatible", Holds(fx.v1), False),
                   ("compatible-python", "compatible", Holds(fx.v1, delta="libzck = false; python_index = true;"),
                    False),
                   ("fine", fine, Holds(fx.v1), False),
                   ("identical-compatible", "compatible", Holds(fx.v2, v2_zck), False),
                   ("identical-fine", fine, Holds(fx.v2), False),
                   ("inplace-v1", "compatible", Holds(fx.v1, v1_zck, fx.v1, v1_zck), True),
                   ("inplace-v2", "compatible", Holds(fx.v1, v1_zck, fx.v2, v2_zck), True)]
    debian = debian_stack(env)
    if debian is not None:  # the same installs on what a device runs: Debian 12's python3 and python3-* packages
        device_rows += [("debian-cached", "compatible", Holds(fx.v1, v1_zck), False),
                        ("debian-fine", fine, Holds(fx.v1), False)]
    else:
        res.notes.append("Debian 12's python3 lacks python3-cryptography, -requests, -asn1crypto, -libconf or "
                         "-zstandard here: no rows on the device's package stack")
    if spec != "f1":  # the pure-Python chunker: ~3.5 CPU minutes per GiB; its speed is measured on f1
        device_rows = [r for r in device_rows if r[0] != "compatible-python"]
    labels = {"compatible-cached": "otad, `compatible`, cached source index",
              "compatible-libzck": "otad, `compatible`, source chunked by libzck",
              "compatible-python": "otad, `compatible`, source chunked by the pure-Python chunker (libzck off)",
              "fine": f"otad, `fine` {default_kib} KiB, source scanned at every 4 KiB",
              "identical-compatible": "identical image: otad, `compatible`, cached index",
              "identical-fine": f"identical image: otad, `fine` {default_kib} KiB",
              "inplace-v1": "otad, `compatible`, cached index; slot b holds v1 (and its index): write avoidance",
              "inplace-v2": "otad, `compatible`, cached index; slot b already holds v2 (and its index)",
              "debian-cached": DEBIAN_LABEL.format("`compatible`, cached source index"),
              "debian-fine": DEBIAN_LABEL.format(f"`fine` {default_kib} KiB, source scanned at every 4 KiB")}
    for profile in ("compatible", fine):
        name = profile.replace(":", "")
        with RangeServer(b"", "starlette") as srv:
            log(f"{spec}: otad mkswu --delta {profile} --delta-layout url (otad's bundle and swupdate's)")
            ours, cpu = mkswu(env, name, ab_delta_template(f'url = "{srv.url}";'), "--delta", profile,
                              "--delta-layout", "url")
            theirs, _ = mkswu(env, "swupdate-" + name, template(scratch / "slot-b", fx.v1, srv.url, pad=True),
                              "--delta", profile, "--delta-layout", "url")
            srv.data = (ours.parent / "file").read_bytes()
            if srv.data != (theirs.parent / "file").read_bytes():
                raise RuntimeError(f"otad mkswu --delta {profile} wrote two different .zck files of v2")
            res.builds[profile] = (cpu, ours.stat().st_size + len(srv.data))
            for key, row_profile, holds, count_writes in device_rows:
                if row_profile == profile:
                    on = replace(env, otad=debian) if key.startswith("debian-") and debian is not None else env
                    if key in ("compatible-cached", "debian-cached"):
                        # Unmeasured first: a stack's first install compiles what no warm-up import reached.
                        log(f"{spec}: otad install, {key} (warm-up, not counted)")
                        install_delta(on, labels[key], ours, srv, holds)
                    log(f"{spec}: otad install, {key}")
                    res.rows[key] = install_delta(on, labels[key], ours, srv, holds, count_writes=count_writes)
            if profile == "compatible":
                log(f"{spec}: otad install, compatible-cached, with marks (where memory and CPU go)")
                res.marks = marks(env, ours, Holds(fx.v1, v1_zck))
                log(f"{spec}: otad install against a misbehaving server")
                res.rows["misbehaving"] = install_delta(env, MISBEHAVING_LABEL, ours, srv, Holds(fx.v1, v1_zck),
                                                        MISBEHAVING)
            shutil.rmtree(env.scratch / "device", ignore_errors=True)
            if swupdate_runs:
                log(f"{spec}: swupdate 2022.12 on the {profile} bundle")
                key = "swupdate-" + ("compatible" if profile == "compatible" else "fine")
                res.rows[key] = swupdate(env, f"Debian swupdate 2022.12, `{profile}` bundle (max-ranges "
                                              f"{SWUPDATE_MAX_RANGES})", theirs, srv, scratch / "slot-b")
                (scratch / "slot-b").unlink()
    log(f"{spec}: fine chunk sizes {', '.join(map(str, fine_kib))} KiB")
    for kib in fine_kib:
        out = work / f"v2.fine{kib}.zck"
        cpu = write_zck(fx.v2, out, kib << 10)
        header = header_of(out)
        with open(fx.v1, "rb") as f:
            start = time.process_time()
            found = srcindex.match_fine(header.index, f, size)
            scan = time.process_time() - start
        plan = Plan(header.index, found)
        res.sweep.append({"kib": kib, "header": header.length, "fetch": plan.fetch_bytes,
                          "total": header.length + plan.fetch_bytes, "zck": out.stat().st_size,
                          "chunks": len(header.index), "fetched": len(plan.fetched()),
                          "requests_50": len(plan.requests(50)), "write_cpu_s": cpu,
                          "scan_s_per_GiB": scan / size * 2**30})
    speeds(env, res)
    if xdelta:
        xd = work / "v1-v2.xdelta"
        if not xd.exists():
            log(f"{spec}: xdelta3 -9")
            subprocess.run(["xdelta3", "-e", "-9", "-f", "-s", str(fx.v1), str(fx.v2), str(xd)], check=True)
        res.rows["xdelta3"] = Row("xdelta3 -9 against v1 (source-pinned lower bound, not a product)",
                                  xd.stat().st_size)
    return res


def speeds(env: Env, res: SpecResult) -> None:
    """Indexing speeds of the library calls in this process, and per-GiB CPU of the measured installs:
    a source index's cost from outside is the install's CPU less that of the cached-index install."""
    fx, size = env.fx, env.fx.v1.stat().st_size
    if libzck.available():
        with open(fx.v1, "rb") as f:
            start = time.process_time()
            srcindex.chunk_source(f, size, use_libzck=True)
            res.speeds["libzck_MBps"] = size / (time.process_time() - start) / 1e6
    sample = min(size, PYTHON_SAMPLE)
    with open(fx.v1, "rb") as f:
        start = time.process_time()
        srcindex.chunk_source(f, sample, use_libzck=False)
        res.speeds["python_MBps"] = sample / (time.process_time() - start) / 1e6
    cached = res.rows.get("compatible-cached")
    for key in ("compatible-cached", "compatible-libzck", "compatible-python", "fine"):
        row = res.rows.get(key)
        if row is None or row.cpu_s is None or not row.ok:
            continue
        res.speeds[f"{key}_s_per_GiB"] = row.cpu_s / size * 2**30
        if key in ("compatible-libzck", "compatible-python") and cached and cached.cpu_s is not None:
            res.speeds[f"{key}_index_MBps"] = size / max(row.cpu_s - cached.cpu_s, 1e-3) / 1e6


def zstd9_size(image: Path, kept: Path) -> int:
    """Bytes of `zstd -9` of `image` (kept beside the fixture: minutes on 1 GiB)."""
    if kept.exists() and kept.stat().st_mtime >= image.stat().st_mtime:
        return int(kept.read_text())
    zstd = subprocess.Popen(["zstd", "-9", "-T1", "-q", "-c", str(image)], stdout=subprocess.PIPE)
    assert zstd.stdout is not None
    size = sum(len(piece) for piece in iter(lambda: zstd.stdout.read(1 << 20), b""))  # type: ignore[union-attr]
    if zstd.wait() != 0:
        raise RuntimeError(f"zstd -9 {image} failed")
    kept.write_text(str(size))
    return size


# ---------------------------------------------------------------------------- the report

GOAL_COMPATIBLE_RATIO = 1.02  # issue 12: within 2 % of what Debian swupdate downloads
GOAL_FINE_PCT = 10.0  # of the zstd full image
GOAL_IDENTICAL_SLACK = 1024  # an identical image: at most the head + 1 KiB
GOAL_RSS_MB = 40.0
GOAL_RSS_SPREAD_MB = 4.0  # the 1 GiB variant within this of the small one
GOAL_CACHED_S_PER_GIB = 4.0
GOAL_MULTIPART_REQUESTS = 4
GOAL_PER_S = 10
ROW_ORDER = ("zstd9", "full", "swupdate-compatible", "compatible-cached", "compatible-libzck", "compatible-python",
             "misbehaving", "swupdate-fine", "fine", "identical-compatible", "identical-fine", "inplace-v1",
             "inplace-v2", "debian-cached", "debian-fine", "xdelta3")
OTAD_ROWS = tuple(k for k in ROW_ORDER if k not in ("zstd9", "full", "xdelta3") and not k.startswith("swupdate"))


def _mb(kb: Optional[int]) -> str:
    return "–" if kb is None else f"{kb * 1024 / 1e6:.1f}"


def _opt(x: Optional[float], fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _verdict(ok: Optional[bool]) -> str:
    return "–" if ok is None else ("**PASS**" if ok else "**MISS**")


def fixture_table(r: SpecResult) -> List[str]:
    mib = r.image_bytes >> 20
    lines = [f"#### {r.spec}: {mib} MiB ext4, {r.files:,} files", "",
             "| way | bytes downloaded (head + chunk requests) | % of zstd -9 full | requests (most in 1 s) | CPU s | "
             "peak RSS MB | wall s | written to slot b MB | image ok | detail |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in ROW_ORDER:
        row = r.rows.get(key)
        if row is None:
            continue
        parts = f" ({row.head:,} + {row.downloaded - row.head:,})" if row.head else ""
        ok = "–" if row.ok is None else ("yes" if row.ok else "**NO**")
        reqs = _opt(row.requests, "{}") + (f" ({row.per_s})" if row.per_s is not None else "")
        lines.append(f"| {row.label} | {row.downloaded:,}{parts} | {100 * row.downloaded / r.zstd9:.1f} | "
                     f"{reqs} | {_opt(row.cpu_s)} | {_mb(row.rss_kB)} | {_opt(row.wall_s)} | "
                     f"{_opt(None if row.written is None else row.written / 1e6, '{:.1f}')} | {ok} | {row.detail} |")
    return lines + [""]


def section(results: Sequence[SpecResult], meta: Dict[str, str], begin: str, end: str) -> List[str]:
    by = {r.spec: r for r in results}
    L = [begin, "## Delta updates (`scripts/bench --delta`)", "",
         f"Generated by `scripts/bench --delta` on {meta['started']} (took {meta['duration']}) with {meta['otad']}, "
         f"{meta['python']}, {meta['swupdate']}, {meta['zchunk']}; the rest of this file is untouched by `--delta`. "
         f"Load average before/after: {meta.get('load', '–')}. "
         f"Fixtures (tests/delta_fixtures.py, built with `mke2fs -d` at a fixed UUID, hash seed and time): the files of "
         "17 installed Debian packages in an ext4 image (`f1`: 96 MiB; `f1-1g`: 1 GiB holding the tree ten times); "
         "v1 → v2 is issue 12's minor update: 15 `.py` files edited, one library rebuilt (a byte changed every "
         "32 KiB), a 512 KiB tool added to /usr/bin (sorted before /usr/lib, so half the blocks move), /etc/version "
         "changed. Every bundle is built by `otad mkswu --delta PROFILE --delta-layout url` from the same v2 "
         "(`compatible` is swugenerator's .zck byte for byte, tests/integration/test_mkdelta_oracle.py); otad's and "
         "swupdate's bundles of a profile differ only in sw-description (device paths) and share one .zck, served by "
         "the loopback Range server in goosebit's dialect (Starlette: multipart, 200 above 100 ranges). "
         "MB = 10^6 bytes.", "",
         "**The otad rows are `otad install BUNDLE`**, the shipped code path in its own process (planning, the "
         "source index — slot a's cached one, or chunked by libzck or the pure-Python chunker —, Range requests "
         "through otad's opener, write avoidance, fsync, the install record and the armed trial) on a file-backed "
         "A/B device (tests/delta_fixtures.py `delta_device`: slot a runs the source, slot b is the target, otad.conf "
         "with the shipped `delta` defaults: 50 ranges a request, ≥ 0.1 s between requests, libzck on). Measured "
         "from outside: CPU (user + sys) and peak RSS by GNU time and wait4, bytes and requests from the server's "
         "journal (the head is the bundle file otad reads, the rest every HTTP body byte of the chunk requests, "
         "multipart framing included), `image ok` is `cmp` of slot b against v2, and *written to slot b* is the sum "
         "of every write call into slot b in a second run of the same case under `strace -f -y`. *cached source "
         "index*: slot a's install record and the zck header of v1, which otad keeps for a slot it installed. "
         "For swupdate: the bundle up to its padding member (an unreferenced 8 MiB member against 2022.12's IPC "
         "race, not counted) plus the Range bodies it received.", "",
         "**Two Python stacks.** The otad rows run in the repository's venv (the Python and PyPI wheels named above: "
         "cryptography's wheel maps its own statically linked OpenSSL, about 6 MB of file-backed RSS, beside the "
         "system libcrypto that Python's hashlib and ssl load). The rows *on Debian 12's python3 and python3-* "
         "packages* run the same checkout on /usr/bin/python3 with python3-cryptography (linked to the system's "
         "libssl3), -urllib3, -requests, -asn1crypto, -libconf and -zstandard: the packages a device runs, here on "
         "x86-64 (a Pi's 32-bit ARM maps less). What grows with the image in `otad install`: the target's chunk index "
         "(28 bytes a chunk; its digests are read from the staged header file, not kept in memory), the table of its "
         "distinct digests (8 to 16 bytes a chunk) and the match (8 bytes a chunk); a source index is matched as it "
         "is read and not kept. A static chunk URL is fetched through urllib3 without requests (otad/httpget.py).", ""]
    if meta.get("shared"):
        L += [meta["shared"], ""]
    for r in results:
        L += fixture_table(r)
    specs = [r.spec for r in results]
    L += ["### `fine` chunk size", "",
          "Plan only (no fetch): header + chunks otad fetches with the source scanned at every 4 KiB, and the .zck size "
          "(what a full install of the self-contained bundle streams), and the CPU of scanning the source: "
          "a SHA-256 of one chunk's length at every 4 KiB, so it grows with the chunk size. `otad mkswu --delta "
          f"fine` cuts {meta['fine_default']} KiB chunks (otad/mkswu/delta.py `FINE_KIB` says why).", "",
          "| chunk KiB | " + " | ".join(f"{s}: header + fetched = total (% zstd -9) | {s}: .zck MB | "
                                        f"{s}: requests at 50 ranges | {s}: source scan CPU" for s in specs) + " |",
          "| --- |" + " --- | --- | --- | --- |" * len(specs)]
    kibs = sorted({w["kib"] for r in results for w in r.sweep})
    for kib in kibs:
        cells = []
        for r in results:
            w = next((w for w in r.sweep if w["kib"] == kib), None)
            cells += ["–"] * 4 if w is None else [
                f"{w['header']:,} + {w['fetch']:,} = {w['total']:,} ({100 * w['total'] / r.zstd9:.1f} %)",
                f"{w['zck'] / 1e6:.1f}", str(w["requests_50"]), f"{w['scan_s_per_GiB']:.1f} s/GiB"]
        L.append(f"| {kib} | " + " | ".join(cells) + " |")
    L += ["", "### CPU", "",
          "| measure | " + " | ".join(specs) + " |", "| --- |" + " --- |" * len(specs)]

    def line(label: str, fn: Callable[[SpecResult], str]) -> None:
        L.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")

    line("index the source, libzck via ctypes: `otad install` less the cached-index install",
         lambda r: _opt(r.speeds.get("compatible-libzck_index_MBps"), "{:.0f} MB/s")
         + _per_gib(r.speeds.get("compatible-libzck_index_MBps")))
    line("index the source, pure-Python chunker: `otad install` less the cached-index install",
         lambda r: _opt(r.speeds.get("compatible-python_index_MBps"), "{:.1f} MB/s")
         + _per_gib(r.speeds.get("compatible-python_index_MBps")))
    line("index the source, libzck via ctypes (the library call alone, in the bench process)",
         lambda r: _opt(r.speeds.get("libzck_MBps"), "{:.0f} MB/s") + _per_gib(r.speeds.get("libzck_MBps")))
    line(f"index the source, pure-Python chunker (the library call alone, first {PYTHON_SAMPLE >> 20} MiB)",
         lambda r: _opt(r.speeds.get("python_MBps"), "{:.1f} MB/s") + _per_gib(r.speeds.get("python_MBps")))
    for key, what in (("compatible-cached", "`compatible`, cached index"), ("compatible-libzck", "`compatible`, libzck"),
                      ("fine", "`fine`")):
        line(f"`otad install`, {what}: CPU per GiB of image (the whole process, start-up included)",
             lambda r, k=key: _opt(r.speeds.get(f"{k}_s_per_GiB"), "{:.2f} s/GiB"))
    for profile in ("compatible", "fine"):
        line(f"`otad mkswu --delta {profile}` build: CPU s, bundle + .zck MB",
             lambda r, p=profile: next((f"{c:.1f} s, {b / 1e6:.1f} MB" for k, (c, b) in r.builds.items()
                                        if k.startswith(p)), "–"))
    L += memory_table(results)
    L += ["", "### Delta goals (issue 12)", "", "| goal | measured | result |", "| --- | --- | --- |"]
    L += goals(by)
    L += ["", "The misbehaving-server row counts what the server sent, a cut or unwanted body as far as it went "
          "(on loopback the kernel's socket buffers take more of an unwanted 200 than a slow link would); the other "
          "otad rows count the same (the server's journal). More fault cases: tests/unit/delta/test_fetch.py, "
          "tests/integration/test_delta_install.py. Not measured here: the Pi Zero; x86 figures are ratios: the Pi's "
          "ARMv6 has no SHA-256 or NEON fast paths.", ""]
    notes = [n for r in results for n in r.notes] + [n for n in meta.get("notes", "").split("\n") if n]
    L += [f"- {n}" for n in notes] + ([""] if notes else [])
    return L + [end, ""]


def memory_table(results: Sequence[SpecResult]) -> List[str]:
    """Where the peak RSS and the fixed CPU go: `otad install`, `compatible`, cached index, with marks."""
    marked = [r for r in results if r.marks]
    if not marked:
        return []
    L = ["", "### Where memory and CPU go (`otad install`, `compatible`, cached index)", "",
         "The same install once more with marks at its steps (a wrapper around `otad.cli.main` reading "
         "/proc/self/status and getrusage; the peak RSS of the rows above is from outside). RSS in MB at each step "
         "(anonymous + file-backed: the shared libraries' pages count on a device as well), the process's peak so "
         "far, CPU seconds so far and modules loaded.", "",
         "| step | " + " | ".join(f"{r.spec}: RSS (anon + file) | {r.spec}: peak | {r.spec}: CPU s | {r.spec}: modules"
                                  for r in marked) + " |",
         "| --- |" + " --- | --- | --- | --- |" * len(marked)]
    names = [m[0] for m in marked[0].marks]
    for i, name in enumerate(names):
        cells = []
        for r in marked:
            if i >= len(r.marks):
                cells += ["–"] * 4
                continue
            _, rss, anon, file, hwm, cpu, modules = r.marks[i]
            cells += [f"{_mb(rss)} ({_mb(anon)} + {_mb(file)})", _mb(hwm), f"{cpu:.2f}", str(modules)]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return L


def _per_gib(mbps: Optional[float]) -> str:
    return "" if not mbps else f" ({2**30 / 1e6 / mbps:.0f} s/GiB)"


def goals(by: Dict[str, SpecResult]) -> List[str]:
    L: List[str] = []
    for r in by.values():
        ours, theirs = r.rows.get("compatible-cached"), r.rows.get("swupdate-compatible")
        if ours and theirs and theirs.ok:
            ratio = ours.downloaded / theirs.downloaded
            L.append(f"| {r.spec}: `compatible` within 2 % of Debian swupdate's bytes | {ours.downloaded:,} vs "
                     f"{theirs.downloaded:,} = {ratio:.3f}× | {_verdict(ratio <= GOAL_COMPATIBLE_RATIO and bool(ours.ok))} |")
        fine = r.rows.get("fine")
        if fine:
            pct = 100 * fine.downloaded / r.zstd9
            L.append(f"| {r.spec}: `fine` ≤ {GOAL_FINE_PCT:.0f} % of the zstd -9 full image | {pct:.1f} % "
                     f"({fine.downloaded:,} of {r.zstd9:,}) | {_verdict(pct <= GOAL_FINE_PCT and bool(fine.ok))} |")
        for key in ("identical-compatible", "identical-fine"):
            row = r.rows.get(key)
            if row:
                extra = row.downloaded - row.head
                L.append(f"| {r.spec}: {row.label} ≤ head + 1 KiB | head {row.head:,} + {extra:,} in "
                         f"{row.requests} requests | {_verdict(extra <= GOAL_IDENTICAL_SLACK and bool(row.ok))} |")
        for which, keys in (("every otad row on the venv's PyPI wheels", [k for k in OTAD_ROWS if not k.startswith("debian-")]),
                            ("on Debian 12's python3-* packages, a device's stack", [k for k in OTAD_ROWS if k.startswith("debian-")])):
            devices = [r.rows[k] for k in keys if k in r.rows and r.rows[k].rss_kB is not None]
            if devices:
                worst = max(devices, key=lambda row: row.rss_kB or 0)
                best = min(devices, key=lambda row: row.rss_kB or 0)
                mb = (worst.rss_kB or 0) * 1024 / 1e6
                L.append(f"| {r.spec}: peak RSS ≤ {GOAL_RSS_MB:.0f} MB (`otad install`, {which}) | "
                         f"{mb:.1f} MB ({worst.label}); least {_mb(best.rss_kB)} MB | {_verdict(mb <= GOAL_RSS_MB)} |")
        busy = [r.rows[k] for k in OTAD_ROWS if k in r.rows and r.rows[k].per_s is not None]
        if busy:
            worst = max(busy, key=lambda row: row.per_s or 0)
            L.append(f"| {r.spec}: ≤ {GOAL_PER_S} requests per second (every otad row, the server's clock) | "
                     f"{worst.per_s} ({worst.label}) | {_verdict((worst.per_s or 0) <= GOAL_PER_S)} |")
        bad, whole = r.rows.get("misbehaving"), r.builds.get("compatible", (0.0, 0))[1]
        if bad and whole:
            L.append(f"| {r.spec}: a misbehaving server costs bytes, never the install, never more than the bundle "
                     f"and its whole .zck | {bad.downloaded:,} B in {bad.requests} requests (bundle + .zck {whole:,}), "
                     f"image {'ok' if bad.ok else 'NOT ok'} | {_verdict(bool(bad.ok) and bad.downloaded <= whole)} |")
        L += write_goals(r)
        cached = r.speeds.get("compatible-cached_s_per_GiB")
        if cached is not None:
            note = "" if r.image_bytes >= 2**30 else " (a fixed ~0.5 s of Python start-up, imports and signature " \
                "check is most of it on an image this small: see the 1 GiB row and the growth row)"
            L.append(f"| {r.spec}: CPU with a cached index ≤ {GOAL_CACHED_S_PER_GIB:.0f} s/GiB (whole `otad install` "
                     f"process){note} | {cached:.2f} s/GiB | {_verdict(cached <= GOAL_CACHED_S_PER_GIB)} |")
    if "f1" in by:
        for key in ("compatible-cached", "fine"):
            row = by["f1"].rows.get(key)
            if row and row.requests is not None:
                L.append(f"| f1: ≤ {GOAL_MULTIPART_REQUESTS} requests in multipart mode ({row.label}) | {row.requests} "
                         f"| {_verdict(row.requests <= GOAL_MULTIPART_REQUESTS and 'fell back' not in row.detail)} |")
    if "f1" in by and "f1-1g" in by:
        small, big = by["f1"], by["f1-1g"]
        a, b = small.rows.get("compatible-cached"), big.rows.get("compatible-cached")
        if a and b and a.cpu_s is not None and b.cpu_s is not None:
            growth = (b.cpu_s - a.cpu_s) / ((big.image_bytes - small.image_bytes) / 2**30)
            L.append(f"| CPU with a cached index ≤ {GOAL_CACHED_S_PER_GIB:.0f} s/GiB, growth from f1 to f1-1g (start-up "
                     f"cancels) | {a.cpu_s:.2f} → {b.cpu_s:.2f} s: {growth:.2f} s/GiB | "
                     f"{_verdict(growth <= GOAL_CACHED_S_PER_GIB)} |")
        for key in ("compatible-cached", "compatible-libzck", "fine", "debian-cached", "debian-fine"):
            a, b = small.rows.get(key), big.rows.get(key)
            if a and b and a.rss_kB and b.rss_kB:
                spread = (b.rss_kB - a.rss_kB) * 1024 / 1e6
                L.append(f"| f1-1g within {GOAL_RSS_SPREAD_MB:.0f} MB of f1, peak RSS ({a.label}) | "
                         f"{_mb(a.rss_kB)} → {_mb(b.rss_kB)} MB ({spread:+.1f}) | {_verdict(spread <= GOAL_RSS_SPREAD_MB)} |")
    return L


def write_goals(r: SpecResult) -> List[str]:
    """Write avoidance: what slot b was spared, as strace counted it, against what otad says it skipped."""
    fresh = r.rows.get("compatible-cached")
    L = []
    for key in ("inplace-v1", "inplace-v2"):
        row = r.rows.get(key)
        if not (row and fresh and row.written is not None and fresh.written is not None):
            continue
        spared = fresh.written - row.written
        agrees = row.in_place is not None and abs(spared - row.in_place) <= max(0.01 * r.image_bytes, 100_000)
        if key == "inplace-v2":
            ok = row.written <= 0.01 * r.image_bytes and agrees
            goal = "the image slot b already holds is not written again (≤ 1 % of it written)"
        else:
            ok = row.written < fresh.written and agrees
            goal = "chunks slot b already holds at their offset are not written"
        L.append(f"| {r.spec}: {goal}, measured | {row.written / 1e6:.1f} MB written vs {fresh.written / 1e6:.1f} MB "
                 f"into a slot of 0x5a: {spared / 1e6:.1f} MB spared ({100 * spared / r.image_bytes:.0f} % of the "
                 f"image; otad says {(row.in_place or 0) / 1e6:.1f} MB in place) | {_verdict(ok and bool(row.ok))} |")
    return L
