"""The README's main command, run as a newcomer runs it: `scripts/demo` must end with `demo: OK`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.goosebit import require_goosebit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_runs_both_cycles_and_says_ok() -> None:
    require_goosebit()
    done = subprocess.run([str(REPO / "scripts" / "demo")], capture_output=True, text=True, timeout=900,
                          cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert out.rstrip().endswith("demo: OK")
    assert "init: otad confirm -> confirmed" in out and "init: otad confirm -> fell_back" in out
    assert "state Finished, sw_version 2.0.0" in out and "state Error, sw_version 2.0.0" in out
