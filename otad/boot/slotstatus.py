"""What each slot is now, for `otad status`: booted, next, and trial, good, installing,
interrupted, bad or inactive, with the env, the trial state and the last result around them.

Reads the env and the state and writes nothing; a part that cannot be read becomes a
`*_problem` of the report instead of an error. What the install records say a slot holds comes
in as `SlotInstall`s (otad.update reads them); deciding a trial is trial.py's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from otad.boot.bootchooser import Bootchooser, BootEnv
from otad.boot.slots import BootedSlot, Slot, SlotInstall, env_mismatch
from otad.errors import EnvError, StateError
from otad.lock import Holder
from otad.state import LastResult, Outcome, State, StateStore


@dataclass(frozen=True)
class SlotReport:
    """One slot for `otad status`. `state`: trial (armed, undecided), good (running or
    committed), installing (a writer holding the lock installs into it), interrupted (an
    install stopped or was killed half-way), bad (failed a trial, marked bad, or holds a failed
    install), inactive. `install_state` is the install record's, as `SlotInstall.state` tells
    it; `installed_version` is set only for a complete, verified install."""

    name: str
    device: str
    boot_value: str
    booted: bool
    next_boot: bool
    state: str
    installed_version: Optional[str]
    install_state: Optional[str]
    note: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SlotStatusReport:
    """Everything `otad status` shows; a part that could not be read has a `*_problem` instead.
    `writer` is the holder of the writer lock (otad.lock), if any."""

    booted: Optional[str]
    booted_evidence: Optional[str]
    env_slot: Optional[str]
    env: Mapping[str, Optional[str]]
    phase: Optional[str]
    pending_trial: Optional[Mapping[str, Any]]
    last_result: Optional[LastResult]
    slots: Tuple[SlotReport, ...]
    mismatch: Optional[str]
    booted_problem: Optional[str] = None
    env_problem: Optional[str] = None
    state_problem: Optional[str] = None
    writer: Optional[Holder] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "booted": self.booted, "booted_evidence": self.booted_evidence, "env_slot": self.env_slot,
            "env": dict(self.env), "phase": self.phase,
            "pending_trial": dict(self.pending_trial) if self.pending_trial else None,
            "last_result": self.last_result.to_dict() if self.last_result else None,
            "slots": [s.to_dict() for s in self.slots], "mismatch": self.mismatch,
            "booted_problem": self.booted_problem, "env_problem": self.env_problem,
            "state_problem": self.state_problem, "writer": self.writer.to_dict() if self.writer else None,
        }


def status(store: StateStore, chooser: Bootchooser, booted: Optional[BootedSlot], *,
           booted_problem: Optional[str] = None, installs: Optional[Mapping[str, SlotInstall]] = None,
           writer: Optional[Holder] = None) -> SlotStatusReport:
    """Gather the slot picture; never raises for an unreadable env or state (it reports them).
    `installs`: what the install records say each slot holds, by slot name; `writer`: who holds
    the writer lock now (its progress goes into the note of the slot it installs into)."""
    env: Optional[BootEnv] = None
    state: Optional[State] = None
    env_problem = state_problem = None
    try:
        env = chooser.read()
    except EnvError as exc:
        env_problem = str(exc)
    try:
        state = store.load()
    except StateError as exc:
        state_problem = str(exc)
    mismatch = None
    if booted is not None and env is not None:
        mismatch = env_mismatch(chooser.table, booted, env.slot_value, variable=chooser.slot_variable)
    installs = installs or {}
    slots = tuple(_slot_report(s, booted, env, state, installs.get(s.name), writer) for s in chooser.table.slots)
    pending = None
    if state is not None and state.trial:
        pending = {"phase": state.phase.value, "target_slot": state.target_slot,
                   "previous_slot": state.previous_slot, "version": state.version,
                   "armed_at": state.armed_at, "action_id": state.action_id}
    return SlotStatusReport(
        booted=booted.slot.name if booted else None, booted_evidence=booted.evidence if booted else None,
        env_slot=env.slot.name if env and env.slot else None, env=dict(env.values) if env else {},
        phase=state.phase.value if state else None, pending_trial=pending,
        last_result=state.last_result if state else None, slots=slots, mismatch=mismatch,
        booted_problem=booted_problem, env_problem=env_problem, state_problem=state_problem, writer=writer,
    )


def _slot_report(slot: Slot, booted: Optional[BootedSlot], env: Optional[BootEnv], state: Optional[State],
                 install: Optional[SlotInstall], writer: Optional[Holder]) -> SlotReport:
    is_booted = booted is not None and booted.slot == slot
    next_boot = env is not None and env.slot == slot
    note: Optional[str]
    if install is not None and install.being_written:
        kind, note = "installing", _writing(writer)
    elif install is not None and install.interrupted:
        why = install.reason or "its process ended mid-write (killed, crashed or power cut)"
        kind, note = "interrupted", f"version {install.version or '?'} half-written: {why}"
    else:
        kind, note = _slot_state(slot, is_booted, next_boot, env, state, install)
    installed = install.version if install is not None and install.complete else None
    return SlotReport(slot.name, slot.device, slot.boot_value, is_booted, next_boot, kind, installed,
                      install.state if install is not None else None, note)


def _writing(writer: Optional[Holder]) -> str:
    """``pid 4242, 37 %`` (or what was read so far when the bundle's size is not known: stdin)."""
    assert writer is not None
    if writer.percent is not None:
        return f"pid {writer.pid}, {writer.percent} %"
    if writer.done_bytes:
        return f"pid {writer.pid}, {writer.done_bytes >> 10} KiB read"
    return f"pid {writer.pid}"


def _slot_state(slot: Slot, is_booted: bool, next_boot: bool, env: Optional[BootEnv], state: Optional[State],
                install: Optional[SlotInstall]) -> Tuple[str, Optional[str]]:
    if state is not None and state.trial and state.target_slot == slot.name:
        return "trial", f"{state.phase.value}, version {state.version or '?'}"
    if next_boot and env is not None and env.upgrade_available:
        return "trial", "upgrade_available is set (not by otad)"
    if install is not None and not install.complete:
        return "bad", f"install {install.state}" + (f": {install.reason}" if install.reason else "")
    last = state.last_result if state is not None else None
    newer_install = install is not None and install.updated_at is not None and last is not None \
        and install.updated_at > last.at
    if last is not None and last.slot == slot.name and not newer_install:
        if last.outcome.failed and last.outcome is not Outcome.ABORTED:
            return "bad", f"{last.outcome.value}: {last.reason}"
    if is_booted or next_boot:
        return "good", None
    return "inactive", None
