"""The download-only, maintenance-window and cancel cycles with `otad run --once` as a real
subprocess on the simulated device, against the DDI fake (goosebit has none of these).

The in-process variants with every detail are in tests/unit/hawkbit/test_agent.py; these
prove the same on the installed command line, the way the init script runs it.
"""

from __future__ import annotations

import threading
import time

from otad.state import Phase
from tests.hawkbit_fakes import wait_until
from tests.unit.hawkbit.test_agent import (ACTION, Rig, bundle_dir, fake, image_in_slot,  # noqa: F401
                                           rig)


def run(rig: Rig) -> int:
    done = rig.sim.otad("run", "--once", "--no-reboot", timeout_s=120)
    return done.returncode


def test_download_only_cycle_as_a_process(rig: Rig) -> None:
    env = rig.env_bytes()
    rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", version="2.0")
    assert run(rig) == 0
    sent = rig.feedback()
    assert sent[-1].execution == "downloaded" and all(f.finished != "success" for f in sent)
    assert image_in_slot(rig, "b", "2.0") and rig.env_bytes() == env and not rig.closed()
    assert run(rig) == 0 and rig.fake.downloads() == 1


def test_maintenance_window_cycle_as_a_process(rig: Rig) -> None:
    env = rig.env_bytes()
    action = rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", window="unavailable", version="2.0")
    assert run(rig) == 0
    assert image_in_slot(rig, "b", "2.0") and rig.env_bytes() == env and rig.state().phase is Phase.DOWNLOADED
    assert run(rig) == 0 and rig.env_bytes() == env  # still closed: deferred, not installed
    action.update, action.window = "forced", "available"
    action.c += 1
    assert run(rig) == 0
    env_now = rig.sim.env()
    assert (env_now["rootpart"], env_now["upgrade_available"]) == ("3", "1")
    assert rig.fake.downloads() == 1  # the window opened: armed without downloading again
    rig.sim.boot()
    assert run(rig) == 0
    assert [f.finished for f in rig.closed()] == ["success"]


def test_cancel_cycle_as_a_process(rig: Rig) -> None:
    env = rig.env_bytes()
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.fake.fault("artifact", rate_bps=250_000, times=None)

    def cancel_once_downloading() -> None:
        if wait_until(lambda: rig.fake.downloads() > 0, 20):
            rig.fake.cancel(ACTION)

    canceller = threading.Thread(target=cancel_once_downloading)
    canceller.start()
    started = time.monotonic()
    assert run(rig) == 0
    canceller.join()
    assert [(f.execution, f.finished) for f in rig.feedback(kind="cancelAction")] == [("closed", "success")]
    assert rig.env_bytes() == env and rig.state().phase is Phase.IDLE and not rig.closed()
    assert time.monotonic() - started < 30
