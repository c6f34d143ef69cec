#!/usr/bin/env python3
"""`scripts/bench --pi`: otad against Debian's armel swupdate on the emulated Pi Zero W.

A benchmark, not a test. It takes the card scripts/pi-image builds (otad's Debian package on
Debian 12 armel), makes a bench copy of it with Debian's `swupdate` and GNU `time` installed
(swupdate's SysV daemon and otad's daemon disabled at boot, so nothing else runs), copies signed
bundles onto it, boots it on QEMU's raspi0 (tests/pi/board.py), sets the guest clock from the
host (swupdate refuses every bundle at 1970), and runs a guest script that measures, interleaved
(ABBAAB per codec) and warm (the bundles are read once first):

  * install of a 64 MiB ext4 image, zstd -10 and gzip -6, CMS-signed, `cpio -H crc`, into a
    regular file /root/slot.img: wall, user+sys CPU and peak RSS (GNU time -v), then a `sync`
    (swupdate does not fsync; otad does), and the slot's sha256 against the image's;
  * the same with a 64 KiB image (each tool's fixed cost);
  * `otad --help`, `otad info` and `otad install` start-up (until its `installing` line, the
    last thing before the first byte is written), warm and after drop_caches (cold);
  * one `python3 -X importtime` and one cProfile install (not in the tables).

Results go to OUTDIR (default: a directory under /tmp, printed) and, unless --no-report, into
the Pi section of docs/performance.md (between its `bench:pi` markers; the rest is untouched).
Emulated means TCG on a shared 2-core x86 host: compare ratios from the same run, not absolute
seconds with a real Pi.

    scripts/bench --pi [--card sd.img] [--runs 3] [--keep] [--outdir DIR] [--no-report]

Waits until no other emulated board (qemu-system-arm) runs: QEMU is CPU-bound and another
board would distort every number. Needs root (loop mount + chroot to install swupdate; armel
under qemu-user) and network access to the Debian archive; runs scripts/setup and scripts/pi-setup first.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MiB = 1 << 20
REPORT = REPO / "docs" / "performance.md"
PI_BEGIN = "<!-- bench:pi begin: written by scripts/bench --pi; do not edit -->"
PI_END = "<!-- bench:pi end -->"
# Goals on the emulated ARMv6 (issue 11 §4).
GOAL_WALL_RATIO = 1.0   # otad wall until data on card ÷ swupdate's (+ sync)
GOAL_CPU_RATIO = 1.3
GOAL_INSTALL_START_S = 2.0
GOAL_HELP_S = 0.5
GOAL_RSS_MB = 40.0
# Certificates valid from before otad's release-date floor: at 1970 otad checks them at the floor.
PKI_NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
PKI_NOT_AFTER = datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc)
BENCH_PACKAGES = ("swupdate", "time")

SW_DESCRIPTION = """software =
{{
    version = "1.0.0";
    description = "otad pi bench {label}";
    hardware-compatibility = [ "1.0" ];
    stable = {{
        copy1 = {{
            images: (
                {{
                    filename = "{filename}";
                    device = "{device}";
                    type = "raw";
                    compressed = "{compressed}";
                    sha256 = "{sha256}";
                    installed-directly = true;
                }}
            );
        }};
    }};
}}
"""

GUEST_SCRIPT = r"""#!/bin/bash
# Guest side of scripts/bench --pi (written by scripts/bench_pi.py). Results under /root/results.
cd /root
export LC_ALL=C
RUNS=${1:-3}
R=/root/results; rm -rf $R; mkdir -p $R /root/swtmp
IMG_SHA=$(awk '$2=="rootfs.ext4"{print $1}' sums.txt)
TINY_SHA=$(awk '$2=="tiny.img"{print $1}' sums.txt)
SUM=$R/summary.txt
OTAD="otad --config /root/bench.conf"
ts() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
secs() { awk -F': ' '/Elapsed/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }
field() { awk -F': ' -v k="$2" '$1 ~ k {print $2}' "$1"; }
# run TAG KIND(otad|swupdate) SWU SLOT SIZE EXPECT_SHA [cold]
run() {
  local tag=$1 kind=$2 swu=$3 slot=$4 size=$5 want=$6 cold=$7 try=1 ok
  while :; do
    rm -f $slot; truncate -s $size $slot; sync
    [ -n "$cold" ] && echo 3 > /proc/sys/vm/drop_caches
    local t0=$EPOCHREALTIME
    if [ $kind = otad ]; then
      /usr/bin/time -v -o $R/$tag.time $OTAD install $swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 2>&1 | ts > $R/$tag.log
    else
      TMPDIR=/root/swtmp /usr/bin/time -v -o $R/$tag.time swupdate -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 -i $swu 2>&1 | ts > $R/$tag.log
    fi
    local t1=$EPOCHREALTIME; sync; local t2=$EPOCHREALTIME
    local got=$(sha256sum $slot | cut -d' ' -f1)
    local first=$(grep -m1 -E ' INFO: installing |Installing image|Found installer for stream' $R/$tag.log | cut -d' ' -f1)
    local rc=$(field $R/$tag.time 'Exit status')
    ok=no; [ "$got" = "$want" ] && [ "$rc" = 0 ] && ok=yes
    [ $kind = swupdate ] && ! grep -q 'SWUPDATE successful' $R/$tag.log && ok=no
    local tfirst=-; [ -n "$first" ] && tfirst=$(echo "$first $t0" | awk '{printf "%.2f", $1-$2}')
    echo "$tag kind=$kind try=$try rc=$rc ok=$ok wall=$(secs $R/$tag.time) user=$(field $R/$tag.time 'User time') sys=$(field $R/$tag.time 'System time') rss_kb=$(field $R/$tag.time 'Maximum resident') sync_s=$(echo "$t2 $t1" | awk '{printf "%.2f",$1-$2}') to_first_s=$tfirst" | tee -a $SUM
    [ $ok = yes ] && break
    [ $kind = swupdate ] && [ $try -lt 3 ] || break
    try=$((try+1))
  done
}
tm() { # tm TAG cmd...: wall/cpu/rss of a short command
  local tag=$1; shift
  /usr/bin/time -v -o $R/$tag.time "$@" > $R/$tag.out 2>&1
  echo "$tag rc=$(field $R/$tag.time 'Exit status') wall=$(secs $R/$tag.time) user=$(field $R/$tag.time 'User time') sys=$(field $R/$tag.time 'System time') rss_kb=$(field $R/$tag.time 'Maximum resident')" | tee -a $SUM
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
echo "guest: $(uname -m) $(nproc) cpu; $(python3 -V); $(dpkg-query -W -f='${Package} ${Version}; ' swupdate otad)$(date -u +%FT%TZ)" | tee -a $SUM
grep MemTotal /proc/meminfo | tee -a $SUM
cold; tm help-cold $OTAD --help
cold; tm swhelp-cold swupdate -h
cold; tm info-cold $OTAD info /root/B-tiny.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1
run tiny-otad-cold otad /root/B-tiny.swu /root/tiny-slot.img 65536 $TINY_SHA cold
cat B-zstd.swu B-zlib.swu B-tiny.swu > /dev/null
for i in 1 2 3; do tm pyempty-$i python3 -c pass; done
for i in 1 2 3; do tm help-$i $OTAD --help; done
for i in 1 2 3; do tm swhelp-$i swupdate -h; done
for i in 1 2 3; do tm info-$i $OTAD info /root/B-tiny.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1; done
for i in 1 2 3; do
  run tiny-otad-$i otad /root/B-tiny.swu /root/tiny-slot.img 65536 $TINY_SHA
  run tiny-swupdate-$i swupdate /root/B-tiny.swu /root/tiny-slot.img 65536 $TINY_SHA
done
for codec in zstd zlib; do
  for i in $(seq 1 $RUNS); do
    if [ $((i % 2)) = 1 ]; then order="otad swupdate"; else order="swupdate otad"; fi
    for kind in $order; do run $codec-$kind-$i $kind /root/B-$codec.swu /root/slot.img 64M $IMG_SHA; done
  done
done
rm -f slot.img; truncate -s 64M slot.img
python3 -X importtime /usr/bin/otad --config /root/bench.conf install /root/B-zstd.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 2> $R/importtime.log >/dev/null
python3 -X importtime /usr/bin/otad --help 2> $R/importtime-help.log >/dev/null
rm -f slot.img; truncate -s 64M slot.img
python3 -m cProfile -o $R/install.prof /usr/bin/otad --config /root/bench.conf install /root/B-zstd.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 >/dev/null 2>&1
python3 -c "import pstats; pstats.Stats('$R/install.prof').sort_stats('tottime').print_stats(25)" > $R/profile-tottime.txt 2>&1
python3 -c "import pstats; pstats.Stats('$R/install.prof').sort_stats('cumulative').print_stats(40)" > $R/profile-cum.txt 2>&1
rm -f slot.img tiny-slot.img
echo BENCH-DONE | tee -a $SUM
"""


def log(message: str) -> None:
    print(f"bench --pi: {message}", file=sys.stderr, flush=True)


def sh(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, **kw)  # type: ignore[call-overload]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def other_boards() -> List[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system-arm"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def wait_for_free_host(max_wait_s: float) -> None:
    deadline = time.monotonic() + max_wait_s
    while other_boards():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench --pi: another emulated board still runs after {max_wait_s:.0f} s: "
                             + "; ".join(b[:80] for b in other_boards()))
        log("another emulated board runs (qemu-system-arm); waiting for it to end")
        time.sleep(20)


# ---------------------------------------------------------------------------- bundles

def build_image(work: Path) -> Path:
    """64 MiB ext4 over /usr/lib/python3.11 (no dist-packages, site-packages, test, __pycache__)
    plus 4 MiB of random data, as in the planning baseline (pi-perf-baseline.md)."""
    tree = work / "tree"
    src = Path("/usr/lib/python3.11")
    skip = {"dist-packages", "site-packages", "test", "__pycache__"}
    shutil.copytree(src, tree / "python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in skip])
    (tree / "random.bin").write_bytes(os.urandom(4 * MiB))
    img = work / "rootfs.ext4"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    sh(["mkfs.ext4", "-q", "-F", "-d", tree, img])
    shutil.rmtree(tree)
    return img


def make_pki(work: Path) -> Tuple[Path, Path, Path]:
    from tests.pki import issue, write_key, write_pem

    root = issue("otad pi bench CA", ca=True, not_before=PKI_NOT_BEFORE, not_after=PKI_NOT_AFTER)
    signer = issue("otad pi bench signer", issuer=root, not_before=PKI_NOT_BEFORE, not_after=PKI_NOT_AFTER)
    return (write_pem(work / "ca.pem", root), write_pem(work / "signer.pem", signer),
            write_key(work / "signer.key", signer.key))


def build_bundle(work: Path, name: str, image: Path, member: str, compress: Sequence[str], swu_codec: str,
                 device: str, pki: Tuple[Path, Path, Path]) -> Path:
    d = work / name
    d.mkdir()
    with open(image, "rb") as src, open(d / member, "wb") as dst:
        sh(list(compress), stdin=src, stdout=dst)
    (d / "sw-description").write_text(SW_DESCRIPTION.format(
        label=name, filename=member, device=device, compressed=swu_codec, sha256=sha256_file(d / member)))
    _ca, signer, key = pki
    sh(["openssl", "cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig", "-signer", signer,
        "-inkey", key, "-outform", "DER", "-nosmimecap", "-binary"], cwd=d)
    bundle = work / f"{name}.swu"
    with open(bundle, "wb") as f:
        sh(["cpio", "-o", "-H", "crc", "--quiet"], input=f"sw-description\nsw-description.sig\n{member}\n".encode(),
           stdout=f, cwd=d)
    shutil.rmtree(d)
    return bundle


def build_bundles(work: Path) -> Dict[str, Path]:
    log("building the 64 MiB image and the bundles (zstd -10, gzip -6, a 64 KiB one)")
    pki = make_pki(work)
    image = build_image(work)
    tiny = work / "tiny.img"
    tiny.write_bytes(os.urandom(64 << 10))
    (work / "sums.txt").write_text(f"{sha256_file(image)}  rootfs.ext4\n{sha256_file(tiny)}  tiny.img\n")
    return {
        "B-zstd.swu": build_bundle(work, "B-zstd", image, "rootfs.ext4.zst", ["zstd", "-q", "-10", "-c"], "zstd",
                                   "/root/slot.img", pki),
        "B-zlib.swu": build_bundle(work, "B-zlib", image, "rootfs.ext4.gz", ["gzip", "-6", "-n", "-c"], "zlib",
                                   "/root/slot.img", pki),
        "B-tiny.swu": build_bundle(work, "B-tiny", tiny, "tiny.img.zst", ["zstd", "-q", "-10", "-c"], "zstd",
                                   "/root/tiny-slot.img", pki),
        "ca.pem": pki[0],
        "sums.txt": work / "sums.txt",
    }


# ---------------------------------------------------------------------------- the bench card

def bench_card(golden: Path, work: Path, files: Dict[str, Path]) -> Path:
    """A copy of the card with swupdate and GNU time installed in slot a (p2), both daemons off
    at boot, and the bench files in /root."""
    from tests.pi.card import Card

    card = Card.copy_of(golden, work / "bench-sd.img")
    part = card.partition(2)
    mnt = work / "mnt"
    mnt.mkdir()
    sh(["mount", "-o", f"loop,offset={part.start},sizelimit={part.size}", card.path, mnt])
    try:
        sh(["mount", "-t", "proc", "proc", mnt / "proc"])
        resolv = mnt / "etc" / "resolv.conf"
        saved_resolv = resolv.read_bytes() if resolv.exists() and not resolv.is_symlink() else None
        try:
            if resolv.is_symlink():
                resolv.unlink()
            shutil.copyfile("/etc/resolv.conf", resolv)
            policy = mnt / "usr" / "sbin" / "policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
            log("installing swupdate and time into the bench card (apt-get under qemu-user, ~2-4 min)")
            sh(["chroot", mnt, "apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            sh(["chroot", mnt, "apt-get", "install", "-y", "-q", "--no-install-recommends", *BENCH_PACKAGES],
               env=env, stdout=subprocess.DEVNULL)
            sh(["chroot", mnt, "apt-get", "clean"], env=env)
            for service in ("swupdate", "otad"):
                if (mnt / "etc" / "init.d" / service).exists():
                    sh(["chroot", mnt, "update-rc.d", service, "disable"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
            policy.unlink()
        finally:
            if saved_resolv is not None:
                resolv.write_bytes(saved_resolv)
            elif resolv.exists():
                resolv.unlink()
            sh(["umount", mnt / "proc"])
        root = mnt / "root"
        for name, path in files.items():
            shutil.copyfile(path, root / name)
        (root / "bench.sh").write_text(GUEST_SCRIPT)
        (root / "bench.sh").chmod(0o755)
        # No slots: `otad install` writes to the device sw-description names, as swupdate does.
        (root / "bench.conf").write_text("# scripts/bench --pi: no slots, no server\n")
        versions = subprocess.run(["chroot", mnt, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "swupdate",
                                   "otad", "python3", "python3-cryptography", "python3-zstandard",
                                   "python3-asn1crypto", "python3-libconf"],
                                  capture_output=True, text=True).stdout
        (work / "versions.txt").write_text(versions)
    finally:
        sh(["umount", mnt])
    card.prepare_for_emulator(os.environ.get("OTAD_PI_BOOTARGS", ""))
    return card.path


def run_on_board(card_path: Path, outdir: Path, runs: int) -> Dict[str, str]:
    """Boot, set the clock, run the guest script; the result files' text by name."""
    from tests.pi.board import Board
    from tests.pi.card import Card

    with Board(Card(card_path), outdir, name="bench") as board:
        board.power_on()
        boot = board.wait_boot()
        log(f"board up (boot marks {boot.marks}); setting the guest clock from the host")
        board.sh(f"date -u -s @{int(time.time())} >/dev/null")
        log("running the guest bench (~10-15 min)")
        board.sh(f"bash /root/bench.sh {runs} > /root/bench.out 2>&1", timeout=3600)
        texts = {}
        for name in ("summary.txt", "importtime.log", "importtime-help.log", "profile-tottime.txt",
                     "profile-cum.txt"):
            texts[name] = board.sh(f"cat /root/results/{name}", timeout=300, check=False)
        board.sh("sync")
    for name, text in texts.items():
        (outdir / name).write_text(text + "\n")
    return texts


# ---------------------------------------------------------------------------- report

def parse_summary(text: str) -> Dict[str, Dict[str, str]]:
    rows: Dict[str, Dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 1 and all("=" in p for p in parts[1:]):
            rows[parts[0]] = dict(p.split("=", 1) for p in parts[1:])
    return rows


def _num(row: Dict[str, str], key: str) -> Optional[float]:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return None


def med(values: Sequence[Optional[float]]) -> Optional[float]:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def fmt(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def span(values: Sequence[Optional[float]]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "–"
    return f"{statistics.median(got):.2f} ({min(got):.2f}–{max(got):.2f})"


def verdict(value: Optional[float], goal: float) -> str:
    if value is None:
        return "not measured"
    return "**PASS**" if value <= goal else f"**MISS** ({(value / goal - 1) * 100:.0f} % over the goal)"


def import_summary(text: str) -> List[str]:
    """Top-level import subtrees (cumulative) and self-time by origin, from -X importtime."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]), m[4]))
    if not rows:
        return ["(no import-time log)"]
    groups: Dict[str, int] = {}
    for self_us, _cum, _ind, name in rows:
        top = name.split(".")[0]
        key = top if top in ("otad", "cryptography", "asn1crypto", "zstandard", "libconf", "_cffi_backend") \
            else "stdlib and the rest"
        groups[key] = groups.get(key, 0) + self_us
    total = sum(groups.values())
    out = [f"sum of import self-time {total / 1e6:.2f} s over {len(rows)} modules: "
           + ", ".join(f"{k} {v / 1e6:.2f} s" for k, v in sorted(groups.items(), key=lambda kv: -kv[1]))]
    tops = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])[:8]
    out.append("largest top-level subtrees (cumulative): "
               + ", ".join(f"`{n}` {c / 1e6:.2f} s" for _s, c, _i, n in tops))
    return out


def host_startup(work: Path, files: Dict[str, Path], n: int = 5) -> str:
    """The same start-up on this x86 host, for the relative costs: `otad --help` and `otad info` of
    the 64 KiB bundle (every import `install` makes, and the CMS verify), wall (median of n, under
    -X importtime) and the import self-time sum."""
    python = REPO / ".venv" / "bin" / "python"
    conf = work / "host.conf"
    conf.write_text("# no slots\n")
    commands = {"--help": ["--help"],
                "info": ["--config", conf, "info", files["B-tiny.swu"], "-k", files["ca.pem"], "-H", "pi0w:1.0", "-e",
                         "stable,copy1"]}
    out = []
    for label, args in commands.items():
        walls, imports = [], []
        for _ in range(n):
            t = time.perf_counter()
            p = subprocess.run([python, "-X", "importtime", "-m", "otad", *map(str, args)], capture_output=True,
                               text=True)
            walls.append(time.perf_counter() - t)
            imports.append(sum(int(m[1]) for m in re.finditer(r"import time:\s+(\d+) \|", p.stderr)) / 1e3)
        out.append(f"`otad {label}` {statistics.median(walls) * 1e3:.0f} ms wall (under -X importtime), import "
                   f"self-time {statistics.median(imports):.0f} ms")
    return "; ".join(out)


def report(rows: Dict[str, Dict[str, str]], texts: Dict[str, str], versions: str, runs: int,
           started: str, minutes: float, load: Tuple[str, str], others: str = "?") -> List[str]:
    def group(prefix: str) -> List[Dict[str, str]]:
        return [r for k, r in rows.items() if re.fullmatch(prefix, k)]

    def cpu(r: Dict[str, str]) -> Optional[float]:
        u, s = _num(r, "user"), _num(r, "sys")
        return None if u is None or s is None else u + s

    def data_on_card(r: Dict[str, str]) -> Optional[float]:
        w, s = _num(r, "wall"), _num(r, "sync_s")
        return None if w is None or s is None else w + s

    lines = [PI_BEGIN, "## Emulated Raspberry Pi Zero W (QEMU raspi0, TCG — not a real Pi)", "",
             f"Generated by `scripts/bench --pi` on {started} (took {minutes:.0f} min). **Emulated**: QEMU 7.2 "
             "`-M raspi0` (ARMv6 armel, 1 core, TCG on the shared 2-core x86 host above), the card scripts/pi-image "
             "builds (otad's Debian package on Debian 12's python3 packages) with Debian's armel swupdate and GNU "
             "time added, both daemons off at boot. Wall times are dominated by the emulated SD card's write-back "
             "and TCG; a real Pi Zero W will differ in absolute terms: compare ratios within this run. Host load "
             f"(1/5/15 min) at start {load[0]}, at end {load[1]}; other emulated boards (qemu-system-arm) running "
             f"beside this one: {others}.", "",
             "Versions on the card: " + "; ".join(v.strip() for v in versions.splitlines() if v.strip()) + ".", "",
             "Bundles: a 64 MiB ext4 image (`mkfs.ext4 -d` over /usr/lib/python3.11 without dist-/site-packages, "
             "test and __pycache__, plus 4 MiB random), `zstd -10` / `gzip -6 -n`, one raw image with "
             "`installed-directly`, `sha256`, selection `stable,copy1`, CMS-signed (RSA-2048), `cpio -o -H crc`, "
             "target the regular file /root/slot.img; and a 64 KiB image (each tool's fixed cost). Each install "
             "starts from a fresh `truncate` + `sync`; `sync` right after it is timed separately (swupdate does "
             "not fsync; otad fdatasyncs every 32 MiB and at the end). Every counted install wrote the right bytes "
             "(sha256 of the slot against the image's). CPU = user+sys, RSS = GNU time's maximum resident set "
             f"(largest single process). {runs} runs per tool and codec, interleaved (otad first in odd runs, "
             "swupdate first in even ones), bundles in the page cache; median (min–max).", ""]
    lines += ["| bundle | tool | wall s | wall + sync s (data on card) | CPU s | peak RSS MB | start → `installing` s |",
              "|---|---|---|---|---|---|---|"]
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    max_rss = 0.0
    for codec, label in (("zstd", "64 MiB zstd -10"), ("zlib", "64 MiB gzip -6"), ("tiny", "64 KiB zstd")):
        meds: Dict[str, Dict[str, Optional[float]]] = {}
        for kind in ("otad", "swupdate"):
            rs = [r for r in group(rf"{codec}-{kind}-\d+") if r.get("ok") == "yes"]
            bad = len(group(rf"{codec}-{kind}-\d+")) - len(rs)
            rss = [(_num(r, "rss_kb") or 0) / 1000 for r in rs]
            if kind == "otad" and rss:
                max_rss = max(max_rss, max(rss))
            first = [_num(r, "to_first_s") for r in rs] if kind == "otad" else []
            meds[kind] = {"wall": med([_num(r, "wall") for r in rs]), "disk": med([data_on_card(r) for r in rs]),
                          "cpu": med([cpu(r) for r in rs]), "first": med(first)}
            lines.append(f"| {label} | {kind}{f' ({bad} failed runs left out)' if bad else ''} | "
                         f"{span([_num(r, 'wall') for r in rs])} | {span([data_on_card(r) for r in rs])} | "
                         f"{span([cpu(r) for r in rs])} | {fmt(med(rss), 1)} | "
                         f"{span(first) if kind == 'otad' else '–'} |")
        o, s = meds["otad"], meds["swupdate"]
        ratios[codec] = {k: (o[k] / s[k] if o[k] and s[k] else None) for k in ("wall", "disk", "cpu")}
        ratios[codec]["first"] = o["first"]
    lines += ["", "| ratio otad ÷ swupdate (medians) | zstd | gzip | 64 KiB |", "|---|---|---|---|",
              "| wall (tool only) | " + " | ".join(fmt(ratios[c]["wall"]) for c in ("zstd", "zlib", "tiny")) + " |",
              "| wall + sync (data on the card) | " + " | ".join(fmt(ratios[c]["disk"]) for c in ("zstd", "zlib", "tiny"))
              + " |",
              "| CPU | " + " | ".join(fmt(ratios[c]["cpu"]) for c in ("zstd", "zlib", "tiny")) + " |", ""]

    def short(prefix: str) -> Tuple[str, Optional[float], Optional[float]]:
        # `otad info` exits 3 when the bundle would be refused here: the work until then is the same
        rs = [r for r in group(prefix) if r.get("rc") in ("0", "3" if prefix.startswith("info") else "0")]
        return (span([_num(r, "wall") for r in rs]), med([_num(r, "wall") for r in rs]), med([cpu(r) for r in rs]))

    lines += ["Start-up (warm unless cold: after `sync; echo 3 > /proc/sys/vm/drop_caches`):", "",
              "| command | wall s | CPU s |", "|---|---|---|"]
    for tag, label in (("pyempty-\\d", "`python3 -c pass`"), ("help-\\d", "`otad --help`"),
                       ("help-cold", "`otad --help` cold"), ("swhelp-\\d", "`swupdate -h`"),
                       ("swhelp-cold", "`swupdate -h` cold"), ("info-\\d", "`otad info` (64 KiB bundle, CMS verify)"),
                       ("info-cold", "`otad info` cold")):
        text, _w, c = short(tag)
        lines.append(f"| {label} | {text} | {fmt(c)} |")
    cold_install = rows.get("tiny-otad-cold", {})
    lines += [f"| `otad install` start → `installing` line, cold (64 KiB bundle) | "
              f"{cold_install.get('to_first_s', '–')} | – |", ""]
    help_med = short("help-\\d")[1]
    first_med = med([ratios[c]["first"] for c in ("zstd", "zlib")])
    goals = [
        ("wall until the data is on the card ≤ 1.0× swupdate's (+ sync), zstd", ratios["zstd"]["disk"],
         GOAL_WALL_RATIO, "×"),
        ("wall until the data is on the card ≤ 1.0× swupdate's (+ sync), gzip", ratios["zlib"]["disk"],
         GOAL_WALL_RATIO, "×"),
        ("CPU ≤ 1.3× swupdate's, zstd", ratios["zstd"]["cpu"], GOAL_CPU_RATIO, "×"),
        ("CPU ≤ 1.3× swupdate's, gzip", ratios["zlib"]["cpu"], GOAL_CPU_RATIO, "×"),
        ("`otad install` start → first byte written ≤ 2 s warm (the `installing` line, 64 MiB runs)", first_med,
         GOAL_INSTALL_START_S, " s"),
        ("`otad --help` ≤ 0.5 s warm", help_med, GOAL_HELP_S, " s"),
        ("peak RSS ≤ 40 MB (largest otad install)", max_rss or None, GOAL_RSS_MB, " MB"),
    ]
    lines += ["### Goals on the emulated ARMv6", "", "| goal | measured | verdict |", "|---|---|---|"]
    for label, value, goal, unit in goals:
        lines.append(f"| {label} | {fmt(value)}{unit if value is not None else ''} | {verdict(value, goal)} |")
    lines += ["| idle `otad run` RSS and CPU per poll | – | not measured: the emulated board has no network to a "
              "server in this bench |", ""]
    lines += ["### Where otad's start-up goes on the board (one `-X importtime` install, inflated by the measurement)",
              ""]
    lines += [f"- install: {s}" for s in import_summary(texts.get("importtime.log", ""))]
    lines += [f"- `--help`: {s}" for s in import_summary(texts.get("importtime-help.log", ""))]
    if texts.get("host-startup.txt", "").strip():
        lines += [f"- the same on the x86 host (medians of 5, `.venv` Python): {texts['host-startup.txt'].strip()}"]
    if texts.get("notes.md", "").strip():  # the reading of this run, written by whoever ran it
        lines += ["", texts["notes.md"].strip()]
    lines += ["", PI_END]
    return lines


def kept_section(path: Path) -> List[str]:
    """The Pi section of an existing report (for scripts/bench, which rewrites the rest), or none."""
    text = path.read_text() if path.exists() else ""
    if PI_BEGIN not in text or PI_END not in text:
        return []
    return ["", PI_BEGIN + text.split(PI_BEGIN, 1)[1].split(PI_END, 1)[0] + PI_END, ""]


def splice(path: Path, section: List[str]) -> None:
    """Put `section` between the Pi markers of `path` (replacing what was there), or append it."""
    text = path.read_text() if path.exists() else "# otad performance\n"
    block = "\n".join(section)
    if PI_BEGIN in text and PI_END in text:
        head, rest = text.split(PI_BEGIN, 1)
        tail = rest.split(PI_END, 1)[1].lstrip("\n")
        text = head + block + ("\n\n" + tail if tail else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --pi", description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", type=Path, help="the card to start from (default: scripts/pi-image's)")
    ap.add_argument("--runs", type=int, default=3, help="64 MiB runs per tool and codec (default 3)")
    ap.add_argument("--outdir", type=Path, help="where results go (default: a new directory under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the bench card and bundles")
    ap.add_argument("--bench-card", type=Path, metavar="IMG",
                    help="boot this bench card of an earlier --keep run again (its work directory's bench-sd.img; "
                         "the guest script on it is replaced by this one's)")
    ap.add_argument("--no-report", action="store_true", help="do not write docs/performance.md")
    ap.add_argument("--report-only", type=Path, metavar="OUTDIR",
                    help="write the Pi section from an earlier run's OUTDIR (summary.txt etc., and notes.md, a "
                         "hand-written reading of the run, if present), no board")
    ap.add_argument("--wait", type=float, default=3600, help="seconds to wait for other boards to end (default 3600)")
    args = ap.parse_args(argv)
    if args.report_only:
        out = args.report_only
        texts = {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".txt", ".log", ".md")}
        meta = dict(line.split("=", 1) for line in texts.get("meta.txt", "").splitlines() if "=" in line)
        lines = report(parse_summary(texts["summary.txt"]), texts, texts.get("versions.txt", ""),
                       int(meta.get("runs", args.runs)), meta.get("started", "?"), float(meta.get("minutes", 0)),
                       (meta.get("load_start", "?"), meta.get("load_end", "?")), meta.get("others", "?"))
        if not args.no_report:
            splice(REPORT, lines)
        print("\n".join(lines))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench --pi: needs root (loop mount and chroot of the card's root filesystem)")
    for setup in ("setup", "pi-setup"):  # the packages it uses (QEMU, qemu-user, debugfs, mtools, pexpect...)
        subprocess.run([str(REPO / "scripts" / setup)], check=True, stdout=sys.stderr)
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="otad-bench-pi-out-"))
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="otad-bench-pi-"))
    try:
        if args.bench_card:
            from tests.pi.card import Card

            bench, kept = args.bench_card, args.bench_card.parent
            Card(bench).ext4_write(2, "/root/bench.sh", GUEST_SCRIPT.encode(), mode=0o755)
            files = {name: kept / name for name in ("B-tiny.swu", "ca.pem")}
            shutil.copyfile(kept / "versions.txt", outdir / "versions.txt")
        else:
            card = args.card or Path(subprocess.run([str(REPO / "scripts" / "pi-image")], check=True,
                                                    stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1])
            files = build_bundles(work)
            bench = bench_card(card, work, files)
            shutil.copyfile(work / "versions.txt", outdir / "versions.txt")
        (outdir / "host-startup.txt").write_text(host_startup(work, files) + "\n")
        wait_for_free_host(args.wait)
        load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        texts = run_on_board(bench, outdir, args.runs)
        load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        others = f"{len(other_boards())} at the end (none at the start: it waited for that)"
        minutes = (time.monotonic() - t0) / 60
        (outdir / "meta.txt").write_text(f"runs={args.runs}\nstarted={started}\nminutes={minutes:.1f}\n"
                                         f"load_start={load_start}\nload_end={load_end}\nothers={others}\n")
        if "BENCH-DONE" not in texts["summary.txt"]:
            raise SystemExit(f"bench --pi: the guest script did not finish; see {outdir}")
        lines = report(parse_summary(texts["summary.txt"]), texts, (outdir / "versions.txt").read_text(),
                       args.runs, started, minutes, (load_start, load_end), others)
        if not args.no_report:
            splice(REPORT, lines)
            log(f"wrote the Pi section of {REPORT}")
        print("\n".join(lines))
        log(f"results in {outdir}")
        failed = [k for k, r in parse_summary(texts["summary.txt"]).items() if r.get("ok") == "no"]
        return 1 if failed else 0
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
