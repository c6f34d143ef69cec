"""Trial decisions after a boot, arming and mark-bad, against real env and state files.

Every combination of (phase, booted slot, env slot, upgrade_available, bootcount, otad_prev,
health) is checked against the table of otad.boot.trial's docstring, and a power cut before each
write of a whole update is followed by reboots through the U-Boot emulator until things settle.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

from otad import durable
from otad.boot import slotstatus, trial
from otad.boot.bootchooser import Bootchooser
from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import EnvCopyLocation, EnvLayout
from otad.boot.health import HealthResult
from otad.boot.trial import ConfirmOutcome, Verdict
from otad.boot.slots import BootedSlot, Slot, SlotTable
from otad.boot.ubootenv import UBootEnv
from otad.errors import EnvError, SlotError, StateError
from otad.install.status import FAILED, INSTALLED, INTERRUPTED, TargetStatusStore
from otad.sim.uboot import UBootEmulator
from otad.state import LastResult, Outcome, Phase, State, StateStore
from otad.update import slot_installs

SIZE = 0x4000
A = Slot("a", "/dev/mmcblk0p2", "2", ("stable", "copy1"))
B = Slot("b", "/dev/mmcblk0p3", "3", ("stable", "copy2"))
TABLE = SlotTable((A, B))
STEADY = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
DEFAULT_ENV = {"bootlimit": "3", "rootpart": "2"}  # U-Boot's compiled-in env boots the known-good slot
HEALTHY = HealthResult(True)
SICK = HealthResult(False, ("'check-network': exit status 1: no route",))
OLD_RESULT = LastResult(Outcome.CONFIRMED, "a", "1.0", "earlier", 1.0)


class PowerCut(BaseException):
    """The power goes away: nothing after it runs, no handler catches it."""


class Rig:
    """uboot.env (single copy) + state dir in tmp; every accessor builds fresh objects, as a
    process started after a reboot would."""

    def __init__(self, tmp: Path, variables: Mapping[str, Optional[str]] = STEADY) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.env_path = tmp / "uboot.env"
        self.layout = EnvLayout((EnvCopyLocation(str(self.env_path), 0, SIZE),))
        self.lock = str(tmp / "fw_printenv.lock")
        self.state_dir = str(tmp / "state")
        self.set_env(variables)
        self.boots = 0

    def set_env(self, variables: Mapping[str, Optional[str]]) -> None:
        self.env_path.write_bytes(build_image({k: v for k, v in variables.items() if v is not None}, SIZE))

    def env(self) -> Dict[str, str]:
        return dict(UBootEnv(self.layout, lock_path=self.lock).read().variables)

    def chooser(self) -> Bootchooser:
        return Bootchooser(UBootEnv(self.layout, lock_path=self.lock), TABLE)

    def store(self) -> StateStore:
        return StateStore(self.state_dir)

    def state(self) -> State:
        return self.store().load()

    def set_state(self, state: State) -> None:
        Path(self.state_dir).mkdir(exist_ok=True)
        Path(self.store().path).write_text(json.dumps(state.to_dict()))

    def boot(self) -> Slot:
        self.boots += 1
        env = UBootEnv(self.layout, lock_path=self.lock)
        decision = UBootEmulator(env, default_env=DEFAULT_ENV).boot()
        slot = TABLE.by_boot_value(decision.slot_value)
        assert slot is not None, decision
        return slot

    def confirm(self, booted: Slot, health: HealthResult = HEALTHY) -> ConfirmOutcome:
        return trial.confirm(self.store(), self.chooser(), BootedSlot(booted, "test"), lambda: health)

    def arm(self, version: str = "2.0", bootenv: Optional[Mapping[str, Optional[str]]] = None,
            target: Slot = B, previous: Slot = A, **kwargs: Any) -> State:
        return trial.arm_after_install(self.store(), self.chooser(), target, previous, version,
                                      bootenv or {}, **kwargs)

    def files(self) -> Tuple[bytes, bytes]:
        state = Path(self.state_dir, "state.json")
        return self.env_path.read_bytes(), state.read_bytes() if state.exists() else b""


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# ----------------------------------------------------------------------------- whole updates


def test_update_confirmed_after_first_boot_of_the_new_slot(rig: Rig) -> None:
    armed = rig.arm("2.0", {"kernel": "zImage-2"})
    assert armed.phase is Phase.TRIAL_ARMED and armed.target_slot == "b" and armed.previous_slot == "a"
    assert rig.env() == dict(STEADY, rootpart="3", upgrade_available="1", otad_prev="2", kernel="zImage-2")
    assert rig.boot() is B
    outcome = rig.confirm(B)
    assert outcome.verdict is Verdict.CONFIRMED and not outcome.reboot and outcome.health == HEALTHY
    assert rig.env() == dict(STEADY, rootpart="3", kernel="zImage-2")
    state = rig.state()
    assert state.phase is Phase.IDLE and state.last_result is not None
    assert (state.last_result.outcome, state.last_result.slot, state.last_result.version) == (
        Outcome.CONFIRMED, "b", "2.0")
    assert [rig.boot() for _ in range(5)] == [B] * 5
    assert rig.confirm(B).verdict is Verdict.NOTHING


def test_update_falls_back_when_the_new_slot_never_comes_up(rig: Rig) -> None:
    rig.arm("2.0")
    assert [rig.boot() for _ in range(4)] == [B, B, B, A]  # three hung boots of b, then altbootcmd
    outcome = rig.confirm(A)
    assert outcome.verdict is Verdict.FELL_BACK and outcome.health is None
    assert outcome.message == ("the trial of slot b (version 2.0) failed: U-Boot fell back to slot a "
                               "after 3 boots of slot b")
    assert rig.env() == STEADY  # otad_prev dropped, nothing counting
    result = rig.state().last_result
    assert result is not None and (result.outcome, result.slot) == (Outcome.FELL_BACK, "b")


def test_failed_health_check_switches_back_at_once_and_asks_for_a_reboot(rig: Rig) -> None:
    rig.arm("2.0")
    assert rig.boot() is B
    outcome = rig.confirm(B, SICK)
    assert outcome.verdict is Verdict.HEALTH_FAILED and outcome.reboot
    assert "no route" in outcome.message
    assert rig.env() == STEADY
    assert rig.state().last_result.outcome is Outcome.HEALTH_FAILED  # type: ignore[union-attr]
    assert rig.boot() is A
    assert rig.confirm(A).verdict is Verdict.NOTHING


def test_confirm_before_the_reboot_waits_and_writes_nothing(rig: Rig) -> None:
    rig.arm()
    before = rig.files()
    outcome = rig.confirm(A)
    assert outcome.verdict is Verdict.WAITING and not outcome.reboot
    assert rig.files() == before


def test_hawkbit_action_ends_in_final_pending(rig: Rig) -> None:
    rig.arm("2.0", action_id="42")
    rig.boot()
    state = rig.confirm(B).state
    assert state.phase is Phase.FINAL_PENDING and state.action_id == "42"
    assert state.last_result is not None and state.last_result.outcome is Outcome.CONFIRMED


# ----------------------------------------------------------------------------- the outcome table


ENV_SLOTS = {"a": "2", "b": "3", "unset": None, "bogus": "7"}
# DOWNLOADING, DOWNLOADED and INSTALLED are decided like FINAL_PENDING (no trial, an action):
# left out of the product to keep it quick; test_daemon_phases_without_a_trial_decide_like_idle.
NO_TRIAL_PHASES = {
    "idle": State(),
    "final_pending": State(Phase.FINAL_PENDING, "b", "a", "2.0", None, "42", OLD_RESULT),
}
TRIAL_PHASES = {
    "arming": State(Phase.ARMING, "b", "a", "2.0", 5.0, None),
    "trial_armed": State(Phase.TRIAL_ARMED, "b", "a", "2.0", 5.0, None),
    "trial_armed+action": State(Phase.TRIAL_ARMED, "b", "a", "2.0", 5.0, "42"),
}
PHASES = {**NO_TRIAL_PHASES, **TRIAL_PHASES}

# (verdict, outcome recorded, env written, reboot)
Row = Tuple[Verdict, Optional[Outcome], bool, bool]


def expected_row(phase: str, booted: str, env: str, ua: int, n: int, prev: Optional[str], healthy: bool) -> Row:
    """otad.boot.trial's docstring table, written out independently (T = b, P = a)."""
    if env in ("unset", "bogus"):
        return Verdict.ENV_UNKNOWN, None, False, False
    if phase == "arming":
        if prev != "2":
            return Verdict.ABORTED, Outcome.ABORTED, env == "b", env == "b" and booted == "b"
        phase = "trial_armed"
    if phase.startswith("trial_armed"):
        rows: Dict[Tuple[str, str, int], Row] = {
            ("b", "a", 0): (Verdict.ABORTED, Outcome.ABORTED, False, True),
            ("b", "a", 1): (Verdict.ABORTED, Outcome.ABORTED, False, False),
            ("a", "a", 1): (Verdict.FELL_BACK, Outcome.FELL_BACK, True, False),
            ("a", "b", 0): (Verdict.WAITING, None, True, False),  # re-armed
        }
        if booted == "b" and env == "b":
            if healthy:
                return Verdict.CONFIRMED, Outcome.CONFIRMED, prev is not None or ua == 1 or n != 0, False
            return Verdict.HEALTH_FAILED, Outcome.HEALTH_FAILED, True, True
        if (booted, env, ua) == ("a", "a", 0):
            return Verdict.FELL_BACK, Outcome.FELL_BACK, prev is not None, False
        if (booted, env, ua) == ("a", "b", 1):
            if n == 0:
                return Verdict.WAITING, None, False, False
            return Verdict.ABORTED, Outcome.ABORTED, True, False
        return rows[(booted, env, ua)]
    if env != booted or ua == 0:
        return Verdict.NOTHING, None, False, False
    if healthy:
        return Verdict.STRAY_CLEARED, None, True, False
    return Verdict.STRAY_UNHEALTHY, None, False, False


CASES = list(itertools.product(PHASES, ("a", "b"), ENV_SLOTS, (0, 1), (0, 2), (None, "2", "3"), (True, False)))


@pytest.mark.parametrize("phase, booted, env, ua, n, prev, healthy", CASES,
                         ids=["-".join(map(str, c)) for c in CASES])
def test_every_combination_has_the_documented_outcome(tmp_path: Path, phase: str, booted: str, env: str, ua: int,
                                                      n: int, prev: Optional[str], healthy: bool) -> None:
    rig = Rig(tmp_path, {"rootpart": ENV_SLOTS[env], "upgrade_available": str(ua), "bootcount": str(n),
                         "bootlimit": "3", "otad_prev": prev})
    before_state = PHASES[phase]
    rig.set_state(before_state)
    env_before = rig.env_path.read_bytes()
    slot = TABLE.by_name(booted)
    health_calls: List[int] = []

    def health() -> HealthResult:
        health_calls.append(1)
        return HEALTHY if healthy else SICK

    outcome = trial.confirm(rig.store(), rig.chooser(), BootedSlot(slot, "test"), health)
    verdict, recorded, env_written, reboot = expected_row(phase, booted, env, ua, n, prev, healthy)

    assert (outcome.verdict, outcome.reboot) == (verdict, reboot), outcome.message
    assert (rig.env_path.read_bytes() != env_before) == env_written
    assert bool(health_calls) == (verdict in (Verdict.CONFIRMED, Verdict.HEALTH_FAILED, Verdict.STRAY_CLEARED,
                                             Verdict.STRAY_UNHEALTHY))
    state = rig.state()
    assert state == outcome.state
    if recorded is not None:
        assert state.last_result is not None
        assert (state.last_result.outcome, state.last_result.slot, state.last_result.version) == (recorded, "b", "2.0")
        assert state.last_result.reason == outcome.message
        assert state.phase is (Phase.FINAL_PENDING if before_state.action_id else Phase.IDLE)
    elif before_state.phase is Phase.ARMING and verdict is not Verdict.ENV_UNKNOWN:
        assert state == State(Phase.TRIAL_ARMED, "b", "a", "2.0", 5.0, None)  # completed, then waiting
    else:
        assert state == before_state

    after = rig.chooser().read()
    if before_state.trial and after.slot is B and not after.upgrade_available:
        # The untested target may boot uncounted only once it passed its health checks.
        assert verdict is Verdict.CONFIRMED
    if verdict is not Verdict.ENV_UNKNOWN:
        assert state.phase is not Phase.ARMING

    # Deciding again (e.g. otad restarted in the same boot) is quiet: no writes, nothing new.
    # One exception: an interrupted arming is aborted first; a bootcount someone else armed on
    # the running slot (a stray trial) is then the next run's business.
    again = trial.confirm(rig.store(), rig.chooser(), BootedSlot(slot, "test"), health)
    if phase == "arming" and verdict is Verdict.ABORTED and (booted, env, ua) == ("a", "a", 1):
        assert again.verdict is (Verdict.STRAY_CLEARED if healthy else Verdict.STRAY_UNHEALTHY)
        assert rig.state() == state
        again = trial.confirm(rig.store(), rig.chooser(), BootedSlot(slot, "test"), health)
    files = rig.files()
    assert again.verdict in (Verdict.NOTHING, Verdict.WAITING, Verdict.ENV_UNKNOWN, Verdict.STRAY_UNHEALTHY)
    assert trial.confirm(rig.store(), rig.chooser(), BootedSlot(slot, "test"), health).verdict is again.verdict
    assert rig.files() == files


@pytest.mark.parametrize("phase", [Phase.DOWNLOADING, Phase.DOWNLOADED, Phase.INSTALLED])
@pytest.mark.parametrize("env, ua, verdict", [
    ("2", "0", Verdict.NOTHING), ("3", "0", Verdict.NOTHING), ("3", "1", Verdict.NOTHING),
    ("2", "1", Verdict.STRAY_CLEARED), ("7", "0", Verdict.ENV_UNKNOWN),
])
def test_daemon_phases_without_a_trial_decide_like_idle(tmp_path: Path, phase: Phase, env: str, ua: str,
                                                        verdict: Verdict) -> None:
    rig = Rig(tmp_path, dict(STEADY, rootpart=env, upgrade_available=ua))
    before = State(phase, "b", "a", "2.0", None, "42")
    rig.set_state(before)
    assert rig.confirm(A).verdict is verdict
    assert rig.state() == before


def test_table_in_the_docstring_names_every_verdict() -> None:
    doc = trial.__doc__ or ""
    for verdict in Verdict:
        assert verdict.value in doc, verdict


# ----------------------------------------------------------------------------- power cuts


class Cutter:
    """Counts otad's durable writes (state files and env updates) and cuts the power before
    write number `at`. U-Boot's own writes during emulated boots are not counted."""

    def __init__(self, at: Optional[int]) -> None:
        self.at = at
        self.count = 0
        self.armed = True
        self.log: List[str] = []

    def step(self, what: str) -> None:
        if not self.armed:
            return
        self.count += 1
        self.log.append(what)
        if self.count == self.at:
            self.armed = False
            raise PowerCut(what)


@pytest.fixture
def cutter_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Optional[int]], Cutter]]:
    current: List[Cutter] = []
    real_write = durable.atomic_write
    real_update = UBootEnv.update

    def write(path: Any, data: bytes, mode: Optional[int] = None) -> None:
        if current:
            current[0].step(f"state {json.loads(data)['phase']}")
        real_write(path, data, mode)

    def update(self: UBootEnv, changes: Mapping[str, Optional[str]], **kwargs: Any) -> Any:
        if current:
            current[0].step(f"env {sorted(changes)}")
        return real_update(self, changes, **kwargs)

    monkeypatch.setattr("otad.state.atomic_write", write)
    monkeypatch.setattr(UBootEnv, "update", update)

    def make(at: Optional[int]) -> Cutter:
        current[:] = [Cutter(at)]
        return current[0]

    yield make


def run_update(rig: Rig, cutter: Cutter, *, healthy: bool, target_comes_up: bool) -> None:
    """otad install + reboots + confirm as the device would run them; a PowerCut ends it."""
    try:
        rig.arm("2.0", {"kernel": "zImage-2"})
        settle(rig, cutter, healthy=healthy, target_comes_up=target_comes_up)
    except PowerCut:
        pass


def settle(rig: Rig, cutter: Cutter, *, healthy: bool, target_comes_up: bool) -> List[ConfirmOutcome]:
    """Boot (U-Boot unobserved by the cutter) and confirm until nothing is left to do."""
    outcomes: List[ConfirmOutcome] = []
    for _ in range(12):
        armed, cutter.armed = cutter.armed, False
        slot = rig.boot()
        cutter.armed = armed
        if slot is B and not target_comes_up:
            continue  # hangs before otad runs; the watchdog resets the board
        outcome = rig.confirm(slot, HEALTHY if healthy else SICK)
        outcomes.append(outcome)
        if outcome.verdict is Verdict.NOTHING and not outcome.reboot:
            return outcomes
    raise AssertionError(f"never settled: {[o.message for o in outcomes]}")


SCENARIOS = {
    "healthy": (True, True),
    "health-fails": (False, True),
    "never-comes-up": (True, False),
}


def writes_of(scenario: str, tmp_path: Path, make: Callable[[Optional[int]], Cutter]) -> List[str]:
    rig = Rig(tmp_path / "count")
    cutter = make(None)
    healthy, comes_up = SCENARIOS[scenario]
    run_update(rig, cutter, healthy=healthy, target_comes_up=comes_up)
    return cutter.log


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_power_cut_before_any_write_of_an_update_settles_on_a_good_slot(
        tmp_path: Path, cutter_factory: Callable[[Optional[int]], Cutter], scenario: str) -> None:
    healthy, comes_up = SCENARIOS[scenario]
    writes = writes_of(scenario, tmp_path, cutter_factory)
    assert writes[:3] == ["state arming", "env ['bootcount', 'kernel', 'otad_prev', 'rootpart', 'upgrade_available']",
                          "state trial_armed"]
    for at in range(1, len(writes) + 2):
        rig = Rig(tmp_path / f"cut{at}")
        cutter = cutter_factory(at)
        run_update(rig, cutter, healthy=healthy, target_comes_up=comes_up)
        cutter.armed = False  # after the cut: fresh processes, no more cuts
        final = settle(rig, cutter, healthy=healthy, target_comes_up=comes_up)[-1]
        where = f"cut before write {at} ({writes[at - 1] if at <= len(writes) else 'none'})"

        env = rig.env()
        running = TABLE.by_name(final.booted)
        assert env["upgrade_available"] == "0" and "otad_prev" not in env, where
        assert TABLE.by_boot_value(env["rootpart"]) is running, where
        state = rig.state()
        assert state.phase is Phase.IDLE, where
        result = state.last_result
        arm_landed = at > 2
        if not arm_landed:
            assert running is A, where
            assert result is None if at == 1 else result.outcome is Outcome.ABORTED, where  # type: ignore[union-attr]
        elif healthy and comes_up:
            assert running is B and result is not None and result.outcome is Outcome.CONFIRMED, where
        else:
            assert running is A and result is not None and result.slot == "b" and result.outcome.failed, where
            if not comes_up:
                assert result.outcome is Outcome.FELL_BACK, where
        report = slotstatus.status(rig.store(), rig.chooser(), BootedSlot(running, "test"))
        assert report.pending_trial is None and report.mismatch is None, where
        assert [s.state for s in report.slots if s.booted] == ["good"], where
        # ... and it stays there: no counting, no env writes, no flip.
        files = rig.files()
        assert [rig.boot() for _ in range(5)] == [running] * 5, where
        assert rig.files() == files, where


def test_power_cut_between_the_writes_of_mark_bad_still_ends_on_the_previous_slot(
        rig: Rig, cutter_factory: Callable[[Optional[int]], Cutter]) -> None:
    rig.arm("2.0")
    assert rig.boot() is B
    cutter = cutter_factory(2)  # the env write lands, the state write does not
    with pytest.raises(PowerCut):
        trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(B, "test"))
    cutter.armed = False
    assert rig.state().phase is Phase.TRIAL_ARMED
    final = settle(rig, cutter, healthy=True, target_comes_up=True)
    assert final[0].verdict is Verdict.FELL_BACK and final[-1].booted == "a"
    assert rig.state().last_result.outcome is Outcome.FELL_BACK  # type: ignore[union-attr]


def test_power_cut_with_a_stale_otad_prev_does_not_fake_a_landed_arm(
        tmp_path: Path, cutter_factory: Callable[[Optional[int]], Cutter]) -> None:
    rig = Rig(tmp_path, dict(STEADY, otad_prev="2"))  # left behind by a state reset, say
    cutter = cutter_factory(3)  # 1: drop the stale breadcrumb, 2: state arming, 3: env arm (cut)
    with pytest.raises(PowerCut):
        rig.arm("2.0")
    assert cutter.log[:2] == ["env ['otad_prev']", "state arming"]
    cutter.armed = False
    outcome = settle(rig, cutter, healthy=True, target_comes_up=True)[0]
    assert outcome.verdict is Verdict.ABORTED and "interrupted before the boot env was switched" in outcome.message


# ----------------------------------------------------------------------------- arming


def test_arm_refuses_a_bundle_bootenv_that_sets_trial_variables_before_writing(rig: Rig) -> None:
    before = rig.files()
    with pytest.raises(EnvError, match="bootenv: upgrade_available = '0': 0 turns the bootcount off"):
        rig.arm("2.0", {"upgrade_available": "0"})
    assert rig.files() == before and rig.state() == State()


def test_arm_refuses_to_arm_the_running_slot(rig: Rig) -> None:
    with pytest.raises(SlotError, match="running"):
        rig.arm(target=A, previous=A)


def test_rearming_before_the_reboot_replaces_the_trial(rig: Rig) -> None:
    rig.arm("2.0")
    state = rig.arm("2.1")
    assert state.phase is Phase.TRIAL_ARMED and state.version == "2.1"
    rig.boot()
    assert rig.confirm(B).verdict is Verdict.CONFIRMED
    assert rig.state().last_result.version == "2.1"  # type: ignore[union-attr]


def test_install_into_the_fallback_of_an_undecided_trial_is_refused(rig: Rig) -> None:
    rig.arm("2.0")
    rig.boot()  # b runs its trial, not yet confirmed
    with pytest.raises(SlotError, match="slot a is the fallback of the undecided trial of slot b"):
        trial.check_can_install(rig.store(), A)
    with pytest.raises(SlotError, match="fallback"):
        rig.arm("3.0", target=A, previous=B)
    trial.check_can_install(rig.store(), B)


def test_install_into_the_slot_the_env_boots_uncounted_is_refused(rig: Rig) -> None:
    trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"))  # b boots next, uncounted
    with pytest.raises(SlotError, match="selects slot b for the next boot without the bootcount"):
        trial.check_can_install(rig.store(), B, rig.chooser())
    trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"), B)  # back to a
    trial.check_can_install(rig.store(), B, rig.chooser())


def test_reinstall_into_an_armed_target_before_the_reboot_is_allowed(rig: Rig) -> None:
    rig.arm("2.0")
    trial.check_can_install(rig.store(), B, rig.chooser())  # counted: U-Boot would still fall back


def test_arm_from_final_pending_is_an_illegal_transition(rig: Rig) -> None:
    rig.set_state(NO_TRIAL_PHASES["final_pending"])
    before = rig.files()
    with pytest.raises(StateError, match="illegal transition final_pending → arming"):
        rig.arm("3.0")
    assert rig.files() == before


def test_failed_env_write_while_arming_records_an_abort(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: UBootEnv, changes: Mapping[str, Optional[str]], **kwargs: Any) -> Any:
        raise EnvError("copy 0 did not read back as written", where=str(rig.env_path))

    monkeypatch.setattr(UBootEnv, "update", broken)
    with pytest.raises(EnvError, match="did not read back"):
        rig.arm("2.0")
    state = rig.state()
    assert state.phase is Phase.IDLE and state.last_result is not None
    assert state.last_result.outcome is Outcome.ABORTED and "did not read back" in state.last_result.reason


def test_confirm_with_a_corrupt_state_file_is_a_state_error_and_touches_nothing(rig: Rig) -> None:
    rig.arm()
    Path(rig.store().path).write_text("{")
    before = rig.files()
    with pytest.raises(StateError, match="state.json: not JSON"):
        rig.confirm(A)
    assert rig.files() == before


# ----------------------------------------------------------------------------- mark-bad


def test_mark_bad_of_the_running_trial_slot_records_it_and_asks_for_a_reboot(rig: Rig) -> None:
    rig.arm("2.0")
    rig.boot()
    outcome = trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(B, "test"))
    assert (outcome.slot, outcome.next_slot, outcome.reboot) == ("b", "a", True)
    assert rig.env() == STEADY
    result = rig.state().last_result
    assert result is not None and (result.outcome, result.slot, result.version) == (Outcome.MARKED_BAD, "b", "2.0")
    assert rig.boot() is A and rig.confirm(A).verdict is Verdict.NOTHING


def test_mark_bad_of_the_armed_target_before_the_reboot_disarms_it(rig: Rig) -> None:
    rig.arm("2.0")
    outcome = trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"), B)
    assert not outcome.reboot and rig.env() == STEADY
    assert rig.state().phase is Phase.IDLE


def test_mark_bad_of_the_fallback_during_a_trial_is_refused(rig: Rig) -> None:
    rig.arm("2.0")
    before = rig.files()
    with pytest.raises(SlotError, match="slot a is the fallback of the armed trial of slot b"):
        trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"))
    assert rig.files() == before


def test_mark_bad_without_a_trial_switches_slots_and_records_it(rig: Rig, tmp_path: Path) -> None:
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark("/dev/mmcblk0p2", INSTALLED, version="1.0")
    targets.mark("/dev/mmcblk0p3", INSTALLED, version="0.9")
    outcome = trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"),
                                 installs=slot_installs(targets, TABLE, "/dev"))
    assert outcome.reboot and outcome.next_slot == "b"
    assert rig.env() == dict(STEADY, rootpart="3")
    result = rig.state().last_result
    assert result is not None and (result.outcome, result.slot, result.version) == (Outcome.MARKED_BAD, "a", "1.0")


def test_mark_bad_refuses_to_switch_to_a_slot_whose_install_failed(rig: Rig, tmp_path: Path) -> None:
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark(str(tmp_path / "dev" / "mmcblk0p3"), FAILED, version="2.0", reason="hash mismatch")
    before = rig.files()
    with pytest.raises(SlotError, match="slot b holds no valid image .*failed") as info:
        trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"),
                       installs=slot_installs(targets, TABLE, str(tmp_path / "dev")))
    assert info.value.where == "/dev/mmcblk0p3"
    assert rig.files() == before


def test_mark_bad_keeps_a_pending_final_of_the_daemon(rig: Rig) -> None:
    rig.set_state(NO_TRIAL_PHASES["final_pending"])
    outcome = trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"))
    assert outcome.state == NO_TRIAL_PHASES["final_pending"]
    assert rig.env()["rootpart"] == "3"


def test_mark_bad_refuses_to_boot_a_slot_whose_install_was_interrupted(rig: Rig, tmp_path: Path) -> None:
    targets = TargetStatusStore(str(tmp_path / "targets.json"))
    targets.mark("/dev/mmcblk0p3", INTERRUPTED, version="2.0", reason="terminated")
    with pytest.raises(SlotError, match="slot b holds no valid image .its install is interrupted."):
        trial.mark_bad(rig.store(), rig.chooser(), BootedSlot(A, "test"),
                                 installs=slot_installs(targets, TABLE, "/dev"))
    assert rig.env()["rootpart"] == "2"
