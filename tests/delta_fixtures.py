"""Delta test fixtures built with Debian's tools: a rootfs-like tree, two ext4 images, zck, a delta bundle;
the opener that sends chunk requests through otad's DDI client; a file-backed A/B device.

The tree is the files of a few installed Debian packages (the same on every Debian 12 machine
that ran scripts/setup), mtimes pinned. v1 is that tree as ext4 (`mke2fs -d` with a fixed
UUID, hash seed and E2FSPROGS_FAKE_TIME: byte-reproducible); v2 is the realistic minor update
of issue 12: 15 .py files edited, one library rebuilt (a byte changed every 32 KiB), one 512 KiB
tool added to /usr/bin and /etc/version changed, rebuilt the same way, so most blocks move. Then `zck -u -h
sha256` of v2 and its header. `delta_bundle` makes the signed `type = "delta"` .swu with
SWUpdate's own swugenerator. Built once per directory (a stamp names the spec), so a pytest
session or a benchmark reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import pytest

from otad.delta.fetch import Opener
from otad.hawkbit.ddi import DdiClient, HawkbitSettings
from tests.conftest import AB_DEFAULT_ENV, AB_ENV_SIZE, ab_config_text

if TYPE_CHECKING:
    from otad.boot.ubootenv import UBootEnv

UUID = "6f1e6b9a-0d4e-4c3b-9a55-2f2d7c1b0a11"
FAKE_TIME = "1700000000"
MTIME = 1700000000
SKIP = re.compile(r"^/usr/share/(doc|man|locale|lintian|info)/")

# (packages, image MiB, copies of the tree): "small" for unit tests, "f1" like the notes' F1,
# "f1-1g" the same change in a 1 GiB image holding the tree ten times.
SMALL = ("libpython3.11-stdlib", "e2fsprogs", "zstd", "busybox", "cpio", "libzstd1")
FULL = SMALL + ("libc6", "coreutils", "libpython3.11-minimal", "python3.11-minimal", "libssl3", "openssl",
                "swupdate", "bash", "util-linux", "libzck1", "zchunk")
SPECS: Dict[str, tuple] = {"small": (SMALL, 24, 1), "f1": (FULL, 96, 1), "f1-1g": (FULL, 1024, 10)}
LIBRARY = "/usr/lib/python3.11/lib-dynload/_decimal.cpython-311-x86_64-linux-gnu.so"


@dataclass(frozen=True)
class DeltaFixture:
    dir: Path
    v1: Path  # the old image: the source slot
    v2: Path  # the new image
    v2_zck: Path  # `zck -u -h sha256` of v2: what a chunk server serves
    v2_header: Path  # its first "Header size" bytes: the bundle member

    @property
    def header_bytes(self) -> bytes:
        return self.v2_header.read_bytes()


def build(workdir: Path, spec: str = "small") -> DeltaFixture:
    """Build (or reuse) the fixture `spec` in `workdir`."""
    packages, mib, copies = SPECS[spec]
    workdir.mkdir(parents=True, exist_ok=True)
    fixture = DeltaFixture(workdir, workdir / "v1.ext4", workdir / "v2.ext4", workdir / "v2.ext4.zck",
                           workdir / "v2.ext4.zck.header")
    stamp = workdir / "fixture.json"
    want = {"spec": spec, "packages": list(packages), "mib": mib, "copies": copies, "version": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == want and fixture.v2_header.exists():
        return fixture
    tree1, tree2 = workdir / "tree1", workdir / "tree2"
    for tree in (tree1, tree2):
        shutil.rmtree(tree, ignore_errors=True)
    make_tree(tree1, packages, copies)
    shutil.copytree(tree1, tree2, symlinks=True)
    edit_tree(tree2, copies)
    for tree in (tree1, tree2):
        pin_mtimes(tree)
    mkext4(tree1, fixture.v1, mib)
    mkext4(tree2, fixture.v2, mib)
    zck(fixture.v2, fixture.v2_zck)
    fixture.v2_header.write_bytes(fixture.v2_zck.read_bytes()[:header_size(fixture.v2_zck)])
    for tree in (tree1, tree2):
        shutil.rmtree(tree)
    stamp.write_text(json.dumps(want))
    return fixture


def package_files(packages: Sequence[str]) -> List[str]:
    """The regular files the packages installed, sorted; docs, manuals and translations left out."""
    files = set()
    for package in packages:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
        for path in listed.splitlines():
            if not SKIP.match(path) and os.path.isfile(path) and not os.path.islink(path):
                files.add(path)
    return sorted(files)


def make_tree(root: Path, packages: Sequence[str], copies: int) -> None:
    files = package_files(packages)
    for copy in range(copies):
        base = root if copies == 1 else root / f"copy{copy}"
        for path in files:
            dest = base / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            os.chmod(dest, os.stat(path).st_mode & 0o777)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "version").write_text("1.0.0\n")


def edit_tree(root: Path, copies: int) -> None:
    """The minor update: 15 .py files, one library, one new file, the version."""
    rng = random.Random(12)
    base = root if copies == 1 else root / "copy0"
    py = sorted(p for p in base.rglob("*.py"))
    for path in rng.sample(py, 15):
        with open(path, "a") as f:
            f.write("# otad delta fixture: edited\n")
    lib = base / LIBRARY.lstrip("/")
    data = bytearray(lib.read_bytes())
    for at in range(4096, len(data), 32768):
        data[at] ^= 0xFF
    lib.write_bytes(bytes(data))
    # /usr/bin sorts before /usr/lib: mke2fs -d fills the image in name order, so every
    # library after the new tool moves by 512 KiB and every later inode's extents change.
    new = base / "usr" / "bin" / "otad-fixture-tool"
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_bytes(rng.randbytes(512 * 1024))
    (root / "etc" / "version").write_text("1.0.1\n")


def pin_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def mkext4(tree: Path, image: Path, mib: int) -> None:
    """`mke2fs -d`, then every inode's ctime and atime pinned: mke2fs copies the tree's ctimes
    (which utime cannot set) and atimes (which its own reading moves), so without this two
    builds of the same tree differ."""
    with open(image, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", UUID,
                    "-E", f"hash_seed={UUID},root_owner=0:0", "-d", str(tree), str(image)],
                   check=True, env=dict(os.environ, E2FSPROGS_FAKE_TIME=FAKE_TIME, LC_ALL="C"))
    commands = image.parent / (image.name + ".debugfs")
    paths = ["/"] + ["/" + str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))]
    commands.write_text("".join(f'sif "{p}" {field} @{MTIME}\n' for p in paths for field in ("ctime", "atime")))
    subprocess.run(["debugfs", "-w", "-f", str(commands), str(image)], check=True, capture_output=True,
                   env=dict(os.environ, E2FSPROGS_FAKE_TIME=FAKE_TIME))
    commands.unlink()


def zck(image: Path, out: Path, *extra: str) -> None:
    """`zck -u -h sha256` as SWUpdate's docs and swugenerator run it."""
    subprocess.run(["zck", "-u", "-h", "sha256", *extra, "-o", str(out), str(image)], check=True,
                   capture_output=True)


def header_size(zck_file: Path) -> int:
    """zck_read_header's "Header size": the bytes swugenerator puts into the bundle."""
    out = subprocess.run(["zck_read_header", "-v", str(zck_file)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Header size: (\d+)", out)
    assert match, out
    return int(match.group(1))


def read_header_table(zck_file: Path) -> List[Dict[str, str]]:
    """`zck_read_header -c`'s chunk table: number, checksums, start, sizes (the parser's oracle)."""
    out = subprocess.run(["zck_read_header", "-c", str(zck_file)], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0].isdigit():
            rows.append(dict(zip(("number", "checksum", "uncompressed", "start", "comp", "size"), fields)))
    return rows


def delta_template(url: str, source: Path, device: Path, *, max_ranges: int = 90) -> str:
    """sw-description for swugenerator: a `type = "delta"` image (selection stable,delta) and an
    8 MiB padding member in another selection (swupdate 2022.12's IPC race on tiny bundles)."""
    return f'''software = {{
    version = "2.0.0";
    hardware-compatibility: [ "1.0" ];
    stable = {{
        delta = {{
            images: ( {{
                filename = "rootfs.ext4";
                type = "delta";
                device = "{device}";
                properties: {{
                    url = "{url}";
                    chain = "raw";
                    source = "{source}";
                    max-ranges = "{max_ranges}";
                }};
            }} );
        }};
        pad = {{
            images: ( {{ filename = "pad.bin"; type = "raw"; device = "/dev/null"; }} );
        }};
    }};
}};
'''


def delta_bundle(fixture: DeltaFixture, out: Path, pki: object, url: str, source: Path, device: Path, *,
                 max_ranges: int = 90) -> Path:
    """The signed delta .swu as users make it: swugenerator runs zck itself and stores the
    header under the image's name; the .zck it leaves beside the artifact is what is served."""
    work = out.parent / (out.name + ".d")
    shutil.rmtree(work, ignore_errors=True)
    art = work / "artifacts"
    art.mkdir(parents=True)
    shutil.copyfile(fixture.v2, art / "rootfs.ext4")
    (art / "pad.bin").write_bytes(bytes(8 << 20))
    (work / "sw-description.in").write_text(delta_template(url, source, device, max_ranges=max_ranges))
    cmd = [os.path.join(os.path.dirname(sys.executable), "swugenerator"), "-s", str(work / "sw-description.in"),
           "-a", str(art), "-o", str(out), "-k", f"CMS,{pki.signer_key},{pki.signer_cert}",  # type: ignore[attr-defined]
           "create"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=work)
    made = art / "rootfs.ext4.zck"
    if hashlib.sha256(made.read_bytes()).digest() != hashlib.sha256(fixture.v2_zck.read_bytes()).digest():
        raise AssertionError("swugenerator's zck differs from the fixture's: zck is not deterministic here")
    return out


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> DeltaFixture:
    """The "small" fixture (24 MiB ext4 v1/v2, zck of v2), built once per session."""
    return build(tmp_path_factory.mktemp("delta") / "small", "small")


# --- chunk requests through otad's DDI client ---------------------------------------------------

def ddi_opener(client: DdiClient) -> Opener:
    """Chunk requests as the daemon sends them: DdiClient.open_url, its own session, auth header,
    TLS settings and status-to-error mapping."""
    return client.open_url


def client_for(url: str, **settings: object) -> DdiClient:
    return DdiClient(HawkbitSettings(url=url.split("/file")[0], controller_id="dev-01", read_timeout_s=10.0,
                                     **settings))  # type: ignore[arg-type]


# --- an A/B device whose running slot holds v1 ---------------------------------------------------

DEFAULT_ENV, ENV_SIZE = AB_DEFAULT_ENV, AB_ENV_SIZE


@dataclass
class DeltaDevice:
    """Files standing for a Pi: slot a (mmcblk0p2, running) holds v1, slot b garbage; a uboot.env."""

    root: Path
    config: Path

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def slot(self, name: str) -> Path:
        return self.dev / name

    def uboot_env(self) -> "UBootEnv":
        from otad.boot.fwenvconfig import load_fw_env_config
        from otad.boot.ubootenv import UBootEnv

        return UBootEnv(load_fw_env_config(str(self.root / "fw_env.config")), lock_path=str(self.root / "fw.lock"))

    def env(self) -> Dict[str, str]:
        return dict(self.uboot_env().read().variables)

    def boot(self, rootpart: str) -> None:
        """As if slot `rootpart` (2: a, 3: b) was confirmed and booted: env and kernel command line."""
        self.uboot_env().update({"rootpart": rootpart, "upgrade_available": "0", "bootcount": "0", "otad_prev": None})
        (self.root / "cmdline").write_text(f"console=ttyS0 root=/dev/mmcblk0p{rootpart} otad.rootpart={rootpart}\n")


def delta_device(root: Path, fixture: DeltaFixture, pki: object, *, extra: str = "", slot_bytes: int = 0,
                 delta: str = "min_interval_s = 0;", slot_b: Optional[Path] = None) -> DeltaDevice:
    """A device whose slot a runs v1; slot b holds `slot_b` (default: filled with 0x5a); `delta` is
    otad.conf's delta section, `extra` more otad.conf. The slots are copied in 1 MiB pieces (1 GiB
    fixtures) and synced, so no write of the setup is left for the install to flush."""
    from otad.boot.envimage import build_image

    size = slot_bytes or fixture.v2.stat().st_size
    (root / "dev").mkdir(parents=True)
    _fill(root / "dev" / "mmcblk0p2", size, fixture.v1)
    _fill(root / "dev" / "mmcblk0p3", size, slot_b)
    (root / "uboot.env").write_bytes(build_image(DEFAULT_ENV, ENV_SIZE))
    (root / "fw_env.config").write_text(f"{root / 'uboot.env'} 0x0 0x{ENV_SIZE:x}\n")
    (root / "cmdline").write_text("console=ttyS0 root=/dev/mmcblk0p2 otad.rootpart=2 rootwait\n")
    config = root / "otad.conf"
    config.write_text(ab_config_text(root, pki, f"delta = {{ {delta} }};\n{extra}\n"))  # type: ignore[arg-type]
    return DeltaDevice(root, config)


def _fill(slot: Path, size: int, image: Optional[Path]) -> None:
    """`size` bytes: `image`, then zeros (None: 0x5a throughout)."""
    piece = b"\x5a" * (1 << 20)
    with open(slot, "wb") as out:
        if image is None:
            for at in range(0, size, len(piece)):
                out.write(piece[:size - at])
        else:
            with open(image, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            out.truncate(size)
        out.flush()
        os.fsync(out.fileno())


def source_zck(fixture: DeltaFixture) -> Path:
    """`zck -u -h sha256` of v1, built once beside the fixture: v1's header is what otad keeps for a
    slot it installed v1 into."""
    v1_zck = fixture.dir / "v1.ext4.zck"
    if not v1_zck.exists():
        zck(fixture.v1, v1_zck.with_name(v1_zck.name + ".tmp"))
        os.replace(v1_zck.with_name(v1_zck.name + ".tmp"), v1_zck)
    return v1_zck


def cache_index(dev: DeltaDevice, slot: str, zck_file: Path, version: str = "1.0.0") -> None:
    """Slot `slot` (mmcblk0p2 or p3) as otad leaves it after installing the image of `zck_file`
    there: its install record and its cached index (the .zck's header)."""
    from otad.delta import slotindex
    from otad.delta import zck as zckfmt
    from otad.install.delta import _stamp
    from otad.install.status import INSTALLED, TargetStatusStore

    with open(zck_file, "rb") as f:
        length = zckfmt.parse_lead(f.read(100)).total_length
        f.seek(0)
        header = f.read(length)
    path = str(dev.slot(slot))
    records = TargetStatusStore(str(dev.state / "targets.json"))
    records.mark(path, INSTALLED, version=version, sha256=hashlib.sha256(header).hexdigest())
    slotindex.stage(str(dev.state), path, header)
    slotindex.commit(str(dev.state), path, _stamp(records.get(path)), zckfmt.parse_header(header).index.image_length)


def ab_delta_template(properties: str, *, version: str = "2.0.0", image: str = "rootfs.ext4",
                      copy1_source: str = "/dev/mmcblk0p3", copy2_source: str = "/dev/mmcblk0p2") -> str:
    """sw-description for swugenerator: selections stable,copy1 (into p2) and stable,copy2 (into
    p3), each a `type = "delta"` image with `properties` (url or zckfile, max-ranges, ...)."""
    def copy(n: int, device: str, src: str) -> str:
        return f'''copy{n} = {{ images: ( {{ filename = "{image}"; type = "delta"; device = "{device}";
                properties: {{ chain = "raw"; source = "{src}"; {properties} }}; }} ); }};'''
    return (f'software = {{ version = "{version}"; hardware-compatibility: [ "1.0" ];\n'
            f'  stable = {{ {copy(1, "/dev/mmcblk0p2", copy1_source)}\n'
            f'             {copy(2, "/dev/mmcblk0p3", copy2_source)} }}; }};\n')


def swugenerator_delta(fixture: DeltaFixture, out: Path, pki: object, template: str) -> Path:
    """The signed delta .swu as swugenerator makes it from `template` and v2 (it runs zck itself)."""
    work = out.parent / (out.name + ".d")
    shutil.rmtree(work, ignore_errors=True)
    art = work / "artifacts"
    art.mkdir(parents=True)
    shutil.copyfile(fixture.v2, art / "rootfs.ext4")
    (work / "sw-description.in").write_text(template)
    cmd = [os.path.join(os.path.dirname(sys.executable), "swugenerator"), "-s", str(work / "sw-description.in"),
           "-a", str(art), "-o", str(out), "-k", f"CMS,{pki.signer_key},{pki.signer_cert}",  # type: ignore[attr-defined]
           "create"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=work)
    return out


def self_contained(fixture: DeltaFixture, out: Path, pki: object, *, board: Optional[str] = None,
                   version: str = "2.0.0", devices: Sequence[str] = ("/dev/mmcblk0p2", "/dev/mmcblk0p3"),
                   max_ranges: int = 50, body_name: str = "rootfs.ext4.zckbody") -> Path:
    """The self-contained layout (docs/delta.md §4, L3): sw-description, .sig, the zck header
    (the delta images' member), the zck body last. stable,copyN: delta into devices[N-1] from the
    other one, chunks from the body by Range; stable,copyN-full: the body as a raw zstd image, for
    SWUpdate and for devices without a source (/work/notes/delta-layout.md: what otad mkswu writes)."""
    from tests.bundles import signed_members, write_bundle

    header = fixture.header_bytes
    body = fixture.v2_zck.read_bytes()[len(header):]
    h, b = hashlib.sha256(header).hexdigest(), hashlib.sha256(body).hexdigest()
    sections = []
    for n, (device, source) in enumerate(((devices[0], devices[1]), (devices[1], devices[0])), 1):
        sections.append(f'''copy{n} = {{ images: ( {{ filename = "rootfs.ext4"; type = "delta"; device = "{device}";
            sha256 = "{h}"; properties: {{ url = "dynamic"; zckfile = "{body_name}"; chain = "raw";
            source = "{source}"; max-ranges = "{max_ranges}"; }}; }} ); }};''')
        sections.append(f'''copy{n}-full = {{ images: ( {{ filename = "{body_name}"; type = "raw"; compressed = "zstd";
            installed-directly = true; device = "{device}"; sha256 = "{b}"; }} ); }};''')
    body_text = f'hardware-compatibility: [ "1.0" ]; stable = {{ {" ".join(sections)} }};'
    if board:
        body_text = f"{board} = {{ {body_text} }};"
    desc = f'software = {{ version = "{version}"; {body_text} }};\n'.encode()
    work = out.parent / (out.name + ".d")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    members = signed_members(desc, [], pki, work) + [("rootfs.ext4", header), (body_name, body)]
    return write_bundle(out, members)
