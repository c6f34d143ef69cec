"""Tests of otad's Debian package (debian/): run by scripts/pi-test, which builds the package
(scripts/pi-image) and points OTAD_DEB at it. They need root (a chroot), mmdebstrap and lintian;
without OTAD_DEB nothing here is collected.

The chroot is Debian 12 amd64, not armel: the package is Architecture: all, so what it tests
(maintainer scripts, conffiles, dependencies that apt resolves, /usr/bin/otad on Debian's
python3 packages) is the same on both, and amd64 runs natively in seconds where armel under
qemu-user takes minutes. The armel side is covered by the card: scripts/pi-image installs the
same package into the armel root filesystem and tests/pi boots it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

DEB = os.environ.get("OTAD_DEB")
collect_ignore_glob = [] if DEB else ["test_*.py"]

SUITE = "bookworm"
MIRROR = os.environ.get("MIRROR", "http://deb.debian.org/debian")
# otad's dependencies are downloaded into apt's cache but not installed, so that `apt-get install
# ./otad_*.deb` resolves and installs them itself, without the network.
DEPENDENCIES = ("python3 python3-cryptography python3-asn1crypto python3-zstandard python3-requests python3-libconf "
                "libubootenv-tool e2fsprogs libzck1")  # Depends and Recommends (apt installs both)
MMDEBSTRAP = ["mmdebstrap", "--variant=minbase", "--arch=amd64", "--skip=cleanup/apt",
              f"--customize-hook=chroot \"$1\" apt-get install --download-only -y -q {DEPENDENCIES}",
              SUITE]


@pytest.fixture(scope="session")
def deb() -> Path:
    assert DEB is not None
    return Path(DEB)


@pytest.fixture(scope="session")
def chroot_tar() -> Path:
    """A Debian 12 minbase tarball, cached next to the card (~1 min cold)."""
    cache = Path(os.environ.get("OTAD_PI_CACHE") or Path.home() / ".cache" / "otad-pi")
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(repr((MMDEBSTRAP, MIRROR)).encode()).hexdigest()[:16]
    tar = cache / f"chroot-amd64-{key}.tar"
    with open(cache / ".lock-chroot", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tar.exists():
            partial = tar.with_suffix(".partial.tar")
            env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
            subprocess.run([*MMDEBSTRAP, str(partial), f"deb {MIRROR} {SUITE} main"], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1200)
            partial.rename(tar)
    return tar
