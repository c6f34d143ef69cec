"""`otad run --once` as a subprocess on a SimDevice against a real goosebit 0.2.12.

A good update ends Finished with the new sw_version only after the trial boot was confirmed;
a broken one falls back and ends in Error with the reason in the device log. The bundles put
their sections under `software.rpi0w` so goosebit matches the sim's hw_boardname (docs §9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from otad.sim.device import SimDevice
from otad.state import Phase, StateStore
from tests.goosebit import Goosebit, goosebit  # noqa: F401 - fixture
from tests.pki import Pki
from tests.unit.hawkbit.test_agent import hawkbit_section, sim_bundle

CONTROLLER = "otad-agent-sim-1"


def run_once(sim: SimDevice) -> str:
    done = sim.otad("run", "--once", "--no-reboot", timeout_s=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def release(goosebit: Goosebit, tmp_path: Path, pki: Pki, version: str, *, good: bool) -> int:
    path = tmp_path / f"update-{version}.swu"
    path.write_bytes(sim_bundle(tmp_path, pki, version, good=good, board="rpi0w"))
    software = goosebit.upload(path)
    goosebit.rollout(software, name=f"otad-agent-{version}")
    return software


def env_armed(sim: SimDevice, rootpart: str) -> bool:
    env: Dict[str, str] = sim.env()
    return (env["rootpart"], env["upgrade_available"], env["bootcount"]) == (rootpart, "1", "0")


def test_good_update_finishes_after_the_trial_boot_and_a_broken_one_ends_in_error(
        goosebit: Goosebit, tmp_path: Path, pki: Pki) -> None:
    sim = SimDevice.create(tmp_path / "sim", trust_file=pki.ca_pem,
                           extra_config=hawkbit_section(goosebit.base, controller_id=CONTROLLER,
                                                        read_timeout_s=10, connect_timeout_s=5))
    sim.boot()
    state = StateStore(str(sim.layout.state_dir))
    run_once(sim)  # registers: goosebit offers nothing before the first configData
    device = goosebit.device(CONTROLLER)
    assert (device["hardware"]["model"], device["hardware"]["revision"]) == ("rpi0w", "1.0")

    good = release(goosebit, tmp_path, pki, "2.0.0", good=True)
    run_once(sim)
    assert env_armed(sim, "3") and state.load().phase is Phase.TRIAL_ARMED
    device = goosebit.device(CONTROLLER)
    assert device["last_state"] == "Running" and device["sw_version"] != "2.0.0"
    boot = sim.boot()
    assert boot.slot_name == "b" and not boot.fell_back
    run_once(sim)
    device = goosebit.device(CONTROLLER)
    assert (device["last_state"], device["sw_version"]) == ("Finished", "2.0.0"), device
    assert "succeeded" in goosebit.device_log(CONTROLLER)
    run_once(sim)
    assert goosebit.device(CONTROLLER)["last_state"] == "Finished" and state.load().phase is Phase.IDLE

    broken = release(goosebit, tmp_path, pki, "3.0.0", good=False)
    assert broken != good
    run_once(sim)
    assert env_armed(sim, "2")  # slot a now: b runs
    boot = sim.boot()
    assert boot.fell_back and boot.slot_name == "b"
    run_once(sim)
    device = goosebit.device(CONTROLLER)
    assert (device["last_state"], device["sw_version"]) == ("Error", "2.0.0"), device
    assert "fell back to slot b" in goosebit.device_log(CONTROLLER)
    for _ in range(2):  # in Error goosebit offers nothing; otad stays on b and installs nothing
        run_once(sim)
    assert sim.env()["rootpart"] == "3" and state.load().phase is Phase.IDLE
