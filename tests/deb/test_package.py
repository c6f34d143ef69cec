"""otad's Debian package as a user meets it: lintian, then install (apt-get install ./deb and
dpkg -i), upgrade over an older version, remove and purge in a Debian 12 chroot, with
/usr/bin/otad running on Debian's python3 packages in between."""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Chroot:
    """A throw-away Debian root filesystem with /proc mounted and no service starts."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, command: str, check: bool = True) -> Tuple[int, str]:
        result = subprocess.run(["chroot", str(self.root), "/bin/sh", "-c", command], capture_output=True,
                                text=True, env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8",
                                                "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
        out = result.stdout + result.stderr
        if check and result.returncode != 0:
            raise AssertionError(f"chroot: `{command}` exited {result.returncode}:\n{out}")
        return result.returncode, out

    def out(self, command: str) -> str:
        return self.run(command)[1].strip()

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists() or (self.root / path.lstrip("/")).is_symlink()

    def put(self, source: Path) -> str:
        shutil.copy(source, self.root / "tmp" / source.name)
        return f"/tmp/{source.name}"

    def rc_links(self) -> List[str]:
        """update-rc.d's links as "rcN.d/S" or "rcN.d/K"."""
        return sorted(f"{p.parent.name}/{p.name[0]}" for p in (self.root / "etc").glob("rc?.d/[SK][0-9][0-9]otad"))


@pytest.fixture
def chroot(chroot_tar: Path, tmp_path: Path) -> Iterator[Chroot]:
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", str(chroot_tar), "-C", str(root)], check=True)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # a chroot starts no daemons
    policy.chmod(0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield Chroot(root)
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def package_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def older_deb(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tree built as an older version (VERSION~old1), to upgrade from."""
    work = tmp_path_factory.mktemp("older")
    src = work / "src"
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if not (REPO / name).is_symlink() and not (REPO / name).exists():
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name, follow_symlinks=False)
    changelog = src / "debian" / "changelog"
    version = package_version(deb)
    text = changelog.read_text()
    changelog.write_text(text.replace(f"otad ({version})", f"otad ({version}~old1)", 1))
    subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, check=True, capture_output=True,
                   env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8", "HOME": str(work)})
    [older] = work.glob("otad_*~old1_all.deb")
    return older


def test_lintian_reports_no_errors(deb: Path) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", "--display-info", str(deb)], capture_output=True,
                            text=True, env={"PATH": DEBIAN_PATH, "LC_ALL": "C.UTF-8"})
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWI]: ", line)]
    print("\n".join(tags))  # shown with -rA; the report lists the warnings
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [t for t in tags if t.startswith("E: ")]


def test_contents_leave_out_the_simulator(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for wanted in ("/usr/bin/otad", "/etc/init.d/otad", "/lib/systemd/system/otad.service", "/etc/otad/otad.conf",
                   "/usr/share/otad/boot.cmd", "/usr/share/otad/boot.scr", "/usr/share/otad/fw_env.config",
                   "/usr/share/man/man1/otad.1.gz", "/usr/lib/python3/dist-packages/otad/cli.py"):
        assert wanted in paths, wanted
    assert not [p for p in paths if "otad/sim" in p or p.endswith("otad-sim")]
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/init.d/otad", "/etc/otad/otad.conf"]
    # One source of truth: the packaged files are the repository's.
    extracted = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(extracted)) as tar:
        def member(path: str) -> bytes:
            f = tar.extractfile("." + path)
            assert f is not None
            return f.read()

        assert member("/etc/init.d/otad") == (REPO / "init.d" / "S98otad").read_bytes()
        assert member("/lib/systemd/system/otad.service") == (REPO / "init.d" / "otad.service").read_bytes()
        assert member("/etc/otad/otad.conf") == (REPO / "etc" / "otad.conf").read_bytes()
        assert member("/usr/share/otad/boot.cmd") == (REPO / "etc" / "boot.cmd").read_bytes()
        scr = member("/usr/share/otad/boot.scr")
        assert scr[:4] == b"\x27\x05\x19\x56" and scr[72:] == (REPO / "etc" / "boot.cmd").read_bytes()


def test_install_upgrade_remove_purge(chroot: Chroot, deb: Path, older_deb: Path) -> None:
    new, old = package_version(deb), package_version(older_deb)

    # apt-get install ./older.deb pulls Debian's python3 packages in (most from apt's cache).
    assert not chroot.exists("/usr/bin/python3")
    code, out = chroot.run(f"cd / && apt-get install -y .{chroot.put(older_deb)}")
    assert chroot.out("dpkg-query -W -f '${Version}' otad") == old
    for dependency in ("python3-cryptography", "python3-asn1crypto", "python3-zstandard", "python3-requests",
                       "python3-libconf"):
        assert chroot.out(f"dpkg-query -W -f '${{Status}}' {dependency}") == "install ok installed"
    # No /etc/hwrevision in the chroot: the package says what to do about it, once.
    assert out.count('otad: note: /etc/hwrevision does not exist') == 1
    # Enabled at boot as the LSB header says: started in runlevels 2-5, stopped in 0, 1 and 6.
    assert chroot.rc_links() == ["rc0.d/K", "rc1.d/K", "rc2.d/S", "rc3.d/S", "rc4.d/S", "rc5.d/S", "rc6.d/K"]

    # Upgrade with dpkg -i over the older version; a changed conffile stays the user's.
    with open(chroot.root / "etc/otad/otad.conf", "a") as conf:
        conf.write("// local change\n")
    code, out = chroot.run(f"dpkg -i {chroot.put(deb)}")
    assert chroot.out("dpkg-query -W -f '${Version}' otad") == new
    assert (chroot.root / "etc/otad/otad.conf").read_text().endswith("// local change\n")
    assert "Unpacking otad (" + new + ") over (" + old + ")" in out

    # /usr/bin/otad on Debian's python3 and its packages.
    assert chroot.out("head -1 /usr/bin/otad") == "#!/usr/bin/python3"
    assert chroot.out("otad --version") == f"otad {new.split('~')[0].split('-')[0]}"
    # Before the device is set up (README.Debian), otad says what is missing in one line.
    assert chroot.run("otad status", check=False) == (
        2, "otad: error: /etc/fw_env.config: cannot read fw_env.config: No such file or directory\n")
    # Set up as README.Debian says; otad writes the first uboot.env, Debian's fw_printenv reads it.
    chroot.run("cp /usr/share/otad/fw_env.config /etc/ && mkdir -p /boot/firmware && echo 'rpi0w 1.0' > /etc/hwrevision")
    (chroot.root / "tmp/defenv").write_text("bootdelay=2\n")
    chroot.run("otad env set -f /tmp/defenv rootpart 2 bootlimit 3 bootcount 0 upgrade_available 0")
    assert chroot.out("fw_printenv").splitlines() == [
        "bootcount=0", "bootdelay=2", "bootlimit=3", "rootpart=2", "upgrade_available=0"]
    code, status = chroot.run("otad status")
    assert code == 0, status
    assert "slot a /dev/mmcblk0p2:" in status and "slot b /dev/mmcblk0p3:" in status
    assert "env:     rootpart=2 upgrade_available=0 bootcount=0 bootlimit=3" in status
    assert "Traceback" not in status
    assert chroot.run("python3 -c 'import otad.sim'", check=False)[0] != 0
    assert not chroot.exists("/usr/bin/otad-sim")
    assert chroot.out("python3 -c 'import cryptography, zstandard, requests, asn1crypto, libconf; "
                      "print(cryptography.__file__)'").startswith("/usr/lib/python3/dist-packages/")

    # Remove (not purge): configuration and state stay; the init script (a conffile) stays
    # but not executable, so a boot skips it.
    (chroot.root / "var/lib/otad/state.json").write_text("{}")
    chroot.run("apt-get remove -y otad")
    assert not chroot.exists("/usr/bin/otad")
    assert chroot.exists("/etc/otad/otad.conf") and chroot.exists("/var/lib/otad/state.json")
    assert chroot.exists("/etc/init.d/otad") and not os.access(chroot.root / "etc/init.d/otad", os.X_OK)

    # Purge: configuration, state and the boot links go.
    chroot.run("apt-get purge -y otad")
    for gone in ("/etc/init.d/otad", "/etc/otad", "/var/lib/otad", "/lib/systemd/system/otad.service"):
        assert not chroot.exists(gone), gone
    assert chroot.rc_links() == []
    assert chroot.run("dpkg-query -W otad", check=False)[0] != 0

    # dpkg -i on a system that has the dependencies: a plain install.
    chroot.run(f"dpkg -i {chroot.put(deb)}")
    assert chroot.out("dpkg-query -W -f '${Status}' otad") == "install ok installed"
    assert chroot.out("otad --version").startswith("otad ")
