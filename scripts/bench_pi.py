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
    (swupdate does not fsync; otad does), and the slot's sha256 against the image's; the board's
    busy time (/proc/stat) from the tool's start until after the `sync`, which the CPU goal reads
    (the card's write-back is otad's sys time but the kernel's for swupdate);
  * the same with a 64 KiB image (each tool's fixed cost);
  * `otad --help`, `otad info` and `otad install` start-up (until its `installing` line, the
    last thing before the first byte is written), warm and after drop_caches (cold);
  * one `python3 -X importtime` and one cProfile install (not in the tables);
  * issue 12's delta on the board: tests/delta_fixtures.py's f1 (v1 -> v2, 96 MiB ext4) through
    `otad install` of its self-contained bundle on a file-backed A/B device on the data partition
    (DELTA_DIR): full, delta with slot a's cached index, delta with libzck indexing the source;
  * idle `otad run` against a real goosebit on this host over SLIP (tests/pi/slipnet.py; the
    guest reaches only that port): CPU per poll and RSS from /proc/PID, then the same daemon
    under cProfile (where a poll's CPU goes, not in the tables).

Results go to OUTDIR (default: a directory under /tmp, printed) and, unless --no-report, into
the Pi section of docs/performance.md (between its `bench:pi` markers; the rest is untouched).
Emulated means TCG on a shared 2-core x86 host: compare ratios from the same run, not absolute
seconds with a real Pi.

    scripts/bench --pi [--card sd.img] [--runs 3] [--keep] [--outdir DIR] [--no-report] [--parts delta,idle]

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
PARTS=${2:-all}  # all, or a comma list of: startup,installs,profile,delta,idle (trying one part out)
want() { [ "$PARTS" = all ] || [[ ",$PARTS," == *",$1,"* ]]; }
R=/root/results; rm -rf $R; mkdir -p $R /root/swtmp
IMG_SHA=$(awk '$2=="rootfs.ext4"{print $1}' sums.txt)
TINY_SHA=$(awk '$2=="tiny.img"{print $1}' sums.txt)
SUM=$R/summary.txt
OTAD="otad --config /root/bench.conf"
ts() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
HZ=$(getconf CLK_TCK)
# The board's busy jiffies (user nice system irq softirq; not idle, not iowait), no fork.
busy() { local _c u n s i w q sq _r; read -r _c u n s i w q sq _r < /proc/stat; echo $((u + n + s + q + sq)); }
jiffies() { echo "$1 $2" | awk -v hz=$HZ '{printf "%.2f", ($1 - $2) / hz}'; }
secs() { awk -F': ' '/Elapsed/{n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$1"; }
field() { awk -F': ' -v k="$2" '$1 ~ k {print $2}' "$1"; }
# run TAG KIND(otad|swupdate) SWU SLOT SIZE EXPECT_SHA [cold]
run() {
  local tag=$1 kind=$2 swu=$3 slot=$4 size=$5 want=$6 cold=$7 try=1 ok
  while :; do
    rm -f $slot; truncate -s $size $slot; sync
    [ -n "$cold" ] && echo 3 > /proc/sys/vm/drop_caches
    local b0=$(busy) t0=$EPOCHREALTIME
    if [ $kind = otad ]; then
      /usr/bin/time -v -o $R/$tag.time $OTAD install $swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 2>&1 | ts > $R/$tag.log
    else
      TMPDIR=/root/swtmp /usr/bin/time -v -o $R/$tag.time swupdate -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 -i $swu 2>&1 | ts > $R/$tag.log
    fi
    local t1=$EPOCHREALTIME; sync; local t2=$EPOCHREALTIME b1=$(busy)
    local got=$(sha256sum $slot | cut -d' ' -f1)
    local first=$(grep -m1 -E ' INFO: installing |Installing image|Found installer for stream' $R/$tag.log | cut -d' ' -f1)
    local rc=$(field $R/$tag.time 'Exit status')
    ok=no; [ "$got" = "$want" ] && [ "$rc" = 0 ] && ok=yes
    [ $kind = swupdate ] && ! grep -q 'SWUPDATE successful' $R/$tag.log && ok=no
    local tfirst=-; [ -n "$first" ] && tfirst=$(echo "$first $t0" | awk '{printf "%.2f", $1-$2}')
    echo "$tag kind=$kind try=$try rc=$rc ok=$ok wall=$(secs $R/$tag.time) user=$(field $R/$tag.time 'User time') sys=$(field $R/$tag.time 'System time') rss_kb=$(field $R/$tag.time 'Maximum resident') sync_s=$(echo "$t2 $t1" | awk '{printf "%.2f",$1-$2}') to_first_s=$tfirst board_cpu=$(jiffies $b1 $b0)" | tee -a $SUM
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
if want startup; then
cold; tm help-cold $OTAD --help
cold; tm swhelp-cold swupdate -h
cold; tm info-cold $OTAD info /root/B-tiny.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1
run tiny-otad-cold otad /root/B-tiny.swu /root/tiny-slot.img 65536 $TINY_SHA cold
cat B-zstd.swu B-zlib.swu B-tiny.swu > /dev/null
for i in 1 2 3; do tm pyempty-$i python3 -c pass; done
for i in 1 2 3; do tm help-$i $OTAD --help; done
for i in 1 2 3; do tm swhelp-$i swupdate -h; done
for i in 1 2 3; do tm info-$i $OTAD info /root/B-tiny.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1; done
fi
if want installs; then
cat B-zstd.swu B-zlib.swu B-tiny.swu > /dev/null
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
fi
if want profile; then
rm -f slot.img; truncate -s 64M slot.img
python3 -X importtime /usr/bin/otad --config /root/bench.conf install /root/B-zstd.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 2> $R/importtime.log >/dev/null
python3 -X importtime /usr/bin/otad --help 2> $R/importtime-help.log >/dev/null
rm -f slot.img; truncate -s 64M slot.img
python3 -m cProfile -o $R/install.prof /usr/bin/otad --config /root/bench.conf install /root/B-zstd.swu -k /root/ca.pem -H pi0w:1.0 -e stable,copy1 >/dev/null 2>&1
python3 -c "import pstats; pstats.Stats('$R/install.prof').sort_stats('tottime').print_stats(25)" > $R/profile-tottime.txt 2>&1
python3 -c "import pstats; pstats.Stats('$R/install.prof').sort_stats('cumulative').print_stats(40)" > $R/profile-cum.txt 2>&1
fi
rm -f slot.img tiny-slot.img
# Delta (issue 12) on a file-backed A/B device on the data partition (scripts/bench_pi.py's
# delta_files): slot a holds v1 of tests/delta_fixtures.py's f1, slot b is the target; the
# self-contained bundle's chunks come from the bundle itself (no server).
D=/var/lib/otad/bench-delta
if want delta && [ -d $D ]; then
  V2_SHA=$(awk '$2=="v2.ext4"{print $1}' $D/sums.txt)
  fill_b() { head -c $(stat -c %s $D/dev/mmcblk0p2) /dev/zero | tr '\0' 'Z' > $D/dev/mmcblk0p3; }  # 0x5a
  fresh() { # a device that booted slot a and never installed anything (no state, the first env)
    rm -rf $D/state; cp $D/uboot.env.orig $D/uboot.env
    echo "console=ttyS0 root=/dev/mmcblk0p2 otad.rootpart=2 rootwait" > $D/cmdline; sync
  }
  dinstall() { # dinstall TAG CONF: otad install of v2.swu into slot b, as run() measures
    local tag=$1 conf=$2 b0=$(busy) t0=$EPOCHREALTIME
    /usr/bin/time -v -o $R/$tag.time otad --config $conf install $D/v2.swu 2>&1 | ts > $R/$tag.log
    local t1=$EPOCHREALTIME; sync; local t2=$EPOCHREALTIME b1=$(busy)
    local got=$(sha256sum $D/dev/mmcblk0p3 | cut -d' ' -f1) rc=$(field $R/$tag.time 'Exit status') ok=no
    [ "$got" = "$V2_SHA" ] && [ "$rc" = 0 ] && ok=yes
    echo "$tag kind=otad rc=$rc ok=$ok wall=$(secs $R/$tag.time) user=$(field $R/$tag.time 'User time') sys=$(field $R/$tag.time 'System time') rss_kb=$(field $R/$tag.time 'Maximum resident') sync_s=$(echo "$t2 $t1" | awk '{printf "%.2f",$1-$2}') board_cpu=$(jiffies $b1 $b0)" | tee -a $SUM
    said() { grep -E "$1" $R/$tag.log | tail -1 | cut -d' ' -f2- | sed -e 's/^otad: INFO: //' -e "s|$D/dev/||g"; }
    echo "$tag: $(said 'reused|fetched')" >> $R/delta-said.txt  # what it did
    echo "$tag-plan: $(said ': source .*: reuse')" >> $R/delta-said.txt  # what a Range fetch would take
  }
  cat $D/v2.swu > /dev/null; echo "bundle: $(stat -c %s $D/v2.swu) bytes" >> $R/delta-said.txt
  fresh; dinstall delta-full $D/full.conf
  fill_b; fresh; python3 $D/cache_index.py; dinstall delta-cached $D/delta.conf
  if python3 -c "import sys; from otad.delta import libzck; sys.exit(0 if libzck.available() else 1)"; then
    fill_b; fresh; dinstall delta-libzck $D/delta.conf
  else
    echo "delta-libzck: libzck not found on the card" >> $R/delta-said.txt
  fi
  dpkg-query -W -f='${Package} ${Version}\n' libzck1 >> $R/delta-said.txt 2>&1
fi
# Idle `otad run` (issue 11 §4): SLIP to goosebit on the host (tests/pi/slipnet.py), polls every
# 5 s with nothing to do; -v only so that each poll's request is in its log (counted here).
if want idle && grep -q '^iface sl0' /etc/network/interfaces; then
  ifup sl0 > $R/ifup.log 2>&1
  RUNLOG=/run/otad-bench-run.log
  (otad --config /root/run.conf -v run > $RUNLOG 2>&1 < /dev/null & echo $! > /run/otad-bench.pid)
  P=$(cat /run/otad-bench.pid)
  polls() { grep -c 'DEBUG: GET http://[^ ]*/controller/v1/otad-pi$' $RUNLOG; }
  sample() {
    local st=$(cat /proc/$P/stat 2>/dev/null) b=$(busy)
    [ -n "$st" ] || { echo "idle-$1 gone=yes" | tee -a $SUM; return; }
    st=${st##*) }; set -- $1 $st  # after the command name: field k of stat is ${k-1} (utime 14, stime 15)
    echo "idle-$1 t=$EPOCHREALTIME polls=$(polls) cpu=$(echo "${13} ${14}" | awk -v hz=$HZ '{printf "%.2f", ($1 + $2) / hz}') rss_kb=$(awk '/^VmRSS/{print $2}' /proc/$P/status) hwm_kb=$(awk '/^VmHWM/{print $2}' /proc/$P/status) board=$(echo $b | awk -v hz=$HZ '{printf "%.2f", $1 / hz}')" | tee -a $SUM
  }
  for i in $(seq 1 60); do [ "$(polls)" -ge 3 ] && break; sleep 2; done  # registered, warmed up
  for i in $(seq 0 ${IDLE_SAMPLES:-8}); do sample $i; [ $i = ${IDLE_SAMPLES:-8} ] || sleep 15; done
  kill $P; sleep 2; cp $RUNLOG $R/run.log
  # Where an idle daemon's CPU goes: the same daemon under cProfile for 150 s (not in the figures above).
  (python3 -m cProfile -o $R/idle.prof /usr/bin/otad --config /root/run.conf run > /run/otad-bench-prof.log 2>&1 \
     < /dev/null & echo $! > /run/otad-bench.pid)
  P=$(cat /run/otad-bench.pid); sleep 150; kill $P  # its first poll comes after a random first delay
  for i in $(seq 1 30); do [ -e /proc/$P ] || break; sleep 1; done
  python3 -c "import pstats; pstats.Stats('$R/idle.prof').sort_stats('tottime').print_stats(25)" > $R/idle-profile-tottime.txt 2>&1
  python3 -c "import pstats; pstats.Stats('$R/idle.prof').sort_stats('cumulative').print_stats(40)" > $R/idle-profile-cum.txt 2>&1
fi
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
        "bench-delta": delta_files(work, pki),
    }


DELTA_DIR = "/var/lib/otad/bench-delta"  # on the card's data partition (p4): the slots fit there
DELTA_SPEC = "f1"
DELTA_CACHE = Path.home() / ".cache" / "otad-pi" / "bench-delta-f1"  # the fixture, built once (~20 s)
# Slot a as an otad install of v1 leaves it: its install record and cached index (v1's zck header).
# The guest's copy of tests/delta_fixtures.py's cache_index (the tests are not on the card).
CACHE_INDEX_PY = f"""import hashlib
from otad.delta import slotindex, zck
from otad.install.delta import _stamp
from otad.install.status import INSTALLED, TargetStatusStore

header = open("{DELTA_DIR}/v1.zck.header", "rb").read()
state, slot = "{DELTA_DIR}/state", "{DELTA_DIR}/dev/mmcblk0p2"
records = TargetStatusStore(state + "/targets.json")
records.mark(slot, INSTALLED, version="1.0.0", sha256=hashlib.sha256(header).hexdigest())
slotindex.stage(state, slot, header)
slotindex.commit(state, slot, _stamp(records.get(slot)), zck.parse_header(header).index.image_length)
"""


def delta_files(work: Path, pki: Tuple[Path, Path, Path]) -> Path:
    """The file-backed A/B device of tests/delta_fixtures.py's delta_device, for DELTA_DIR on the
    card: slot a (dev/mmcblk0p2) holds v1 of the f1 fixture, slot b 0x5a; the self-contained
    bundle of v2 (delta into either slot, or the body as a raw zstd image: `stable,copyN-full`);
    delta.conf installs slot b's delta selection, full.conf the full one."""
    from types import SimpleNamespace

    from otad.boot.envimage import build_image as env_image
    from tests import delta_fixtures
    from tests.conftest import AB_DEFAULT_ENV, AB_ENV_SIZE, ab_config_text

    log(f"the delta fixture {DELTA_SPEC} (tests/delta_fixtures.py) in {DELTA_CACHE} and its bundle")
    fx = delta_fixtures.build(DELTA_CACHE, DELTA_SPEC)
    d = work / "bench-delta"
    (d / "dev").mkdir(parents=True)
    shutil.copyfile(fx.v1, d / "dev" / "mmcblk0p2")
    with open(d / "dev" / "mmcblk0p3", "wb") as f:
        f.write(b"\x5a" * fx.v1.stat().st_size)
    _ca, signer, key = pki
    delta_fixtures.self_contained(fx, d / "v2.swu", SimpleNamespace(signer_cert=signer, signer_key=key,
                                                                   chain_pem=None))
    shutil.rmtree(d / "v2.swu.d")
    v1_zck = delta_fixtures.source_zck(fx)
    with open(v1_zck, "rb") as f:
        (d / "v1.zck.header").write_bytes(f.read(delta_fixtures.header_size(v1_zck)))
    (d / "uboot.env.orig").write_bytes(env_image(AB_DEFAULT_ENV, AB_ENV_SIZE))
    (d / "fw_env.config").write_text(f"{DELTA_DIR}/uboot.env 0x0 0x{AB_ENV_SIZE:x}\n")
    conf = ab_config_text(Path(DELTA_DIR), SimpleNamespace(ca_pem="/root/ca.pem"), "delta = { min_interval_s = 0; };")
    (d / "delta.conf").write_text(conf)
    full = conf.replace('selection = "stable,copy2"; }', 'selection = "stable,copy2-full"; }')
    assert full != conf
    (d / "full.conf").write_text(full)
    (d / "cache_index.py").write_text(CACHE_INDEX_PY)
    (d / "sums.txt").write_text(f"{sha256_file(fx.v2)}  v2.ext4\n")
    return d


# ---------------------------------------------------------------------------- the bench card

def bench_card(golden: Path, work: Path, files: Dict[str, Path]) -> Path:
    """A copy of the card with swupdate and GNU time installed in slot a (p2), both daemons off
    at boot, and the bench files in /root."""
    from tests.pi.card import Card
    from tests.pi.server import FREE_THE_PL011

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
            if not path.is_dir():
                shutil.copyfile(path, root / name)
        network(mnt)
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
    data = card.partition(4)  # mounted at /var/lib/otad: the delta device's 200 MiB fit there
    sh(["mount", "-o", f"loop,offset={data.start},sizelimit={data.size}", card.path, mnt])
    try:
        for name, path in files.items():
            if path.is_dir():
                shutil.copytree(path, mnt / Path(DELTA_DIR).relative_to("/var/lib/otad"))
    finally:
        sh(["umount", mnt])
    card.prepare_for_emulator(os.environ.get("OTAD_PI_BOOTARGS", ""))
    card.set_env({"otad_fdt_fixup": FREE_THE_PL011})  # the PL011 as ttyAMA0, for SLIP
    return card.path


def replace_guest_script(card_path: Path, mnt: Path) -> None:
    """This guest script on a kept bench card. Through a mount, not debugfs: the last run ended
    with a power cut, and the kernel's journal replay at the next boot would undo what debugfs
    wrote beside an unreplayed journal (the old script ran again)."""
    from tests.pi.card import Card

    part = Card(card_path).partition(2)
    mnt.mkdir(exist_ok=True)
    sh(["mount", "-o", f"loop,offset={part.start},sizelimit={part.size}", card_path, mnt])
    try:
        (mnt / "root" / "bench.sh").write_text(GUEST_SCRIPT)
    finally:
        sh(["umount", mnt])


def network(root: Path) -> None:
    """SLIP on the PL011 (tests/pi/slipnet.py) when the guest script says `ifup sl0` (not at boot:
    no network while the installs run), and /root/run.conf: the card's otad.conf polling every 5 s."""
    from tests.pi.slipnet import GUEST_INTERFACE

    interfaces = root / "etc" / "network" / "interfaces"
    stanza = GUEST_INTERFACE.replace("auto sl0\n", "")
    assert stanza != GUEST_INTERFACE
    interfaces.write_text(interfaces.read_text() + "\n" + stanza)
    conf, count = re.subn(r"(?m)^(\s*)poll_min_s = 30;", r"\1poll_min_s = 5;",
                          (root / "etc" / "otad" / "otad.conf").read_text())
    assert count == 1
    (root / "root" / "run.conf").write_text(conf)


def run_on_board(card_path: Path, outdir: Path, runs: int, parts: str = "all") -> Dict[str, str]:
    """Boot (its SLIP wire to a goosebit on this host), set the clock, run the guest script; the
    result files' text by name."""
    from tests.goosebit import start_goosebit
    from tests.pi.board import Board
    from tests.pi.card import Card
    from tests.pi.server import CONTROLLER
    from tests.pi.slipnet import SlipNet

    gb_dir = Path(tempfile.mkdtemp(prefix="otad-bench-pi-goosebit-"))
    try:
        with start_goosebit(gb_dir) as gb:
            net = SlipNet(gb_dir, host_port=int(gb.base.rsplit(":", 1)[1]))
            try:
                with Board(Card(card_path), outdir, name="bench", serial0=net.serial0,
                           extra_args=net.qemu_args) as board:
                    board.power_on()
                    net.start()
                    boot = board.wait_boot()
                    log(f"board up (boot marks {boot.marks}); setting the guest clock from the host")
                    board.sh(f"date -u -s @{int(time.time())} >/dev/null")
                    log("running the guest bench (~15-20 min)")
                    board.sh(f"bash /root/bench.sh {runs} {parts} > /root/bench.out 2>&1", timeout=3600)
                    texts = {}
                    for name in ("summary.txt", "importtime.log", "importtime-help.log", "profile-tottime.txt",
                                 "profile-cum.txt", "delta-said.txt", "run.log", "ifup.log",
                                 "idle-profile-tottime.txt", "idle-profile-cum.txt"):
                        texts[name] = board.sh(f"cat /root/results/{name}", timeout=300, check=False)
                    board.sh("sync")
                try:  # what the server saw of the idle daemon
                    device = gb.device(CONTROLLER)
                    texts["goosebit.txt"] = (f"device {CONTROLLER}: last_state {device.get('last_state')}, "
                                             f"hardware {device.get('hardware')}, sw_version {device.get('sw_version')}")
                except AssertionError as exc:
                    texts["goosebit.txt"] = f"device {CONTROLLER}: not known to goosebit ({exc})"
                texts["goosebit.txt"] += f"; SLIP carried {net.from_guest} packets out, {net.to_guest} in"
            finally:
                net.close()
    finally:
        shutil.rmtree(gb_dir, ignore_errors=True)
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
             "not fsync; otad starts the write-back of every 4 MiB and fdatasyncs every 32 MiB and at the end). "
             "Every counted install wrote the right bytes (sha256 of the slot against the image's). Process CPU = user+sys of the tool and its children (GNU "
             "time), with user and sys apart; board CPU = the board's busy time from /proc/stat (user, nice, system, "
             "irq, softirq; not idle or iowait) from the tool's start until the data is on the card (after the "
             "`sync`): otad starts and waits for the card's write-back in its own process, swupdate leaves it to the "
             "kernel's flusher threads and the `sync`, which its process CPU does not count; the board CPU counts "
             "both the same way (and also the shell's timestamping of the log lines). "
             "RSS = GNU time's maximum resident set "
             f"(largest single process). {runs} runs per tool and codec, interleaved (otad first in odd runs, "
             "swupdate first in even ones), bundles in the page cache; median (min–max).", ""]
    lines += ["| bundle | tool | wall s | wall + sync s (data on card) | process CPU s | user s | sys s | "
              "board CPU s (until data on card) | peak RSS MB | start → `installing` s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
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
                          "cpu": med([cpu(r) for r in rs]), "board": med([_num(r, "board_cpu") for r in rs]),
                          "first": med(first)}
            lines.append(f"| {label} | {kind}{f' ({bad} failed runs left out)' if bad else ''} | "
                         f"{span([_num(r, 'wall') for r in rs])} | {span([data_on_card(r) for r in rs])} | "
                         f"{span([cpu(r) for r in rs])} | {fmt(med([_num(r, 'user') for r in rs]))} | "
                         f"{fmt(med([_num(r, 'sys') for r in rs]))} | {span([_num(r, 'board_cpu') for r in rs])} | "
                         f"{fmt(med(rss), 1)} | "
                         f"{span(first) if kind == 'otad' else '–'} |")
        o, s = meds["otad"], meds["swupdate"]
        ratios[codec] = {k: (o[k] / s[k] if o[k] and s[k] else None) for k in ("wall", "disk", "cpu", "board")}
        ratios[codec]["first"] = o["first"]
    lines += ["", "| ratio otad ÷ swupdate (medians) | zstd | gzip | 64 KiB |", "|---|---|---|---|",
              "| wall (tool only) | " + " | ".join(fmt(ratios[c]["wall"]) for c in ("zstd", "zlib", "tiny")) + " |",
              "| wall + sync (data on the card) | " + " | ".join(fmt(ratios[c]["disk"]) for c in ("zstd", "zlib", "tiny"))
              + " |",
              "| process CPU (user+sys of the tool) | " + " | ".join(fmt(ratios[c]["cpu"]) for c in ("zstd", "zlib", "tiny"))
              + " |",
              "| board CPU until the data is on the card | "
              + " | ".join(fmt(ratios[c]["board"]) for c in ("zstd", "zlib", "tiny")) + " |", ""]

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
        ("CPU ≤ 1.3× swupdate's, zstd (board CPU until the data is on the card)", ratios["zstd"]["board"],
         GOAL_CPU_RATIO, "×"),
        ("CPU ≤ 1.3× swupdate's, gzip (board CPU until the data is on the card)", ratios["zlib"]["board"],
         GOAL_CPU_RATIO, "×"),
        ("`otad install` start → first byte written ≤ 2 s warm (the `installing` line, 64 MiB runs)", first_med,
         GOAL_INSTALL_START_S, " s"),
        ("`otad --help` ≤ 0.5 s warm", help_med, GOAL_HELP_S, " s"),
        ("peak RSS ≤ 40 MB (largest otad install)", max_rss or None, GOAL_RSS_MB, " MB"),
    ]
    lines += ["### Goals on the emulated ARMv6", "", "| goal | measured | verdict |", "|---|---|---|"]
    for label, value, goal, unit in goals:
        lines.append(f"| {label} | {fmt(value)}{unit if value is not None else ''} | {verdict(value, goal)} |")
    idle = idle_figures(rows)
    lines += [f"| idle `otad run` RSS and CPU per poll | {idle} | no goal (issue 11 asks for the figure) |", "",
              "The CPU goal reads the board's CPU until the data is on the card, not the tools' process CPU (ratios "
              f"{fmt(ratios['zstd']['cpu'])}× zstd, {fmt(ratios['zlib']['cpu'])}× gzip above): otad writes the card "
              "back in its own process (fadvise and fdatasync), swupdate in the kernel's flusher threads and the "
              "`sync` after it, which its process CPU does not count, so only the board's total compares the same "
              "work.", ""]
    lines += delta_section(rows, texts)
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


def idle_figures(rows: Dict[str, Dict[str, str]]) -> str:
    """CPU per poll and RSS of the idle daemon, from the guest's samples (first and last)."""
    idle = {int(k.split("-")[1]): r for k, r in rows.items() if re.fullmatch(r"idle-\d+", k)}
    samples = [r for _k, r in sorted(idle.items()) if "cpu" in r]
    if len(samples) < 2:
        return "– (no samples: " + ("the daemon ended" if any(k.startswith("idle-") for k in rows) else
                                    "the idle part did not run") + ")"
    first, last = samples[0], samples[-1]
    polls = (_num(last, "polls") or 0) - (_num(first, "polls") or 0)
    seconds = (_num(last, "t") or 0) - (_num(first, "t") or 0)
    cpu = (_num(last, "cpu") or 0) - (_num(first, "cpu") or 0)
    board = (_num(last, "board") or 0) - (_num(first, "board") or 0)
    rss = [(_num(r, "rss_kb") or 0) / 1000 for r in samples]
    if polls <= 0:
        return f"– (no poll in {seconds:.0f} s)"
    return (f"{cpu / polls * 1000:.0f} ms CPU per poll (user+sys of `otad run`, {polls:.0f} polls in {seconds:.0f} s, "
            f"poll_min_s = 5; the board's busy time {board / polls * 1000:.0f} ms per poll); RSS {min(rss):.1f}–"
            f"{max(rss):.1f} MB over the window, VmHWM {(_num(last, 'hwm_kb') or 0) / 1000:.1f} MB")


DELTA_ROWS = (("delta-full", "full: the bundle's `stable,copy2-full` (the zck body as a raw zstd image)"),
              ("delta-cached", "delta, slot a's cached index (what an otad install of v1 leaves)"),
              ("delta-libzck", "delta, no cached index: the source chunked by libzck (ctypes, Debian's libzck1)"))


def delta_section(rows: Dict[str, Dict[str, str]], texts: Dict[str, str]) -> List[str]:
    """Issue 12's figures on the board: the f1 fixture's v1 -> v2 through `otad install`."""
    said = dict(line.split(": ", 1) for line in texts.get("delta-said.txt", "").splitlines() if ": " in line)
    lines = ["### Delta on the board (issue 12): the f1 fixture, v1 → v2, 96 MiB ext4", "",
             "tests/delta_fixtures.py's f1 (a rebuilt root filesystem: 15 .py files edited, a library rebuilt, a "
             "tool added), its self-contained bundle (sw-description, the zck header, the zck body last; "
             f"{said.get('bundle', '?')}), `otad install` on a file-backed A/B device on the card's data partition "
             "as delta_device builds it (slot a = v1 and booted, slot b = 0x5a, the target; a fresh state and env "
             "before each install). No server: the chunks the source lacks are read from the bundle's last member, "
             "which `otad install` of a local file reads whole (`fetched … with the bundle`); otad's plan line says "
             "what a device would fetch by Range from the bundle's link instead. Measured as the installs above; the "
             "slot's sha256 is v2's in every counted row.", "",
             "| install | wall s | wall + sync s | process CPU s (user / sys) | board CPU s | peak RSS MB | otad's plan → "
             "what it did |",
             "|---|---|---|---|---|---|---|"]
    for tag, label in DELTA_ROWS:
        r = rows.get(tag)
        if r is None:
            lines.append(f"| {label} | – | – | – | – | – | {said.get(tag, 'not run')} |")
            continue
        wall, sync = _num(r, "wall"), _num(r, "sync_s")
        u, sy = _num(r, "user"), _num(r, "sys")
        ok = "" if r.get("ok") == "yes" else f" (FAILED: rc {r.get('rc')}, wrong bytes or error)"
        lines.append(f"| {label}{ok} | {fmt(wall)} | {fmt(wall + sync if wall is not None and sync is not None else None)}"
                     f" | {fmt(u + sy if u is not None and sy is not None else None)} ({fmt(u)} / {fmt(sy)}) | "
                     f"{fmt(_num(r, 'board_cpu'))} | {fmt((_num(r, 'rss_kb') or 0) / 1000, 1)} | "
                     f"{said.get(tag + '-plan') or '–'} → {said.get(tag) or '–'} |")
    if "libzck1" in texts.get("delta-said.txt", ""):
        lines += ["", "On the card: " + next(l for l in texts["delta-said.txt"].splitlines() if "libzck1" in l)
                  + " (Debian's swupdate depends on it)."]
    return lines + [""]


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
    ap.add_argument("--parts", default="all",
                    help="the guest script's parts, comma-separated: startup,installs,profile,delta,idle (default "
                         "all; a partial run writes no report)")
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
            bench, kept = args.bench_card, args.bench_card.parent
            replace_guest_script(bench, work / "mnt")
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
        texts = run_on_board(bench, outdir, args.runs, args.parts)
        load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        others = f"{len(other_boards())} at the end (none at the start: it waited for that)"
        minutes = (time.monotonic() - t0) / 60
        (outdir / "meta.txt").write_text(f"runs={args.runs}\nstarted={started}\nminutes={minutes:.1f}\n"
                                         f"load_start={load_start}\nload_end={load_end}\nothers={others}\n")
        if "BENCH-DONE" not in texts["summary.txt"]:
            raise SystemExit(f"bench --pi: the guest script did not finish; see {outdir}")
        lines = report(parse_summary(texts["summary.txt"]), texts, (outdir / "versions.txt").read_text(),
                       args.runs, started, minutes, (load_start, load_end), others)
        if not args.no_report and args.parts == "all":
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
