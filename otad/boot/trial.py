"""The trial of a freshly installed slot: arming it, deciding it after a boot, marking a slot bad.

Owns the decision table below (summed up in docs/architecture.md, "A/B, the boot environment
and the trial"): what the state, the env and the booted slot together mean, and the
power-cut-safe order of env and state writes. The env variables are `bootchooser`'s, the state
file `otad.state`'s, the checks `health`'s.

Write order. Arming: state ARMING (intent) → env (one write) → state TRIAL_ARMED. Deciding:
env first, then state: the env is what U-Boot acts on, so it must never say less than the
state (state-first could leave an unhealthy slot armed and later be "cleared" as committed).
`otad_prev` in the env is the breadcrumb: only an arm sets it, only otad's commit/abort
writes drop it, U-Boot keeps it, so on restart "ARMING + otad_prev = previous" means the arm
write landed. A power cut between any two writes is resolved by the next `confirm`.

`confirm` (T/P = trial target/previous slot, B = booted slot, E = the env's slot, ua =
upgrade_available, n = bootcount; "health:" = run the checks, first outcome if they pass):

  phase          B  E   ua  also          verdict           env write          state         reboot
  any            -  ?   -   (E no slot,   env_unknown       -                  -             no
                             or not T/P)
  ARMING         -  P   -   otad_prev≠P   aborted           -                  → idle        no
  ARMING         B  T   -   otad_prev≠P   aborted           mark_bad(T) → P    → idle        if B=T
  ARMING         -  -   -   otad_prev=P   (→ TRIAL_ARMED, then as TRIAL_ARMED)
  TRIAL_ARMED    T  T   1                 health: confirmed mark_good          → idle        no
                                                  health_failed mark_bad(T) → P → idle      yes
  TRIAL_ARMED    T  T   0   (committed,   health: confirmed mark_good (no-op)  → idle        no
                             unrecorded)          health_failed mark_bad(T) → P → idle      yes
  TRIAL_ARMED    T  P   0                 aborted           -                  → idle        yes
  TRIAL_ARMED    T  P   1                 aborted           -                  → idle        no
  TRIAL_ARMED    P  P   0   otad_prev     fell_back         mark_good          → idle        no
  TRIAL_ARMED    P  P   0   no otad_prev  fell_back         -                  → idle        no
  TRIAL_ARMED    P  P   1                 fell_back         mark_good          → idle        no
  TRIAL_ARMED    P  T   1   n = 0         waiting           -                  -             no
  TRIAL_ARMED    P  T   1   n ≥ 1         aborted (§6 r9)   mark_bad(T) → P    → idle        no
  TRIAL_ARMED    P  T   0                 waiting           re-arm T           -             no
  no trial       B  B   0                 nothing           -                  -             no
  no trial       B  B   1   (stray)       health: stray_cleared mark_good      -             no
                                                  stray_unhealthy -            -             no
  no trial       B  O   0/1               nothing           -                  -             no

"→ idle" is → final_pending when the state holds a hawkBit action_id. "no trial" is every
phase but ARMING/TRIAL_ARMED. A stray trial (upgrade_available set without otad's record) on
the running slot is committed only if healthy; else U-Boot's counter is left to decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, Mapping, Optional, Union

from otad import crashpoint
from otad.boot.bootchooser import Bootchooser, BootEnv
from otad.boot.health import HealthResult
from otad.boot.slots import BootedSlot, Slot, SlotInstall, SlotTable
from otad.errors import OtadError, SlotError, StateError
from otad.state import LastResult, Outcome, Phase, State, StateStore

log = logging.getLogger(__name__)


class Verdict(Enum):
    """What `confirm` found and did."""

    NOTHING = "nothing"  # no trial of otad's to decide
    WAITING = "waiting"  # a trial is armed; the reboot into it has not happened yet
    CONFIRMED = "confirmed"
    HEALTH_FAILED = "health_failed"  # switched back: reboot now
    FELL_BACK = "fell_back"
    ABORTED = "aborted"
    STRAY_CLEARED = "stray_cleared"  # upgrade_available set outside otad on a healthy running slot
    STRAY_UNHEALTHY = "stray_unhealthy"
    ENV_UNKNOWN = "env_unknown"  # the env's slot variable names no slot: nothing decided


class _Env(Enum):
    NONE = "none"
    MARK_GOOD = "mark_good"
    SWITCH_AWAY = "switch_away"  # from the trial target to the previous slot
    REARM = "rearm"


@dataclass(frozen=True)
class _Plan:
    verdict: Verdict
    message: str
    env: _Env = _Env.NONE
    record: Optional[Outcome] = None  # conclude the trial with this outcome
    reboot: bool = False


@dataclass(frozen=True)
class _HealthGate:
    """A decision that waits for the health checks."""

    passed: _Plan
    failed: _Plan


@dataclass(frozen=True)
class ConfirmOutcome:
    """What `confirm` decided; `reboot` asks the caller to reboot now (the env switched away
    from the running slot), `health` is set when the checks ran, `state` is the state after."""

    verdict: Verdict
    message: str
    booted: str
    reboot: bool
    state: State
    health: Optional[HealthResult] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"verdict": self.verdict.value, "message": self.message, "booted": self.booted,
                "reboot": self.reboot, "phase": self.state.phase.value,
                "health_failures": list(self.health.failures) if self.health else None}


# --------------------------------------------------------------------------- confirm


def confirm(store: StateStore, chooser: Bootchooser, booted: BootedSlot,
            health: Callable[[], HealthResult]) -> ConfirmOutcome:
    """Decide the trial after a boot (table above): commit, record a fallback, or switch back."""
    with store.lock():
        state = store.load()
        env = chooser.read()
        if env.slot is None:
            return _outcome(_env_unknown(env, booted), booted, state)
        if state.phase is Phase.ARMING:
            if not _arm_landed(state, env, chooser.table):
                decision: Union[_Plan, _HealthGate] = _arming_interrupted(state, env, booted.slot)
            else:
                state = store.transition(Phase.TRIAL_ARMED)
                decision = _decide(state, env, booted.slot, chooser.table)
        else:
            decision = _decide(state, env, booted.slot, chooser.table)
        result: Optional[HealthResult] = None
        if isinstance(decision, _HealthGate):
            result = health()
            decision = decision.passed if result.ok else decision.failed
            if not result.ok:
                decision = _Plan(decision.verdict, f"{decision.message}: {result.describe()}",
                                 decision.env, decision.record, decision.reboot)
        _write_env(decision, state, chooser)
        crashpoint.reached("confirm.env_written")
        if decision.record is not None:
            state = _conclude(store, state, decision)
        log.info("confirm: %s: %s", decision.verdict.value, decision.message)
        return _outcome(decision, booted, state, result)


def _arm_landed(state: State, env: BootEnv, table: SlotTable) -> bool:
    previous = table.by_name(_name(state.previous_slot))
    return env.prev_value == previous.boot_value


def _arming_interrupted(state: State, env: BootEnv, booted: Slot) -> _Plan:
    """ARMING whose env write never landed: abort, and make sure the target does not boot
    next (the env may select it from before, e.g. after a mark-bad of the running slot)."""
    message = (f"arming the trial of slot {state.target_slot} was interrupted before the boot env "
               f"was switched; slot {state.previous_slot} stays")
    assert env.slot is not None
    if env.slot.name != state.target_slot:
        return _Plan(Verdict.ABORTED, message, record=Outcome.ABORTED)
    return _Plan(Verdict.ABORTED, f"{message} and boots next", _Env.SWITCH_AWAY, Outcome.ABORTED,
                 reboot=booted.name == state.target_slot)


def _decide(state: State, env: BootEnv, booted: Slot, table: SlotTable) -> Union[_Plan, _HealthGate]:
    """The table of the module docstring, for a readable env (env.slot is set)."""
    assert env.slot is not None
    if state.phase is not Phase.TRIAL_ARMED:
        return _decide_no_trial(env, booted)
    target = table.by_name(_name(state.target_slot))
    previous = table.by_name(_name(state.previous_slot))
    trial = f"the trial of slot {target.name}{_version(state)}"
    if booted not in (target, previous) or env.slot not in (target, previous):
        return _Plan(Verdict.ENV_UNKNOWN, f"nothing decided: {trial} from slot {previous.name} does not "
                     f"explain slot {booted.name} running and the env selecting slot {env.slot.name}")
    if booted == target:
        return _decide_on_target(env, target, previous, trial)
    if env.slot == previous:
        if env.upgrade_available:
            return _Plan(Verdict.FELL_BACK, f"{trial} failed: slot {previous.name} runs again, but "
                         "upgrade_available is still set (altbootcmd should clear it); cleared",
                         _Env.MARK_GOOD, Outcome.FELL_BACK)
        if env.prev_value is not None:
            boots = f"{env.bootlimit} boots" if env.bootlimit else "its boot limit"
            return _Plan(Verdict.FELL_BACK, f"{trial} failed: U-Boot fell back to slot {previous.name} "
                         f"after {boots} of slot {target.name}", _Env.MARK_GOOD, Outcome.FELL_BACK)
        return _Plan(Verdict.FELL_BACK, f"{trial} failed: slot {previous.name} runs again and the boot env "
                     "no longer arms it (switched back by U-Boot or by otad before the result was recorded)",
                     record=Outcome.FELL_BACK)
    # booted is the previous slot and the env still selects the target
    if not env.upgrade_available:
        return _Plan(Verdict.WAITING, f"{trial} is pending: slot {target.name} boots next; the bootcount "
                     "was not armed (cleared outside otad?), re-armed", _Env.REARM)
    if env.bootcount == 0:
        return _Plan(Verdict.WAITING, f"{trial} is armed: slot {target.name} boots at the next reboot")
    return _Plan(Verdict.ABORTED, f"{trial} was aborted: slot {previous.name} was booted by other means "
                 f"while slot {target.name} was armed (bootcount {env.bootcount}); slot {previous.name} "
                 "boots next", _Env.SWITCH_AWAY, Outcome.ABORTED)


def _decide_on_target(env: BootEnv, target: Slot, previous: Slot, trial: str) -> Union[_Plan, _HealthGate]:
    """The trial target is running."""
    if env.slot == target:
        return _HealthGate(
            passed=_Plan(Verdict.CONFIRMED, f"{trial} succeeded: slot {target.name} is committed",
                         _Env.MARK_GOOD, Outcome.CONFIRMED),
            failed=_Plan(Verdict.HEALTH_FAILED, f"{trial} failed its health checks: slot {previous.name} "
                         "boots next", _Env.SWITCH_AWAY, Outcome.HEALTH_FAILED, reboot=True),
        )
    if env.upgrade_available:
        return _Plan(Verdict.ABORTED, f"{trial} was aborted: the boot env was changed outside otad and "
                     f"arms slot {previous.name}", record=Outcome.ABORTED)
    return _Plan(Verdict.ABORTED, f"{trial} was aborted: the boot env was switched back to slot {previous.name} "
                 "(a failed health check or mark-bad whose result was not recorded)",
                 record=Outcome.ABORTED, reboot=True)


def _decide_no_trial(env: BootEnv, booted: Slot) -> Union[_Plan, _HealthGate]:
    if env.slot != booted:
        armed = " with the bootcount armed (not by otad)" if env.upgrade_available else ""
        return _Plan(Verdict.NOTHING, f"no trial of otad's; slot {booted.name} runs and the boot env selects "
                     f"slot {_name_of(env.slot)} for the next boot{armed}")
    if not env.upgrade_available:
        return _Plan(Verdict.NOTHING, f"no trial: slot {booted.name} runs and boots next")
    stray = f"upgrade_available is set on the running slot {booted.name} without a trial of otad's"
    return _HealthGate(
        passed=_Plan(Verdict.STRAY_CLEARED, f"{stray}; it is healthy, so the bootcount was cleared", _Env.MARK_GOOD),
        failed=_Plan(Verdict.STRAY_UNHEALTHY, f"{stray}; left for U-Boot's bootcount to decide, as it is "
                     "not healthy"),
    )


def _env_unknown(env: BootEnv, booted: BootedSlot) -> _Plan:
    shown = f"={env.slot_value!r}" if env.slot_value is not None else " is unset"
    return _Plan(Verdict.ENV_UNKNOWN, f"nothing decided: the boot env's {env.slot_variable}{shown} selects no "
                 f"slot; slot {booted.slot.name} runs ({booted.evidence}); fix the env by hand")


def _write_env(plan: _Plan, state: State, chooser: Bootchooser) -> None:
    if plan.env is _Env.MARK_GOOD:
        chooser.mark_good()
    elif plan.env is _Env.SWITCH_AWAY:
        chooser.mark_bad(chooser.table.by_name(_name(state.target_slot)))
    elif plan.env is _Env.REARM:
        chooser.arm_trial(chooser.table.by_name(_name(state.target_slot)),
                          chooser.table.by_name(_name(state.previous_slot)))


def _conclude(store: StateStore, state: State, plan: _Plan) -> State:
    """End the trial in the state: IDLE, or FINAL_PENDING while a hawkBit action waits for it."""
    assert plan.record is not None
    result = LastResult(plan.record, _name(state.target_slot), state.version, plan.message, store.now())
    to = Phase.FINAL_PENDING if state.action_id is not None else Phase.IDLE
    return store.transition(to, last_result=result)


def _outcome(plan: _Plan, booted: BootedSlot, state: State, health: Optional[HealthResult] = None) -> ConfirmOutcome:
    return ConfirmOutcome(plan.verdict, plan.message, booted.slot.name, plan.reboot, state, health)


def _name(value: Optional[str]) -> str:
    if value is None:
        raise StateError("the state names no slot for its trial")
    return value


def _name_of(slot: Optional[Slot]) -> str:
    return slot.name if slot is not None else "?"


def _version(state: State) -> str:
    return f" (version {state.version})" if state.version else ""


# --------------------------------------------------------------------------- arm


def arm_after_install(store: StateStore, chooser: Bootchooser, target: Slot, previous: Slot,
                      version: Optional[str], bootenv: Mapping[str, Optional[str]], *,
                      action_id: Optional[str] = None) -> State:
    """Switch the env to the freshly installed `target` with the bootcount armed (§6 row 2).

    Order: state ARMING (the intent) → one env write → state TRIAL_ARMED. A power cut after
    the first write leaves ARMING, which the next `confirm` completes (env switched) or aborts
    (env untouched). The bundle's `bootenv` is checked before anything is written.
    """
    if target == previous:
        raise SlotError(f"cannot arm slot {target.name}: it is the running (previous) slot")
    with store.lock():
        extra = chooser.bundle_changes(bootenv, target)
        state = store.load()
        _check_not_fallback(state, target)
        if not state.trial and chooser.read().prev_value is not None:
            chooser.forget_trial_record()  # else a stale breadcrumb would fake a landed arm
        store.transition(Phase.ARMING, target_slot=target.name, previous_slot=previous.name,
                         version=version, armed_at=store.now(), action_id=action_id)
        crashpoint.reached("arm.intent_persisted")
        try:
            chooser.arm_trial(target, previous, extra)
        except OtadError as exc:
            _abort_arming(store, chooser, previous, exc)
            raise
        crashpoint.reached("arm.env_written")
        return store.transition(Phase.TRIAL_ARMED)


def check_can_install(store: StateStore, target: Slot, chooser: Optional[Bootchooser] = None) -> None:
    """Call before writing into `target`. Refused while `target` is the fallback of an undecided
    trial (the trial slot would lose what U-Boot falls back to), and, given `chooser`, while the
    env boots `target` next without the bootcount (a power cut mid-write would leave it unbootable)."""
    _check_not_fallback(store.load(), target)
    if chooser is not None:
        env = chooser.read()
        if env.slot == target and not env.upgrade_available:
            raise SlotError(f"the boot env selects slot {target.name} for the next boot without the bootcount "
                            f"armed; writing into it now could leave the device unbootable after a power cut "
                            f"(run 'otad mark-bad {target.name}' first)")


def _check_not_fallback(state: State, target: Slot) -> None:
    if state.trial and state.previous_slot == target.name:
        raise SlotError(f"slot {target.name} is the fallback of the undecided trial of slot "
                        f"{state.target_slot} ({state.phase.value}); confirm or mark that trial first")


def _abort_arming(store: StateStore, chooser: Bootchooser, previous: Slot, exc: OtadError) -> None:
    """The env write failed: record that, unless the env did switch (then confirm decides)."""
    try:
        landed = chooser.read().prev_value == previous.boot_value
        if not landed:
            state = store.load()
            _conclude(store, state, _Plan(Verdict.ABORTED, f"arming the trial of slot {state.target_slot} "
                                          f"failed: {exc}", record=Outcome.ABORTED))
    except OtadError as again:
        log.warning("arming failed and its state stays ARMING for the next confirm: %s", again)


# --------------------------------------------------------------------------- mark-bad


@dataclass(frozen=True)
class MarkOutcome:
    """`slot` was marked bad; `next_slot` boots next; `reboot` when the running slot was marked."""

    slot: str
    next_slot: str
    reboot: bool
    message: str
    state: State

    def to_dict(self) -> Dict[str, Any]:
        return {"slot": self.slot, "next_slot": self.next_slot, "reboot": self.reboot,
                "message": self.message, "phase": self.state.phase.value}


def mark_bad(store: StateStore, chooser: Bootchooser, booted: BootedSlot, slot: Optional[Slot] = None, *,
             installs: Optional[Mapping[str, SlotInstall]] = None, reason: str = "marked bad by hand") -> MarkOutcome:
    """Make the env boot the slot other than `slot` (default: the booted one), uncounted.

    Env first, then state (as in `confirm`). Refused when `slot` is the fallback of an armed
    trial (that would commit the untested target) or when the slot to switch to holds no
    valid image according to the install records (`installs`, by slot name).
    """
    slot = slot if slot is not None else booted.slot
    other = chooser.table.other(slot)
    installs = installs or {}
    with store.lock():
        state = store.load()
        if state.trial and slot.name == state.previous_slot:
            raise SlotError(f"slot {slot.name} is the fallback of the armed trial of slot {state.target_slot}; "
                            f"marking it bad would commit slot {state.target_slot} untested (confirm it or "
                            f"mark slot {state.target_slot} bad instead)")
        install = None if other == booted.slot else installs.get(other.name)
        if install is not None and not install.complete:
            raise SlotError(f"slot {other.name} holds no valid image (its install is {install.state}); "
                            f"refusing to make it boot next", where=other.device)
        chooser.mark_bad(slot)
        message = f"slot {slot.name} marked bad ({reason}); slot {other.name} boots next"
        if state.trial or state.phase is Phase.IDLE:
            version = state.version if state.trial else _installed_version(installs.get(slot.name))
            result = LastResult(Outcome.MARKED_BAD, slot.name, version, message, store.now())
            to = Phase.FINAL_PENDING if state.trial and state.action_id is not None else Phase.IDLE
            state = store.transition(to, last_result=result)
        log.info("mark-bad: %s", message)
        return MarkOutcome(slot.name, other.name, slot == booted.slot, message, state)


def _installed_version(install: Optional[SlotInstall]) -> Optional[str]:
    return install.version if install is not None and install.complete else None
