"""The daemon (`otad run`) against DdiFake and a SimDevice: real slots, env, U-Boot emulator, signed bundles.

`run --once` is `Agent(..., AgentOptions(once=True, reboot=False)).run()`; `sim.boot()` stands
for the reboot (U-Boot passes, then S98otad's `otad confirm`). Sleeps are skipped by `Clock`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from otad import config as otad_config
from otad.hawkbit.agent import Agent, AgentOptions
from otad.hawkbit.download import ResumableDownload
from otad.hawkbit.outbox import Outbox
from otad.hawkbit.publish import DaemonPhase, StatusPublisher
from otad.install.status import TargetState, TargetStatusStore
from otad.sim.device import SimDevice, make_image
from otad.state import Phase, State, StateStore
from tests.bundles import ImageSpec, sha256, signed_members, write_bundle
from tests.conftest import run_cli
from tests.hawkbit_fakes import ConnPlan, DdiFake, Feedback, FaultProxy, wait_until
from tests.pki import Pki, make_pki

ACTION = "8"
IMAGE_BYTES = 1 << 20


class Stop(BaseException):
    """Ends a daemon loop from inside a fake sleep (not an Exception: nothing may catch it)."""


class Crash(BaseException):
    """A power cut or kill -9 at a chosen point: the process ends without any cleanup of ours."""


class Clock:
    """Monotonic time in which sleeping costs nothing: real elapsed time plus every sleep asked for."""

    def __init__(self, limit_s: Optional[float] = None) -> None:
        self.skipped = 0.0
        self.limit_s = limit_s

    def now(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.skipped += seconds
        if self.limit_s is not None and self.skipped > self.limit_s:
            raise Stop()


def sim_bundle(workdir: Path, pki: Pki, version: str, *, good: bool = True, size: int = IMAGE_BYTES,
               board: Optional[str] = None, hw_revision: str = "1.0") -> bytes:
    """A signed .swu for the sim: selection stable,copy1 writes slot a, stable,copy2 slot b.

    With `board`, the sections sit under `software.<board>` (goosebit then offers it only to
    devices reporting that hw_boardname)."""
    image = make_image(version, good=good, size=size)
    digest = sha256(image)
    copies = " ".join(f'copy{n} = {{ images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p{n + 1}"; '
                      f'sha256 = "{digest}"; }} ); }};' for n in (1, 2))
    body = f'hardware-compatibility = ["{hw_revision}"]; stable = {{ {copies} }};'
    if board:
        body = f"{board} = {{ {body} }};"
    desc = f'software = {{ version = "{version}"; description = "otad agent test"; {body} }};\n'.encode()
    work = workdir / f"bundle-{hashlib.sha256(desc).hexdigest()[:16]}-{pki.dir.name}"
    if not (work / "update.swu").exists():
        work.mkdir(parents=True)
        write_bundle(work / "update.swu", signed_members(desc, [ImageSpec("rootfs.img", image, "")], pki, work))
    return (work / "update.swu").read_bytes()


def hawkbit_section(url: str, **extra: Any) -> str:
    settings: Dict[str, Any] = {"url": url, "controller_id": "dev-01", "poll_min_s": 1, "feedback_interval_s": 0.05,
                                "read_timeout_s": 2, "connect_timeout_s": 2, "backoff_cap_s": 60}
    settings.update(extra)
    body = " ".join(f"{k} = {json.dumps(v)};" for k, v in settings.items())
    return f"hawkbit = {{ {body} }};\n"


@dataclass
class Rig:
    fake: DdiFake
    sim: SimDevice
    pki: Pki
    tmp: Path
    clock: Clock

    def config(self) -> otad_config.Config:
        return otad_config.load(str(self.sim.layout.config))

    def agent(self, *, once: bool = True, rng: Optional[random.Random] = None) -> Agent:
        return Agent(self.config(), AgentOptions(once=once, reboot=False, rng=rng or random.Random(7),
                                                 sleep=self.clock.sleep, monotonic=self.clock.now))

    def run(self) -> int:
        """`otad run --once --no-reboot` in-process."""
        return self.agent().run()

    def bundle(self, version: str = "2.0", **kw: Any) -> bytes:
        return sim_bundle(self.tmp, self.pki, version, **kw)

    def env(self) -> Dict[str, str]:
        return self.sim.env()

    def env_bytes(self) -> bytes:
        return self.sim.layout.env_path.read_bytes()

    def state(self) -> State:
        return StateStore(str(self.sim.layout.state_dir)).load()

    def feedback(self, action: str = ACTION, kind: str = "deploymentBase") -> List[Feedback]:
        return [f for f in self.fake.feedback_log if f.action_id == action and f.kind == kind]

    def closed(self, action: str = ACTION) -> List[Feedback]:
        return [f for f in self.feedback(action) if f.execution == "closed"]

    def outbox(self) -> Outbox:
        return Outbox(str(self.sim.layout.state_dir / "outbox.json"))

    def slot_record(self, name: str) -> Any:
        targets = TargetStatusStore(str(self.sim.layout.state_dir / "targets.json"))
        return targets.get(str(self.sim.layout.slot_path(name)))


def details(fb: Feedback) -> str:
    return "\n".join(fb.body["status"].get("details", []))


ARMED = {"rootpart": "3", "upgrade_available": "1", "bootcount": "0"}


def armed(env: Dict[str, str]) -> bool:
    return all(env.get(k) == v for k, v in ARMED.items())


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f
    assert not f.server_errors, f.server_errors[0]


def make_rig(tmp_path: Path, fake: DdiFake, pki: Pki, **hawkbit: Any) -> Rig:
    sim = SimDevice.create(tmp_path / "sim", trust_file=pki.ca_pem, extra_config=hawkbit_section(fake.url, **hawkbit))
    sim.boot()  # power on: slot a runs, `otad confirm` finds nothing to do
    return Rig(fake, sim, pki, tmp_path, Clock())


@pytest.fixture
def rig(tmp_path: Path, fake: DdiFake, pki: Pki) -> Rig:
    return make_rig(tmp_path, fake, pki)


def image_in_slot(rig: Rig, slot: str, version: str, good: bool = True, size: int = IMAGE_BYTES) -> bool:
    image = make_image(version, good=good, size=size)
    return rig.sim.read_slot(slot, len(image)) == image


# --------------------------------------------------------------------------- the normal cycle


def test_full_cycle_reports_success_only_after_the_new_slot_booted_and_was_confirmed(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    assert rig.run() == 0
    assert image_in_slot(rig, "b", "2.0") and armed(rig.env())
    assert rig.state().phase is Phase.TRIAL_ARMED and rig.state().action_id == ACTION
    sent = rig.feedback()
    assert not rig.closed(), "closed before the new slot booted"
    assert all(f.execution == "proceeding" for f in sent) and 3 <= len(sent) <= 20
    progress = [f.body["status"]["result"]["progress"] for f in sent if "progress" in f.body["status"]["result"]]
    assert progress and progress[-1] == {"cnt": 100, "of": 100}
    assert "rebooting" in details(sent[-1]) and "slot b" in details(sent[-1])
    assert all(len(f.body["status"].get("details", [])) <= 10 for f in sent)
    assert rig.fake.downloads() == 1

    boot = rig.sim.boot()
    assert boot.slot_name == "b" and not boot.fell_back
    assert not rig.closed(), "the verdict is the daemon's to report"
    assert rig.run() == 0
    closed = rig.closed()
    assert len(closed) == 1 and closed[0].finished == "success" and "succeeded" in details(closed[0])
    assert rig.state().phase is Phase.IDLE
    assert rig.fake.config_data_log[-1]["data"] == {"sw_version": "2.0", "hw_boardname": "rpi0w",
                                                    "hw_revision": "1.0"}
    for _ in range(3):
        assert rig.run() == 0
    assert len(rig.closed()) == 1 and rig.fake.downloads() == 1
    assert {"time", "timestamp"} <= set(closed[0].body)  # today's clock is plausible


def test_broken_image_falls_back_and_is_reported_once_as_a_failure_and_never_reinstalled(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0", good=False), version="2.0")
    assert rig.run() == 0 and armed(rig.env())
    boot = rig.sim.boot()
    assert boot.fell_back and boot.slot_name == "a" and boot.watchdog_resets == 3
    assert rig.run() == 0
    closed = rig.closed()
    assert len(closed) == 1 and closed[0].finished == "failure"
    assert "fell back to slot a" in details(closed[0])
    assert "sw_version" not in rig.fake.config_data_log[-1]["data"]  # slot a was not installed by otad
    for _ in range(3):
        rig.run()
    assert len(rig.closed()) == 1 and rig.fake.downloads() == 1

    # A server that offers it again (goosebit after force_update reuses the id) gets the old
    # verdict once, and nothing is downloaded or armed.
    env = rig.env_bytes()
    rig.fake.actions[ACTION].state = "open"
    for _ in range(3):
        rig.run()
    again = rig.closed()
    assert len(again) == 2 and again[1].finished == "failure" and "not installed again" in details(again[1])
    assert rig.fake.downloads() == 1 and rig.env_bytes() == env


@pytest.mark.parametrize("how", ["server_hash", "untrusted_signer", "artifact_404", "artifact_410"])
def test_a_failed_install_is_reported_with_its_reason_and_leaves_the_env_alone(
        rig: Rig, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = rig.env_bytes()
    if how == "untrusted_signer":
        other = make_pki(rig.tmp / "other-pki", name="rogue", root_cn="rogue root")
        data = sim_bundle(rig.tmp, other, "2.0")
    else:
        data = rig.bundle("2.0")
    rig.fake.offer(ACTION, data, version="2.0")
    if how == "server_hash":
        body = rig.fake.deployment_body

        def wrong_hash(action: Any) -> Dict[str, Any]:
            doc = body(action)
            doc["deployment"]["chunks"][0]["artifacts"][0]["hashes"]["sha256"] = "0" * 64
            return doc

        monkeypatch.setattr(rig.fake, "deployment_body", wrong_hash)
    elif how.startswith("artifact_"):
        rig.fake.fault("artifact", status=int(how[-3:]), times=None)
    assert rig.run() == 0
    closed = rig.closed()
    assert len(closed) == 1 and closed[0].finished == "failure"
    reason = details(closed[0])
    expected = {"server_hash": "expected 0000", "untrusted_signer": "does not chain to a trusted",
                "artifact_404": "HTTP 404", "artifact_410": "HTTP 410"}[how]
    assert "install failed" in reason and expected in reason, reason
    assert rig.env_bytes() == env and rig.state().phase is Phase.IDLE
    if how == "server_hash":
        assert rig.slot_record("b").state is TargetState.FAILED  # the written slot does not count as installed
    artifact_requests = rig.fake.downloads()
    assert artifact_requests <= 1
    rig.fake.actions[ACTION].state = "open"  # offered again: not downloaded again
    for _ in range(2):
        rig.run()
    assert rig.fake.downloads() == artifact_requests and rig.env_bytes() == env


def test_unsupported_deployment_fails_the_action(rig: Rig) -> None:
    rig.fake.offer(ACTION, b"not a bundle", filename="rootfs.img")
    assert rig.run() == 0
    closed = rig.closed()
    assert len(closed) == 1 and closed[0].finished == "failure" and "exactly one *.swu" in details(closed[0])


def test_already_running_version_is_success_without_flashing(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.run()
    rig.sim.boot()
    rig.run()
    rig.fake.offer("9", rig.bundle("2.0"), version="2.0")
    env = rig.env_bytes()
    rig.run()
    closed = rig.closed("9")
    assert len(closed) == 1 and closed[0].finished == "success" and "already installed" in details(closed[0])
    assert rig.fake.downloads() == 1 and rig.env_bytes() == env


# --------------------------------------------------------------------------- skip, windows, cancel


def test_download_only_reports_downloaded_and_never_arms(rig: Rig) -> None:
    env = rig.env_bytes()
    rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", version="2.0")
    assert rig.run() == 0
    sent = rig.feedback()
    assert [f.execution for f in sent][-1] == "downloaded" and not rig.closed()
    assert all(f.finished != "success" for f in sent)
    assert image_in_slot(rig, "b", "2.0") and rig.env_bytes() == env
    assert rig.state().phase is Phase.IDLE and rig.fake.actions[ACTION].state == "closed"
    for _ in range(2):
        rig.run()
    assert rig.env_bytes() == env and rig.fake.downloads() == 1


def test_closed_maintenance_window_defers_the_install_not_the_download(rig: Rig) -> None:
    env = rig.env_bytes()
    action = rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", window="unavailable", version="2.0")
    assert rig.run() == 0
    assert image_in_slot(rig, "b", "2.0") and rig.env_bytes() == env
    assert rig.state().phase is Phase.DOWNLOADED
    assert [f.execution for f in rig.feedback()].count("downloaded") == 1 and not rig.closed()
    agent = rig.agent()
    for _ in range(3):  # one daemon polling: deploymentBase is read again only when `c` changes
        agent.cycle()
    assert rig.env_bytes() == env and rig.state().phase is Phase.DOWNLOADED
    gets = rig.fake.count("deploymentBase")
    agent.cycle()
    assert rig.fake.count("deploymentBase") == gets

    action.update, action.window = "forced", "available"
    action.c += 1
    agent.cycle()
    assert armed(rig.env()) and rig.state().phase is Phase.TRIAL_ARMED
    assert rig.fake.downloads() == 1  # not downloaded again
    rig.sim.boot()
    rig.run()
    assert [f.finished for f in rig.closed()] == ["success"]


def test_a_restart_while_waiting_for_the_window_arms_later_without_downloading_again(rig: Rig) -> None:
    action = rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", window="unavailable", version="2.0")
    rig.run()
    rig.run()  # a new daemon: still waiting
    assert rig.state().phase is Phase.DOWNLOADED and not armed(rig.env())
    action.update, action.window = "attempt", "available"
    action.c += 1
    rig.run()
    assert armed(rig.env()) and rig.fake.downloads() == 1


def test_cancel_during_the_download_stops_it_and_is_confirmed(rig: Rig) -> None:
    env = rig.env_bytes()
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.fake.fault("artifact", rate_bps=250_000, times=None)  # ~4 s for the bundle (its head, then the rest)

    def cancel_once_downloading() -> None:
        if wait_until(lambda: rig.fake.downloads() > 0, 10):
            rig.fake.cancel(ACTION)

    canceller = threading.Thread(target=cancel_once_downloading)
    canceller.start()
    started = time.monotonic()
    assert rig.run() == 0
    canceller.join()
    assert time.monotonic() - started < 3.5, "the download was not stopped"
    sent = rig.feedback(kind="cancelAction")
    assert [(f.execution, f.finished) for f in sent] == [("closed", "success")]
    assert rig.fake.actions[ACTION].state == "canceled" and not rig.closed()
    assert rig.env_bytes() == env and rig.state().phase is Phase.IDLE
    assert not image_in_slot(rig, "b", "2.0")
    rig.run()
    assert rig.env_bytes() == env and rig.fake.downloads() == 1


def test_cancel_while_waiting_for_the_window_drops_the_unarmed_install(rig: Rig) -> None:
    env = rig.env_bytes()
    rig.fake.offer(ACTION, rig.bundle("2.0"), update="skip", window="unavailable", version="2.0")
    rig.run()
    rig.fake.cancel(ACTION)
    rig.run()
    assert [(f.execution, f.finished) for f in rig.feedback(kind="cancelAction")] == [("closed", "success")]
    assert rig.state().phase is Phase.IDLE and rig.env_bytes() == env


def test_cancel_after_arming_is_rejected_and_the_trial_still_reports(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.run()
    env = rig.env_bytes()
    rig.fake.cancel(ACTION)
    rig.run()
    assert [f.execution for f in rig.feedback(kind="cancelAction")] == ["rejected"]
    assert rig.fake.actions[ACTION].state == "open" and rig.env_bytes() == env
    rig.run()
    assert len(rig.feedback(kind="cancelAction")) == 1
    rig.sim.boot()
    rig.run()
    assert [f.finished for f in rig.closed()] == ["success"]


# --------------------------------------------------------------------------- outages


def test_final_feedback_is_queued_while_the_server_fails_and_survives_restarts(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.run()
    rig.sim.boot()
    rig.fake.fault("deploymentBase/feedback", status=503, headers={"Retry-After": "120"}, times=None)
    assert rig.run() == 0
    assert not rig.closed() and rig.outbox().has_final(ACTION)
    assert rig.state().phase is Phase.IDLE
    rig.run()  # a restarted daemon: still queued, not doubled
    finals = [e for e in rig.outbox().pending() if e.final]
    assert len(finals) == 1 and finals[0].execution == "closed"
    rig.fake._faults.clear()
    rig.run()
    assert [f.finished for f in rig.closed()] == ["success"] and not rig.outbox().pending()
    rig.run()
    assert len(rig.closed()) == 1


def test_server_unreachable_during_the_final_then_back(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.run()
    rig.sim.boot()
    text = rig.sim.layout.config.read_text().replace(rig.fake.url, "http://127.0.0.1:9")  # nothing listens
    rig.sim.layout.config.write_text(text)
    assert rig.run() == 1  # unreachable: run --once says so
    assert rig.outbox().has_final(ACTION) and not rig.closed()
    rig.sim.layout.config.write_text(text.replace("http://127.0.0.1:9", rig.fake.url))
    assert rig.run() == 0
    assert [f.finished for f in rig.closed()] == ["success"]


def poll_delays(rig: Rig, limit_s: float, agent: Optional[Agent] = None,
                **rig_kw: Any) -> Tuple[List[float], Agent]:
    """Run the real loop (not --once) for `limit_s` of skipped time; the delay each cycle chose."""
    rig.clock.limit_s = rig.clock.skipped + limit_s
    agent = agent or rig.agent(once=False, **rig_kw)
    delays: List[float] = []
    cycle = agent.cycle

    def recorded() -> float:
        delays.append(cycle())
        return delays[-1]

    agent.cycle = recorded  # type: ignore[method-assign]
    with pytest.raises(Stop):
        agent.run()
    return delays, agent


@pytest.mark.parametrize("refusal", ["401", "403", "404"])
def test_refusals_back_off_slowly_never_a_tight_loop(rig: Rig, refusal: str) -> None:
    if refusal == "401":
        rig.fake.auth = "TargetToken secret"
    elif refusal == "404":
        rig.fake.controller_id = "someone-else"
    else:
        rig.fake.fault("root", status=403, times=None)
    delays, _ = poll_delays(rig, 3600)
    polls = len(rig.fake.requests)
    assert polls == len(delays) and 8 <= polls <= 75, polls  # cap 60 s: ~6 doublings, then ~60 per hour
    assert all(d >= 1 for d in delays) and max(delays) <= 60
    assert delays[:6] == sorted(delays[:6])  # growing


def test_retry_after_is_honoured_and_5xx_backs_off(rig: Rig) -> None:
    rig.fake.sleep = "00:01:00"
    agent = rig.agent(once=False, rng=random.Random(5))
    agent.cycle()  # the server's sleep is known: 60 s
    rig.fake.fault("root", status=429, headers={"Retry-After": "120"})
    rig.fake.fault("root", status=503, headers={"Retry-After": "120"}, times=2)
    rig.fake.fault("root", status=500, times=8)
    delays, _ = poll_delays(rig, 1500, agent)
    assert delays[:3] == [120.0, 120.0, 120.0]
    errors, after = delays[3:11], delays[11:]
    assert all(1 <= d <= 60 for d in errors) and len(set(errors)) == 8  # full jitter, up to the poll interval
    assert after and all(54 <= d <= 60 for d in after)
    assert rig.fake.count("root") == len(delays) + 1


def test_polls_follow_the_servers_sleep_with_downward_jitter(rig: Rig) -> None:
    rig.fake.sleep = "00:01:00"
    delays, _ = poll_delays(rig, 3600, rng=random.Random(3))
    assert len(delays) >= 55
    assert all(54.0 <= d <= 60.0 for d in delays) and len({round(d, 3) for d in delays}) > 40
    assert rig.clock.skipped - 3600 < 61  # the first poll came within min(sleep, 60 s) of the start


def test_config_data_once_and_again_when_asked_or_changed(rig: Rig) -> None:
    agent = rig.agent()
    for _ in range(3):
        agent.cycle()
    assert rig.fake.count("configData") == 1
    assert rig.fake.config_data_log[0]["data"] == {"hw_boardname": "rpi0w", "hw_revision": "1.0"}
    rig.fake.config_data_requested = True
    agent.cycle()
    agent.cycle()
    assert rig.fake.count("configData") == 2
    rig.fake.fault("configData", status=400, times=None)
    rig.fake.config_data_requested = True
    agent.cycle()
    agent.cycle()
    assert rig.fake.count("configData") == 3  # a refusal is not repeated while the data is the same


def test_attributes_from_the_config_are_sent(tmp_path: Path, fake: DdiFake, pki: Pki) -> None:
    sim = SimDevice.create(tmp_path / "sim", trust_file=pki.ca_pem, extra_config=hawkbit_section(fake.url).replace(
        "};\n", 'attributes = { site = "lab"; sw_version = "0.9"; }; };\n'))
    sim.boot()
    rig = Rig(fake, sim, pki, tmp_path, Clock())
    rig.run()
    assert fake.config_data_log[-1]["data"] == {"site": "lab", "sw_version": "0.9", "hw_boardname": "rpi0w",
                                                "hw_revision": "1.0"}


def test_connection_drops_mid_download_resume_with_range(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    data = rig.bundle("2.0", size=2 << 20)
    rig.fake.offer(ACTION, data, version="2.0")
    with FaultProxy(rig.fake.url, [ConnPlan(drop_after=600_000), ConnPlan(drop_after=900_000)]) as proxy:
        href = rig.fake._artifact_href
        monkeypatch.setattr(rig.fake, "_artifact_href", lambda art, rel: proxy.rewrite(href(art, rel)))
        assert rig.run() == 0
        assert proxy.connections == 3 and proxy.bytes_down <= 1.2 * len(data)
    ranges = [r.headers.get("Range") for r in rig.fake.requests if r.endpoint == "artifact"]
    assert ranges[0] == "bytes=0-16383" and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert armed(rig.env()) and image_in_slot(rig, "b", "2.0", size=2 << 20)
    assert not rig.closed()


def test_an_outage_mid_download_is_not_a_failure(rig: Rig) -> None:
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.fake.fault("artifact", drop_after=300_000)
    rig.fake.fault("artifact", status=503, times=None)
    config = rig.config()
    short = otad_config.Config(**{**config.__dict__, "hawkbit": config.hawkbit.__class__(
        **{**config.hawkbit.__dict__, "max_download_attempts": 2})})
    assert Agent(short, AgentOptions(once=True, reboot=False, sleep=rig.clock.sleep,
                                     monotonic=rig.clock.now)).run() == 1
    assert not rig.closed() and rig.state().phase is Phase.IDLE
    rig.fake._faults.clear()
    assert rig.run() == 0 and armed(rig.env())


# --------------------------------------------------------------------------- crashes at phase boundaries


CRASH_POINTS = [
    "after:downloading", "mid-download",
    "before:downloaded", "after:downloaded",
    "before:installed", "after:installed",
    "before:arming", "after:arming", "env-written", "after:trial_armed",
    "before:final_pending", "after:final_pending",
    "final-queued", "final-sending", "final-delivered",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_phase_boundary_never_installs_twice_and_reports_one_true_verdict(
        rig: Rig, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from otad import update
    from otad.boot import bootchooser
    from otad.hawkbit import outbox

    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    installs: List[str] = []
    arms: List[str] = []
    real_install, real_arm = update.install_bundle, update.arm_after_install

    def counted(real: Any, done: List[str]) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            result = real(*a, **k)
            done.append("x")
            return result
        return call

    monkeypatch.setattr(update, "install_bundle", counted(real_install, installs))  # completed installs
    monkeypatch.setattr(update, "arm_after_install", counted(real_arm, arms))  # completed arms

    armed_once = [False]

    def crash_once(condition: bool) -> None:
        if condition and not armed_once[0]:
            armed_once[0] = True
            raise Crash(point)

    when, _, phase = point.partition(":")
    if phase:
        real_transition = StateStore.transition

        def transition(self: StateStore, to: Phase, **fields: Any) -> State:
            # "final_pending" names the step out of it: the verdict reported, the state going idle
            hit = self.load().phase is Phase.FINAL_PENDING if phase == "final_pending" else to.value == phase
            crash_once(when == "before" and hit)
            new = real_transition(self, to, **fields)
            crash_once(when == "after" and hit)
            return new

        monkeypatch.setattr(StateStore, "transition", transition)
    elif point == "mid-download":
        real_read = ResumableDownload.read

        def read(self: Any, n: int = -1) -> bytes:
            crash_once(self.position > 400_000)
            return real_read(self, n)

        monkeypatch.setattr(ResumableDownload, "read", read)
    elif point == "env-written":
        real_arm_trial = bootchooser.Bootchooser.arm_trial

        def arm_trial(self: Any, *a: Any, **k: Any) -> Any:
            real_arm_trial(self, *a, **k)
            crash_once(True)

        monkeypatch.setattr(bootchooser.Bootchooser, "arm_trial", arm_trial)
    else:
        real_put, real_send = outbox.Outbox.put, Agent.send

        def put(self: Any, action_id: str, execution: str, *a: Any, **k: Any) -> Any:
            entry = real_put(self, action_id, execution, *a, **k)
            crash_once(point == "final-queued" and execution == "closed")
            return entry

        def send(self: Agent, item: Any) -> None:
            crash_once(point == "final-sending" and item.execution == "closed")
            real_send(self, item)
            crash_once(point == "final-delivered" and item.execution == "closed")

        monkeypatch.setattr(outbox.Outbox, "put", put)
        monkeypatch.setattr(Agent, "send", send)

    crashed = False
    for _ in range(8):
        try:
            rig.run()
        except Crash:
            crashed = True
            continue
        if rig.state().phase is Phase.TRIAL_ARMED:
            rig.sim.boot()
        elif rig.closed() and not rig.outbox().pending():
            break
    assert crashed, "the crash point was never reached"
    monkeypatch.undo()
    closed = rig.closed()
    assert len(closed) == 1, [(f.execution, f.finished, details(f)) for f in closed]
    running_new = rig.sim.booted_slot() == "b" and image_in_slot(rig, "b", "2.0")
    assert closed[0].finished == ("success" if running_new else "failure"), details(closed[0])
    assert len(arms) <= 1 and len(installs) == 1
    assert rig.state().phase is Phase.IDLE and not rig.outbox().pending()


# --------------------------------------------------------------------------- the writer lock


def test_a_poll_while_another_otad_writes_skips_the_install_and_tells_the_server_nothing(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    from otad.lock import WriterLock

    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    env = rig.env_bytes()
    caplog.set_level("INFO")
    with WriterLock(str(rig.sim.layout.state_dir)).acquire("installing into slot b", slot="b",
                                                            command="otad install other.swu"):
        assert rig.run() == 0
        assert not rig.feedback() and rig.fake.downloads() == 0
        assert rig.env_bytes() == env and rig.state().phase is Phase.IDLE and rig.sim.read_slot("b", 16) == bytes(16)
        assert rig.fake.actions[ACTION].state == "open"
    assert "(otad install other.swu) is installing into slot b since" in caplog.text
    assert rig.run() == 0  # a later poll
    assert image_in_slot(rig, "b", "2.0") and armed(rig.env()) and rig.state().action_id == ACTION


def test_a_busy_lock_at_start_postpones_deciding_the_last_boot_to_a_later_poll(rig: Rig) -> None:
    from otad.lock import WriterLock

    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    assert rig.run() == 0 and armed(rig.env())
    rig.sim.boot(run_init=False)  # the new slot runs; S98otad's `otad confirm` did not
    agent = rig.agent()
    with WriterLock(str(rig.sim.layout.state_dir)).acquire("setting U-Boot env variables"):
        agent.start()
        agent.cycle()
        assert rig.state().phase is Phase.TRIAL_ARMED and not rig.closed()
    agent.cycle()
    closed = rig.closed()
    assert len(closed) == 1 and closed[0].finished == "success" and rig.state().phase is Phase.IDLE


# --------------------------------------------------------------------------- clock, status


def test_a_clock_at_1970_puts_no_time_stamps_in_feedback(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 86400.0 * 3)
    rig.fake.offer(ACTION, rig.bundle("2.0"), version="2.0")
    rig.run()
    rig.sim.boot()
    rig.run()
    assert rig.closed() and rig.fake.feedback_log
    for fb in rig.fake.feedback_log:
        assert "time" not in fb.body and "timestamp" not in fb.body, fb.body


def test_otad_status_shows_what_the_daemon_does(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(rig.sim.layout.config)
    rc, out, _ = run_cli(["--config", config, "status"], capsys)
    assert rc == 0 and "daemon:  not started" in out
    publisher = StatusPublisher(str(rig.sim.layout.state_dir / "daemon.json"))
    publisher.publish(phase=DaemonPhase.DOWNLOADING, action_id="8", version="2.0", bytes_done=3 << 20,
                      bytes_total=6 << 20, server="http://hawkbit")
    rc, out, _ = run_cli(["--config", config, "status"], capsys)
    line = next(x for x in out.splitlines() if x.startswith("daemon:"))
    assert "downloading" in line and "action 8" in line and "3.0 MiB of 6.0 MiB (50%)" in line
    publisher.publish(phase=DaemonPhase.BACKOFF, last_error="HTTP 503", next_poll_in_s=30)
    rc, out, _ = run_cli(["--config", config, "status", "--json"], capsys)
    doc = json.loads(out)
    assert doc["daemon"]["phase"] == "backoff" and doc["daemon"]["last_error"] == "HTTP 503"
    rig.run()
    rc, out, _ = run_cli(["--config", config, "status"], capsys)
    assert "daemon:  stopped" in out and "resume:" not in out


def test_otad_status_shows_where_an_interrupted_download_goes_on(rig: Rig, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from otad import crashpoint
    from otad.hawkbit.journal import DownloadJournal

    rig.fake.offer(ACTION, rig.bundle("2.0", size=3 << 20), version="2.0")
    config = rig.sim.layout.config
    config.write_text(config.read_text().replace("hawkbit = {", "hawkbit = { resume_checkpoint_mib = 1;"))

    def stop_at_the_first_point(name: str) -> None:
        if name == "agent.download_checkpoint":
            raise KeyboardInterrupt  # the process dies here; the journal is already written

    monkeypatch.setattr(crashpoint, "reached", stop_at_the_first_point)
    with pytest.raises(KeyboardInterrupt):
        rig.run()
    saved = DownloadJournal(str(rig.sim.layout.state_dir)).load()
    assert saved is not None and saved.action_id == ACTION
    rc, out, _ = run_cli(["--config", str(config), "status"], capsys)
    assert rc == 0 and f"resume:  action {ACTION} " in out and "goes on from 1." in out
    rc, out, _ = run_cli(["--config", str(config), "status", "--json"], capsys)
    assert json.loads(out)["resume"]["offset"] == saved.point.offset
    journal = rig.sim.layout.state_dir / "resume.json"
    journal.write_text("{broken")
    rc, out, _ = run_cli(["--config", str(config), "status"], capsys)
    assert rc == 0 and "resume:" not in out and journal.exists(), "status only looks"


def test_a_non_ab_config_is_refused(tmp_path: Path, fake: DdiFake) -> None:
    path = tmp_path / "otad.conf"
    path.write_text(f'system = {{ state_dir = "{tmp_path}/state"; }};\n' + hawkbit_section(fake.url))
    with pytest.raises(otad_config.ConfigError, match="slots"):
        Agent(otad_config.load(str(path)), AgentOptions(once=True))



def test_fleet_script_spreads_polls_with_downward_jitter() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[3] / "scripts" / "fleet"
    done = subprocess.run([sys.executable, str(script), "--agents", "20", "--hours", "0.25", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["agents"] == 20 and facts["polls"] >= 20 * 3
    assert 0 <= facts["first_poll_min_s"] <= facts["first_poll_max_s"] <= 60
    assert facts["first_poll_max_s"] - facts["first_poll_min_s"] > 20  # not in lockstep
    assert 270 <= facts["interval_min_s"] <= facts["interval_max_s"] <= 300
    assert facts["requests"] == facts["polls"] + 20  # one configData each, nothing else


def test_network_waits_fit_inside_the_watchdogs(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from otad.hawkbit.agent import settings_from_config

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = rig.config()
    assert (settings_from_config(cfg).connect_timeout_s, settings_from_config(cfg).read_timeout_s) == (2, 2)
    slow = cfg.replace("hawkbit", connect_timeout_s=30.0, read_timeout_s=60.0)
    assert settings_from_config(slow).read_timeout_s == 60
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")  # otad.service: WatchdogSec=60
    assert (settings_from_config(slow).connect_timeout_s, settings_from_config(slow).read_timeout_s) == (15, 15)
    hardware = slow.replace("watchdog", enabled=True, timeout_s=15)
    assert settings_from_config(hardware).read_timeout_s == 3.75


def test_an_idle_wait_wakes_only_as_often_as_the_watchdogs_need(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waking every second cost an idle Pi Zero 0.8 s of CPU per poll (docs/performance.md)."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def sleeps(cfg: otad_config.Config) -> List[float]:
        asked: List[float] = []

        def sleep(seconds: float) -> None:
            asked.append(round(seconds, 1))
            rig.clock.sleep(seconds)

        Agent(cfg, AgentOptions(once=False, reboot=False, sleep=sleep, monotonic=rig.clock.now)).wait(100)
        return asked

    cfg = rig.config()
    assert sleeps(cfg) == [60.0, 40.0]  # nothing to feed
    assert sleeps(cfg.replace("watchdog", enabled=True, timeout_s=15)) == [3.8] * 26 + [2.5]  # a quarter of 15 s
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")  # otad.service: WatchdogSec=60, WATCHDOG=1 due every 30 s
    assert sleeps(cfg) == [15.0] * 6 + [10.0]
