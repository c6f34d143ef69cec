"""A delta install killed with SIGKILL halfway through its chunk download goes on where it stopped.

A real `python -m otad install` fetches the small fixture's chunks from a Range server slowed
to 500 kB/s and is killed -9 once the server has sent half of them; the next `otad install` of
the same bundle must finish the image with at most 10 % more bytes than one uninterrupted run:
chunks already in the target are neither fetched nor written again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.delta_fixtures import DeltaFixture, ab_delta_template, delta_device, small, swugenerator_delta  # noqa: F401
from tests.pki import Pki
from tests.range_server import RangeServer

RATE_BPS = 500_000


@pytest.fixture(scope="module")
def served(small: DeltaFixture) -> Iterator[RangeServer]:  # noqa: F811
    with RangeServer(small.v2_zck.read_bytes(), "starlette", rate_bps=RATE_BPS) as srv:
        yield srv


def otad(config: Path, bundle: Path) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-m", "otad", "--config", str(config), "install", "--no-switch",
                             str(bundle)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_delta_install_killed_at_half_its_chunks_costs_at_most_a_tenth_more(
        small: DeltaFixture, pki: Pki, served: RangeServer, tmp_path: Path) -> None:  # noqa: F811
    bundle = swugenerator_delta(small, tmp_path / "delta.swu", pki,
                                ab_delta_template(f'url = "{served.url}"; max-ranges = "50";'))
    clean = delta_device(tmp_path / "clean", small, pki)
    done = otad(clean.config, bundle)
    assert done.wait(120) == 0, done.communicate()[1]
    whole = served.body_bytes

    served.journal.clear()
    dev = delta_device(tmp_path / "dev", small, pki)
    first = otad(dev.config, bundle)
    deadline = time.monotonic() + 60
    while not (served.journal and served.journal[-1].body_bytes >= whole // 2):
        assert first.poll() is None and time.monotonic() < deadline, "otad ended before half its chunks came"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    before = served.body_bytes
    assert whole // 2 <= before < whole

    second = otad(dev.config, bundle)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert dev.slot("mmcblk0p3").read_bytes() == small.v2.read_bytes()
    again = served.body_bytes - before
    assert again <= whole - before + whole // 10  # what was missing, and little more
    print(f"whole {whole}, killed after {before}, then {again}: {100 * (served.body_bytes - whole) / whole:.1f} % extra")
    assert served.body_bytes <= whole * 1.10, (before, again, whole)
    assert "already in place, not written" in out
