"""The A/B update as whole operations: install into the inactive slot and arm the trial,
confirm after a boot, mark bad, reboot when a decision asks for it, report the slots.

This is where the install path (`install/`) meets the boot side (`boot/`); `otad install`,
`otad confirm`, `otad status`, `otad mark-bad` and the daemon all go through it, so the order
of checks and writes is the same whoever starts the update. Every operation that writes takes
a `HeldLock` (otad.lock): the caller holds the writer lock around all of it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple, Union

from otad.boot.bootchooser import Bootchooser
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.health import HealthResult, run_checks
from otad.boot.slots import BootedSlot, Slot, SlotInstall, SlotTable, booted_slot
from otad.boot.trial import ConfirmOutcome, MarkOutcome, arm_after_install, check_can_install, confirm, mark_bad
from otad.boot.ubootenv import UBootEnv
from otad.boot.watchdog import DeviceWatchdog, NullWatchdog, ProgressPetter, Watchdog, held_elsewhere
from otad.config import Config
from otad.errors import REFUSED, WRITE_FAILED, CompatibilityError, ConfigError, EnvError, InstallError, Interrupted, \
    OtadError, SlotError, StateError, WatchdogError
from otad.install.chunks import ChunkSources, NoChunkSources
from otad.install.handlers.raw import resolve_device
from otad.install.installer import InstallResult, Resuming, install_bundle
from otad.install.plan import InstallPlan, InstallRequest, delta_source, handler_options, plan_install
from otad.install.options import hardware_identity, make_request, status_file
from otad.install.pipeline import Reader
from otad.install.resume import discard_journal
from otad.install.status import FAILED, INSTALLED, TargetRecord, TargetStatusStore, shown_state
from otad.lock import Holder, HeldLock, WriterLock
from otad.progress import ProgressListener, fan_out, ignore
from otad.signals import shielded
from otad.smallfile import read_text
from otad.state import Phase, State, StateStore
from otad.swu.manifest import HardwareRevision, SwDescription

if TYPE_CHECKING:  # imported where used: `otad install` needs neither the status report nor otad.delta
    from otad.boot.slotstatus import SlotStatusReport
    from otad.delta.fetch import Opener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotInstallResult:
    install: InstallResult
    target: Optional[Slot]  # None: a plain install without slots
    booted: Optional[Slot]
    state: Optional[State]  # after arming; None with no_switch or without slots


def _read_text(path: Optional[str], what: str) -> Optional[str]:
    if not path:
        return None
    return read_text(path, what, limit=4 << 20, error=SlotError, errors="replace")


def detect_booted(cfg: Config) -> BootedSlot:
    """Which slot runs now, from the kernel command line (or the root mount), never the env."""
    boot = cfg.bootloader
    mountinfo = boot.mountinfo if boot.mountinfo and os.path.exists(boot.mountinfo) else None
    return booted_slot(SlotTable.from_config(cfg), cmdline=_read_text(boot.cmdline, "the kernel command line") or "",
                       mountinfo=_read_text(mountinfo, "the mount table"),
                       partuuid_dir=boot.partuuid_dir, device_dir=cfg.system.device_dir)


def _targets(cfg: Config) -> TargetStatusStore:
    return TargetStatusStore(status_file(cfg))


def slot_installs(targets: TargetStatusStore, table: SlotTable, device_dir: str,
                  writer: Optional[Holder] = None) -> Dict[str, SlotInstall]:
    """What the install records say each slot holds, by slot name, for boot/ (which reads no
    records). `writer`: who holds the writer lock now; the slot it installs into is `installing`
    whatever its record says yet, and a record left `installing` by nobody is `interrupted`."""
    installs: Dict[str, SlotInstall] = {}
    for slot in table.slots:
        record = _install_record(targets, slot, device_dir)
        shown = shown_state(record, being_written=writer is not None and writer.installing_into(slot.name))
        if record is not None:
            installs[slot.name] = SlotInstall((shown or record.state).value, record.version, record.reason,
                                              record.updated_at)
        elif shown is not None:
            installs[slot.name] = SlotInstall(shown.value)  # being written before its record is
    return installs


def _install_record(targets: TargetStatusStore, slot: Slot, device_dir: str) -> Optional[TargetRecord]:
    """The install record of the slot's device (records are keyed by the path written to)."""
    path = slot.device
    if path.startswith("/dev/"):
        path = os.path.join(device_dir, path[len("/dev/"):])
    for key in (path, slot.device, os.path.realpath(path)):
        record = targets.get(key)
        if record is not None:
            return record
    return None


@dataclass(frozen=True)
class _Setup:
    """What an install on this device decides before the bundle is read: the request (with the
    checks its plan must pass) and, on an A/B device, the slots and the env that switches them."""

    request: InstallRequest
    target: Optional[Slot] = None
    booted: Optional[Slot] = None
    chooser: Optional[Bootchooser] = None


class StaticChunkSources(NoChunkSources):
    """Chunk data for `otad install`: a delta's static URL through a plain HTTP client (no
    hawkBit credentials); a deployment artifact or the bundle's link need the daemon."""

    def __init__(self, cfg: Config) -> None:
        self._ca_file = cfg.delta.ca_file
        self._opener: Optional[Opener] = None

    def static(self, url: str) -> Optional[Opener]:
        if self._opener is None:
            from otad.httpget import PlainOpener  # requests: loaded only for a delta

            self._opener = PlainOpener(ca_file=self._ca_file)
        return self._opener


def _setup(cfg: Config, *, dry_run: bool, selection: Optional[Tuple[str, str]],
           action_id: Optional[str] = None, chunks: Optional[ChunkSources] = None) -> _Setup:
    """Everything before the bundle: an error here refuses it with nothing written. `action_id`:
    the daemon's hawkBit action this install is for (None: a command's own install); `chunks`:
    where delta images' chunks come from (None: static URLs only)."""
    try:
        if not cfg.ab_enabled:
            request = _with_chunks(make_request(cfg, dry_run=dry_run, selection=selection), cfg, chunks)
            return _Setup(replace(request, checks=(partial(_plain_bootenv_fits, cfg),)))
        booted = detect_booted(cfg)
        target = SlotTable.from_config(cfg).other(booted.slot)
        chooser = Bootchooser.from_config(cfg)
        store = StateStore(cfg.system.state_dir)
        _check_no_daemon_update(store.load(), action_id)
        check_can_install(store, target, chooser)
        chosen = _slot_selection(cfg, target, selection)
        env_files = tuple(c.device for c in chooser.env.layout.copies)
        running = resolve_device(booted.slot.device, cfg.system.device_dir)
        checks = (partial(_writes_slot, target, cfg.system.device_dir), partial(_bootenv_agrees, chooser, target),
                  partial(_delta_reads_booted, booted.slot, cfg.system.device_dir))
        request = replace(_with_chunks(make_request(cfg, dry_run=dry_run, selection=chosen), cfg, chunks),
                          protected_paths=(running,) + env_files, checks=checks)
        log.info("booted slot %s (%s); installing %s into slot %s", booted.slot.name, booted.evidence,
                 ",".join(chosen), target.name)
        return _Setup(request, target, booted.slot, chooser)
    except OtadError as exc:
        raise exc.at_stage(REFUSED)


def _with_chunks(request: InstallRequest, cfg: Config, chunks: Optional[ChunkSources]) -> InstallRequest:
    return replace(request, delta=replace(request.delta, sources=chunks or StaticChunkSources(cfg)))


def _delta_reads_booted(booted: Slot, device_dir: str, plan: InstallPlan) -> None:
    """A delta's `source` must be the running slot: the one slot whose content is known and not
    being written (SWUpdate does not check it)."""
    running = os.path.realpath(resolve_device(booted.device, device_dir))
    for member in plan.members.values():
        for image in member.delta_images():
            assert image.delta is not None
            if os.path.realpath(delta_source(image, device_dir)) != running:
                raise CompatibilityError(f"properties.source {image.delta.source} is not the running slot "
                                         f"{booted.name} ({booted.device}): a delta reuses the running slot's chunks",
                                         f"image {image.filename!r}")


def _check_no_daemon_update(state: State, action_id: Optional[str]) -> None:
    """Refuse another install while the daemon's update of another action is under way: its
    download was cut off (DOWNLOADING), its verified install waits in the inactive slot for the
    maintenance window (DOWNLOADED, INSTALLED), or its result is not reported yet (FINAL_PENDING).
    Arming from there is no transition the state allows, and the slot is the daemon's; like
    SWUpdate ("Installation in progress") and RAUC, say so before writing, not after."""
    if state.action_id is None or state.action_id == action_id:
        return
    action = f"hawkBit action {state.action_id}" + (f" (version {state.version})" if state.version else "")
    phase = state.phase
    if phase is Phase.DOWNLOADING:
        held = (f"{action} was being downloaded into the inactive slot when the daemon stopped; start the "
                f"daemon (otad run) to go on with it, or cancel the action on the server and start the daemon, "
                f"which then drops it")
    elif phase in (Phase.DOWNLOADED, Phase.INSTALLED):
        held = (f"{action} is installed in the inactive slot and waits for its maintenance window; cancel the "
                f"action on the server to drop it (the daemon does at its next poll)")
    elif phase is Phase.FINAL_PENDING:
        held = (f"the result of {action} is not reported to the server yet; start the daemon (otad run), which "
                f"reports it first")
    else:
        return
    raise StateError(f"the daemon's update is in progress (state {phase.value}): {held}")


def _slot_selection(cfg: Config, target: Slot, given: Optional[Tuple[str, str]]) -> Tuple[str, str]:
    """The section for `target`: its own selection; -e (or install.selection) may only repeat it,
    or name one for a slot that has none."""
    asked = given or cfg.install.selection_pair
    if asked is None and target.selection is None:
        raise ConfigError(f"slot {target.name!r} has no selection and none was given with -e", cfg.source)
    if asked is not None and target.selection is not None and asked != target.selection:
        owner = next((s.name for s in SlotTable.from_config(cfg).slots if s.selection == asked), None)
        whose = f"slot {owner}'s selection" if owner else "no slot's selection"
        raise ConfigError(f"-e {','.join(asked)} (install.selection) is {whose}, but otad installs into the "
                          f"inactive slot {target.name}, whose selection is {','.join(target.selection)}; "
                          "leave -e out or give that one", cfg.source)
    chosen = asked or target.selection
    assert chosen is not None
    return chosen


def _writes_slot(target: Slot, device_dir: str, plan: InstallPlan) -> None:
    """An A/B section that never writes the target slot would arm an untouched slot."""
    wanted = os.path.realpath(resolve_device(target.device, device_dir))
    if wanted not in {os.path.realpath(p) for p in plan.target_paths()}:
        raise InstallError(f"the selected section installs nothing into slot {target.name} ({target.device}); "
                           "not switching to it")


def _bootenv_agrees(chooser: Bootchooser, target: Slot, plan: InstallPlan) -> None:
    """The bundle's bootenv goes into the write that arms `target`: it must agree with the trial."""
    chooser.env.check_update(chooser.bundle_changes(plan.manifest.bootenv_changes(), target))


def _plain_bootenv_fits(cfg: Config, plan: InstallPlan) -> None:
    """Without slots the bootenv is applied after the images, as `swupdate -i` does: refuse now
    if that write could not happen."""
    changes = plan.manifest.bootenv_changes()
    if not changes:
        return
    try:
        env = _plain_env(cfg)
        env.read()
    except OtadError as exc:
        raise EnvError(f"the bundle sets boot env variables ({', '.join(changes)}) and no U-Boot env is usable "
                       f"here: {exc}", where="bootenv") from exc
    try:
        env.check_update(changes)
    except OtadError as exc:
        raise exc.within("bootenv")


def _plain_env(cfg: Config) -> UBootEnv:
    boot = cfg.bootloader
    return UBootEnv(load_fw_env_config(boot.fw_env_config), lock_path=boot.lock_file)


def plan(cfg: Config, description: SwDescription, *, name: str) -> InstallPlan:
    """What `install` would decide on this device about the verified sw-description of bundle
    `name`, writing nothing (`otad info`): the same setup, plan and checks, and an OtadError
    worded as `install`'s refusal would be."""
    return _plan(cfg, description, name)[0]


def _plan(cfg: Config, description: SwDescription, name: str) -> Tuple[InstallPlan, InstallRequest]:
    request = _setup(cfg, dry_run=False, selection=None).request
    try:
        return plan_install(description.select, request), request
    except OtadError as exc:
        raise exc.within_once(name)


class DeltaPreviews:
    """`otad info`'s plan (as `plan`), and what its delta images would reuse and fetch here: the
    install's own checks and planning on each header member, nothing written (`describer`)."""

    def __init__(self, cfg: Config, *, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self._planned: Optional[Tuple[InstallPlan, InstallRequest]] = None

    def plan(self, description: SwDescription) -> InstallPlan:
        self._planned = _plan(self.cfg, description, self.name)
        return self._planned[0]

    def describer(self, member: str) -> Optional[Callable[[bytes], str]]:
        if self._planned is None:
            return None
        planned, request = self._planned
        member_plan = planned.members.get(member)
        if member_plan is None or member_plan.delta is None:
            return None
        from otad.install.delta import DeltaInstall

        step = DeltaInstall(member_plan, request, _targets(self.cfg), handler_options(request), ignore,
                            planned.manifest.version)
        return step.preview


def install(cfg: Config, source: Reader, *, name: str, writer: Optional[HeldLock], total_bytes: Optional[int] = None,
            progress: ProgressListener = ignore, dry_run: bool = False, no_switch: bool = False,
            selection: Optional[Tuple[str, str]] = None, action_id: Optional[str] = None,
            resuming: Resuming = Resuming(), chunks: Optional[ChunkSources] = None) -> SlotInstallResult:
    """Install a bundle. With slots configured: into the inactive slot, then arm the trial with
    the bundle's bootenv folded in (unless `no_switch` or `dry_run`). Without slots: the selected
    section, then its bootenv in one env write, as `swupdate -i -B uboot` does.
    `resuming` goes on from a saved resume point and/or saves new ones (the daemon's); `chunks`
    says where delta images' chunks come from (the daemon's deployment; default: static URLs). `writer`
    is the writer lock, held from before this call to after it (None only for a dry run, which
    writes nothing); it gets the target slot and the progress."""
    assert writer is not None or dry_run, "an install that writes holds the writer lock"
    if writer is not None:
        progress = fan_out([progress, writer.progress])
    setup = _setup(cfg, dry_run=dry_run, selection=selection, action_id=action_id, chunks=chunks)
    targets = TargetStatusStore(None if dry_run else status_file(cfg))
    if resuming.point is None and not dry_run:
        discard_journal(cfg.system.state_dir)  # this install overwrites what a saved point relies on
    if setup.target is None or setup.booted is None or setup.chooser is None:
        try:
            result = install_bundle(source, setup.request, name=name, total_bytes=total_bytes, progress=progress,
                                    status=targets, resuming=resuming)
            if not dry_run:
                _apply_plain_bootenv(cfg, result, targets)
        except Interrupted as stop:
            raise stop.during(f"installing {name}", f"{', '.join(stop.written)} marked not installed"
                              if stop.written else "nothing was written")
        return SlotInstallResult(result, None, None, None)
    target, booted = setup.target, setup.booted
    store = StateStore(cfg.system.state_dir)
    if writer is not None:
        writer.doing(f"installing into slot {target.name}", slot=target.name)
    written: Optional[InstallResult] = None
    try:
        written = install_bundle(source, setup.request, name=name, total_bytes=total_bytes, progress=progress,
                                 status=targets, resuming=resuming)
        if dry_run or no_switch:
            return SlotInstallResult(written, target, booted, None)
        state = _arm(store, setup.chooser, target, booted, written.manifest.version,
                     written.manifest.bootenv_changes(), action_id)
    except Interrupted as stop:
        raise stop.during(f"installing slot {target.name}", _left_behind(stop, target, written, store))
    log.info("slot %s armed for a trial boot of version %s", target.name, written.manifest.version)
    return SlotInstallResult(written, target, booted, state)


def _apply_plain_bootenv(cfg: Config, result: InstallResult, targets: TargetStatusStore) -> None:
    """The bundle's bootenv in one verified write after the images. If it fails the install did
    not do what the bundle asked: its targets are marked failed."""
    changes = result.manifest.bootenv_changes()
    if not changes:
        return
    try:
        with shielded():
            _plain_env(cfg).update(changes)
    except OtadError as exc:
        _mark_failed(targets, result, f"bootenv not applied: {exc}")
        raise exc.within("bootenv").at_stage(WRITE_FAILED)
    log.info("bootenv applied: %s", ", ".join(f"{k}={v}" if v is not None else f"{k} deleted"
                                              for k, v in changes.items()))


def mark_failed(cfg: Config, result: InstallResult, reason: str) -> None:
    """Mark every target of a finished install failed: a check after it (the daemon's server
    hash) refused what was written, so the slot must not count as installed."""
    _mark_failed(_targets(cfg), result, reason)


def _mark_failed(targets: TargetStatusStore, result: InstallResult, reason: str) -> None:
    for path in result.targets:
        targets.mark(path, FAILED, version=result.manifest.version, reason=reason)


def _left_behind(stop: Interrupted, target: Slot, result: Optional[InstallResult], store: StateStore) -> str:
    """What an install stopped by a signal leaves in its target slot, for the one line."""
    if result is None:
        return f"slot {target.name} marked not installed" if stop.written else "nothing was written"
    holds = f"slot {target.name} holds version {result.manifest.version}"
    try:
        armed = store.load().trial
    except OtadError:
        return f"{holds}; whether it is armed: see otad status"
    return f"{holds} and is armed for a trial boot" if armed else f"{holds}, not armed"


def _arm(store: StateStore, chooser: Bootchooser, target: Slot, previous: Slot, version: Optional[str],
         bootenv: Dict[str, Optional[str]], action_id: Optional[str]) -> State:
    """Arm the trial; a stop request waits until state, env and state are all written."""
    with shielded():
        try:
            return arm_after_install(store, chooser, target, previous, version, bootenv, action_id=action_id)
        except OtadError as exc:
            raise exc.at_stage(WRITE_FAILED)


def arm(cfg: Config, target_name: str, version: str, bootenv: Dict[str, Optional[str]], *,
        writer: HeldLock, action_id: Optional[str] = None) -> State:
    """Arm a slot that already holds a verified install (the daemon's deferred update)."""
    table = SlotTable.from_config(cfg)
    booted = detect_booted(cfg)
    target = table.by_name(target_name)
    if target == booted.slot:
        raise SlotError(f"slot {target_name} is the running slot; nothing to arm")
    writer.doing(f"arming slot {target.name}", slot=target.name)
    record = _targets(cfg).get(resolve_device(target.device, cfg.system.device_dir))
    if record is None or record.state is not INSTALLED or record.version != version:
        raise InstallError(f"slot {target_name} no longer holds the verified install of version {version}")
    return _arm(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), target, booted.slot, version,
                bootenv, action_id)


def running_version(cfg: Config) -> Optional[str]:
    """The version of the bundle installed in the booted slot, if otad installed it."""
    if not cfg.ab_enabled:
        return None
    try:
        booted = detect_booted(cfg)
    except OtadError:
        return None
    record = _targets(cfg).get(resolve_device(booted.slot.device, cfg.system.device_dir))
    return record.version if record is not None and record.state is INSTALLED else None


def open_watchdog(cfg: Config, *, unless_held: bool = False) -> Union[DeviceWatchdog, NullWatchdog]:
    """The hardware watchdog when the config enables it, else one that does nothing. Use it as
    a context manager: a clean exit stops the timer, a crash leaves it running (the board resets).
    `unless_held`: for a command beside the daemon, which holds the device while it runs and pets
    it: a device held by another process is left to it (one INFO line), not an error."""
    wd = cfg.watchdog
    if not wd.enabled:
        return NullWatchdog()
    try:
        return DeviceWatchdog.open(wd.device, timeout_s=wd.timeout_s, nowayout=wd.nowayout)
    except WatchdogError as exc:
        if not (unless_held and held_elsewhere(exc)):
            raise
    log.info("watchdog %s: held by another process (otad run, or a watchdog daemon), which pets it; "
             "not opened here", wd.device)
    return NullWatchdog()


def pet_on_progress(watchdog: Watchdog, *, clock: Callable[[], float]) -> ProgressListener:
    """A progress listener that pets `watchdog` while the work it listens to makes progress."""
    return ProgressPetter(watchdog, clock=clock)


def hardware(cfg: Config) -> Optional[HardwareRevision]:
    """The board and revision bundles are checked against (`system.hardware` or the
    hwrevision file); None when neither says."""
    return hardware_identity(cfg)


def confirm_boot(cfg: Config, *, writer: HeldLock) -> ConfirmOutcome:
    writer.doing("confirming the boot")
    booted = detect_booted(cfg)
    health = cfg.health

    def check() -> HealthResult:
        return run_checks(health.checks, health.timeout_s)

    return confirm(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), booted, check)


def reboot_if_asked(cfg: Config, asked: bool, *, allowed: bool, say: Callable[[str], None]) -> None:
    """Run `system.reboot_command` when a decision asked for the other slot to boot now
    (`ConfirmOutcome.reboot`, `MarkOutcome.reboot`), unless not `allowed` (--no-reboot). `say`
    gets one line first: the command may end this process."""
    if not asked:
        return
    if not allowed:
        say("reboot needed (not rebooting: --no-reboot)")
        return
    say(f"rebooting: {cfg.system.reboot_command}")
    subprocess.run(cfg.system.reboot_command, shell=True, check=False)


def mark_bad_now(cfg: Config, slot_name: Optional[str] = None, *, writer: HeldLock) -> MarkOutcome:
    booted = detect_booted(cfg)
    slot = SlotTable.from_config(cfg).by_name(slot_name) if slot_name else None
    writer.doing(f"marking slot {(slot or booted.slot).name} bad", slot=(slot or booted.slot).name)
    chooser = Bootchooser.from_config(cfg)
    return mark_bad(StateStore(cfg.system.state_dir), chooser, booted, slot,
                    installs=slot_installs(_targets(cfg), chooser.table, cfg.system.device_dir))


def slot_status(cfg: Config) -> SlotStatusReport:
    """Never fails on a broken env or state: it reports them, so a technician can see why.
    Never takes the writer lock: an install in progress is read from its holder record."""
    from otad.boot.slotstatus import status

    booted: Optional[BootedSlot] = None
    problem: Optional[str] = None
    try:
        booted = detect_booted(cfg)
    except OtadError as exc:
        problem = str(exc)
    writer = WriterLock(cfg.system.state_dir).holder()
    chooser = Bootchooser.from_config(cfg)
    return status(StateStore(cfg.system.state_dir), chooser, booted, booted_problem=problem,
                  installs=slot_installs(TargetStatusStore(status_file(cfg), owner=False), chooser.table,
                                         cfg.system.device_dir, writer), writer=writer)
