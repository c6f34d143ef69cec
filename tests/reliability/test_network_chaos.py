"""A whole update by the daemon through a network that breaks: seeded drops, stalls, 5xx, cut bodies.

Two `FaultProxy`s sit in front of one `DdiFake`: one carries the DDI API (polls, deployment,
feedback), one the artifact, so that the artifact's bytes can be counted. The fake adds its
own endpoint faults (5xx with Retry-After, truncated JSON, short bodies). The daemon runs its
real loop in-process on a clock where sleeping costs nothing; the device is a SimDevice. The
update must end confirmed on the new slot (or cleanly failed), without downloading much more
than the bundle (a resume continues at the byte reached) and without a storm of requests.
OTAD_CHAOS_SEEDS seeds (CI: 4).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from otad.hawkbit import download
from otad.hawkbit.agent import Agent, AgentOptions
from otad.hawkbit.outbox import Outbox
from tests.hawkbit_fakes import ConnPlan, DdiFake, FaultProxy
from tests.pki import Pki
from tests.reliability.conftest import (NEW_VERSION, chaos_seeds, confirm_in_process, hawkbit_section, load_config,
                                        look, new_sim, sim_bundle)
from tests.reliability.report import Recorder

SECTION = "Network chaos: a whole update through FaultProxy and DdiFake"
ACTION = "42"
BUNDLE_IMAGE_BYTES = 512 << 10
WALL_LIMIT_S = 60.0  # real seconds one phase may take before the test calls it a hang
SIM_LIMIT_S = 3 * 3600.0  # simulated seconds one phase may take (backoff is free, but not endless)


class Stop(BaseException):
    """Ends the daemon's loop from inside its sleep (nothing in otad may catch it)."""


class ChaosClock:
    """Monotonic time in which sleeping costs nothing; `until` ends the loop when it holds."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.until: Callable[[], bool] = lambda: False
        self.started = time.monotonic()
        self.sim_started = 0.0

    def now(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.skipped += max(0.0, seconds)
        if self.until():
            raise Stop("done")
        if self.skipped - self.sim_started > SIM_LIMIT_S or time.monotonic() - self.started > WALL_LIMIT_S:
            raise Stop("limit")

    def phase(self, until: Callable[[], bool]) -> None:
        self.until = until
        self.started = time.monotonic()
        self.sim_started = self.skipped


@dataclass
class Chaos:
    """What one seed breaks; `faults` describes each for the report."""

    api_plans: List[ConnPlan] = field(default_factory=list)
    artifact_plans: List[ConnPlan] = field(default_factory=list)
    endpoint_faults: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    faults: List[str] = field(default_factory=list)


def make_chaos(seed: int, bundle_size: int) -> Chaos:
    rng = random.Random(seed)
    chaos = Chaos()
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.5:
            n = rng.randint(0, 600)
            chaos.api_plans.append(ConnPlan(drop_after=n))
            chaos.faults.append(f"API connection dropped after {n} B")
        else:
            n, s = rng.randint(0, 400), round(rng.uniform(0.1, 0.8), 2)
            chaos.api_plans.append(ConnPlan(stall_after=n, stall_s=s))
            chaos.faults.append(f"API connection stalled {s} s after {n} B")
        if rng.random() < 0.3:
            chaos.api_plans.append(ConnPlan())
    timeouts = 0
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(1, bundle_size)
        if rng.random() < 0.6:
            chaos.artifact_plans.append(ConnPlan(drop_after=at))
            chaos.faults.append(f"artifact connection dropped after {at} B")
        else:
            stall = 2.5 if timeouts == 0 and rng.random() < 0.5 else round(rng.uniform(0.1, 0.6), 2)
            timeouts += stall > 2
            chaos.artifact_plans.append(ConnPlan(stall_after=at, stall_s=stall))
            timeout = " (read timeout 2 s)" if stall > 2 else ""
            chaos.faults.append(f"artifact stalled {stall} s after {at} B{timeout}")
    choices: List[Tuple[str, Dict[str, Any], str]] = [
        ("root", {"status": 503, "headers": {"Retry-After": str(rng.randint(1, 30))}}, "root poll 503 + Retry-After"),
        ("root", {"status": 500}, "root poll 500"),
        ("root", {"body": b'{"config": {"polling": {"sle'}, "root poll answered with truncated JSON"),
        ("root", {"content_length": 400}, "root poll body shorter than its Content-Length"),
        ("deploymentBase", {"status": 502}, "deploymentBase 502"),
        ("deploymentBase", {"drop_after": rng.randint(0, 200)}, "deploymentBase body cut"),
        ("artifact", {"status": 503, "headers": {"Retry-After": "5"}}, "artifact 503 + Retry-After"),
        ("artifact", {"drop_after": rng.randint(1, bundle_size - 1)}, "artifact body cut (connection closed)"),
        ("artifact", {"drop_after": rng.randint(1, bundle_size - 1), "chunked": True},
         "artifact body cut with a clean chunked end"),
        ("deploymentBase/feedback", {"status": 503}, "feedback 503"),
        ("deploymentBase/feedback", {"status": 500, "times": 2}, "feedback 500 twice"),
        ("configData", {"status": 500}, "configData 500"),
    ]
    for endpoint, kwargs, text in rng.sample(choices, rng.randint(3, 6)):
        chaos.endpoint_faults.append((endpoint, kwargs))
        chaos.faults.append(text)
    return chaos


@pytest.fixture(scope="module")
def chaos_bundle(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> bytes:
    return sim_bundle(tmp_path_factory.mktemp("chaos"), pki, NEW_VERSION, size=BUNDLE_IMAGE_BYTES).read_bytes()


def closed(fake: DdiFake) -> List[str]:
    return [f.finished for f in fake.feedback_log if f.action_id == ACTION and f.execution == "closed"]


@pytest.fixture
def body_bytes(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Artifact body bytes the daemon received, summed where otad reads the socket (measuring
    only: FaultProxy.bytes_down misses the bytes it sends just before a stall)."""
    received = [0]
    real = download._body_reader

    def counting(response: Any, chunk_bytes: int) -> Callable[[], bytes]:
        read = real(response, chunk_bytes)

        def piece() -> bytes:
            data = read()
            received[0] += len(data)
            return data
        return piece

    monkeypatch.setattr(download, "_body_reader", counting)
    return received


@pytest.mark.parametrize("seed", range(1, chaos_seeds() + 1))
def test_a_whole_update_through_a_faulty_network(seed: int, tmp_path: Path, pki: Pki, chaos_bundle: bytes,
                                                 record: Recorder, body_bytes: List[int]) -> None:
    chaos = make_chaos(seed, len(chaos_bundle))
    started = time.monotonic()
    with DdiFake() as fake, FaultProxy(fake.url, chaos.api_plans) as api, \
            FaultProxy(fake.url, chaos.artifact_plans) as downloads:
        fake.base = api.rewrite(fake.base)  # every link the fake hands out goes through the API proxy ...
        href = fake._artifact_href
        fake._artifact_href = lambda art, rel: downloads.rewrite(href(art, rel))  # type: ignore[method-assign]
        fake.offer(ACTION, chaos_bundle, version=NEW_VERSION)  # ... but the artifact through its own
        for endpoint, kwargs in chaos.endpoint_faults:
            fake.fault(endpoint, **kwargs)
        sim = new_sim(tmp_path / "sim", pki, extra_config=hawkbit_section(api.url, poll_max_s=10))
        clock = ChaosClock()
        state = sim.layout.state_dir / "state.json"

        def phase() -> str:
            return str(json.loads(state.read_text())["phase"]) if state.exists() else "idle"

        def agent() -> Agent:
            return Agent(load_config(sim), AgentOptions(once=False, reboot=False, rng=random.Random(seed),
                                                        sleep=clock.sleep, monotonic=clock.now))

        def run(until: Callable[[], bool]) -> str:
            clock.phase(until)
            try:
                agent().run()
            except Stop as stop:
                return str(stop)
            return "returned"

        armed = run(lambda: phase() == "trial_armed" or bool(closed(fake)))
        booted = sim.boot(init=confirm_in_process) if phase() == "trial_armed" else None
        outbox = Outbox(str(sim.layout.state_dir / "outbox.json"))
        finished = run(lambda: bool(closed(fake)) and not outbox.pending() and phase() == "idle")
        after = look(sim, booted)
        requests = len(fake.requests)
        artifact_bytes = body_bytes[0]
        errors = list(fake.server_errors)

    verdicts = closed(fake)
    ratio = artifact_bytes / len(chaos_bundle)
    request_limit = 30 + 4 * len(chaos.faults)
    problems = list(after.problems)
    if armed != "done" or finished != "done":
        problems.append(f"the daemon did not finish (arming: {armed}, reporting: {finished})")
    if verdicts == ["success"]:
        if after.kind != "completed":
            problems.append(f"reported success but the device is {after.kind}")
    elif verdicts == ["failure"]:
        if after.kind != "not_done":
            problems.append(f"reported failure but the device is {after.kind}")
    else:
        problems.append(f"closing feedbacks: {verdicts}")
    if ratio > 1.2:
        problems.append(f"downloaded {ratio:.2f}x the bundle")
    if requests > request_limit:
        problems.append(f"{requests} requests (limit {request_limit})")
    if errors:
        problems.append(f"fake crashed: {errors[0][-200:]}")
    observed = (f"{after.summary}; closed: {', '.join(verdicts) or 'none'}; artifact bytes {ratio:.2f}x the bundle; "
                f"{requests} requests (limit {request_limit}); {time.monotonic() - started:.1f} s, "
                f"{clock.skipped / 60:.0f} simulated min" + "".join(f"; {p}" for p in problems))
    record.add(SECTION, f"seed {seed}: " + "; ".join(chaos.faults), "FaultProxy (API, artifact) → DdiFake; "
               "otad run in-process on a SimDevice", "confirmed on b (or a clean failure); artifact bytes ≤ 1.2x; "
               "requests bounded", observed, not problems)
    assert not problems, observed
