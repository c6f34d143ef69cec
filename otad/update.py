"""The A/B update as whole operations: install into the inactive slot and arm the trial,
confirm after a boot, mark bad, report status.

This is where the install path (`install/`) meets the boot side (`boot/`); `otad install`,
`otad confirm`, `otad status`, `otad mark-bad` and the daemon all go through it, so the order
of checks and writes is the same whoever starts the update.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple, Union

from otad.boot.bootchooser import Bootchooser
from otad.boot.health import HealthResult, run_checks
from otad.boot.mark import (ConfirmOutcome, MarkOutcome, SlotStatusReport, arm_after_install, check_can_install,
                            confirm, mark_bad, status)
from otad.boot.slots import BootedSlot, Slot, booted_slot
from otad.boot.ubootenv import load_fw_env_config
from otad.boot.watchdog import DeviceWatchdog, NullWatchdog
from otad.config import Config
from otad.errors import ConfigError, InstallError, OtadError, SlotError
from otad.install.handlers.raw import resolve_device
from otad.install.installer import InstallResult, Resuming, install_bundle
from otad.install.options import make_request, status_file
from otad.install.pipeline import Reader
from otad.install.resume import discard_journal
from otad.install.status import TargetStatusStore
from otad.progress import ProgressListener, ignore
from otad.state import State, StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotInstallResult:
    install: InstallResult
    target: Optional[Slot]  # None: a plain install without slots
    booted: Optional[Slot]
    state: Optional[State]  # after arming; None with no_switch or without slots


def _read_text(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        raise SlotError(f"cannot read: {exc.strerror}", path) from exc


def detect_booted(cfg: Config) -> BootedSlot:
    """Which slot runs now, from the kernel command line (or the root mount), never the env."""
    boot = cfg.bootloader
    return booted_slot(cfg.slot_table(), cmdline=_read_text(boot.cmdline) or "",
                       mountinfo=_read_text(boot.mountinfo) if boot.mountinfo and os.path.exists(boot.mountinfo)
                       else None,
                       partuuid_dir=boot.partuuid_dir, device_dir=cfg.system.device_dir)


def _targets(cfg: Config) -> TargetStatusStore:
    return TargetStatusStore(status_file(cfg))


def install(cfg: Config, source: Reader, *, name: str, total_bytes: Optional[int] = None,
            progress: ProgressListener = ignore, dry_run: bool = False, no_switch: bool = False,
            selection: Optional[Tuple[str, str]] = None, action_id: Optional[str] = None,
            resuming: Resuming = Resuming()) -> SlotInstallResult:
    """Install a bundle. With slots configured: into the inactive slot, then arm the trial
    (unless `no_switch` or `dry_run`). Without slots: the selected section, as SWUpdate -i does.
    `resuming` goes on from a saved resume point and/or saves new ones (the daemon's)."""
    targets = TargetStatusStore(None if dry_run else status_file(cfg))
    if resuming.point is None and not dry_run:
        discard_journal(cfg.system.state_dir)  # this install overwrites what a saved point relies on
    if not cfg.ab_enabled:
        request = make_request(cfg, dry_run=dry_run, selection=selection)
        result = install_bundle(source, request, name=name, total_bytes=total_bytes, progress=progress,
                                status=targets, resuming=resuming)
        return SlotInstallResult(result, None, None, None)
    booted = detect_booted(cfg)
    target = cfg.slot_table().other(booted.slot)
    store = StateStore(cfg.system.state_dir)
    chooser = Bootchooser.from_config(cfg)
    check_can_install(store, target, chooser)
    chosen = selection or target.selection
    if chosen is None:
        raise ConfigError(f"slot {target.name!r} has no selection and none was given with -e", cfg.source)
    env_files = tuple(c.device for c in load_fw_env_config(cfg.bootloader.fw_env_config).copies)
    running = resolve_device(booted.slot.device, cfg.system.device_dir)
    request = replace(make_request(cfg, dry_run=dry_run, selection=chosen), protected_paths=(running,) + env_files)
    log.info("booted slot %s (%s); installing %s into slot %s", booted.slot.name, booted.evidence,
             ",".join(chosen), target.name)
    result = install_bundle(source, request, name=name, total_bytes=total_bytes, progress=progress, status=targets,
                            resuming=resuming)
    _check_wrote_target(result, target, cfg)
    if dry_run or no_switch:
        return SlotInstallResult(result, target, booted.slot, None)
    bootenv: Dict[str, Optional[str]] = {v.name: (v.value or None) for v in result.bootenv}
    state = arm_after_install(store, chooser, target, booted.slot, result.manifest.version, bootenv,
                              action_id=action_id)
    log.info("slot %s armed for a trial boot of version %s", target.name, result.manifest.version)
    return SlotInstallResult(result, target, booted.slot, state)


def arm(cfg: Config, target_name: str, version: str, bootenv: Dict[str, Optional[str]], *,
        action_id: Optional[str] = None) -> State:
    """Arm a slot that already holds a verified install (the daemon's deferred update)."""
    table = cfg.slot_table()
    booted = detect_booted(cfg)
    target = table.by_name(target_name)
    if target == booted.slot:
        raise SlotError(f"slot {target_name} is the running slot; nothing to arm")
    record = _targets(cfg).get(resolve_device(target.device, cfg.system.device_dir))
    if record is None or record.state != "installed" or record.version != version:
        raise InstallError(f"slot {target_name} no longer holds the verified install of version {version}")
    return arm_after_install(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), target, booted.slot,
                             version, bootenv, action_id=action_id)


def running_version(cfg: Config) -> Optional[str]:
    """The version of the bundle installed in the booted slot, if otad installed it."""
    if not cfg.ab_enabled:
        return None
    try:
        booted = detect_booted(cfg)
    except OtadError:
        return None
    record = _targets(cfg).get(resolve_device(booted.slot.device, cfg.system.device_dir))
    return record.version if record is not None and record.state == "installed" else None


def _check_wrote_target(result: InstallResult, target: Slot, cfg: Config) -> None:
    """An A/B bundle section that never writes the target slot would arm an untouched slot."""
    wanted = os.path.realpath(resolve_device(target.device, cfg.system.device_dir))
    written = {os.path.realpath(p) for p in result.targets}
    if wanted not in written and not result.dry_run:
        raise InstallError(f"the selected section installs nothing into slot {target.name} ({target.device}); "
                           "not switching to it")


def open_watchdog(cfg: Config) -> Union[DeviceWatchdog, NullWatchdog]:
    """The hardware watchdog when the config enables it, else one that does nothing. Use it as
    a context manager: a clean exit stops the timer, a crash leaves it running (the board resets)."""
    wd = cfg.watchdog
    if not wd.enabled:
        return NullWatchdog()
    return DeviceWatchdog.open(wd.device, timeout_s=wd.timeout_s, nowayout=wd.nowayout)


def confirm_boot(cfg: Config) -> ConfirmOutcome:
    booted = detect_booted(cfg)
    health = cfg.health

    def check() -> HealthResult:
        return run_checks(health.checks, health.timeout_s)

    return confirm(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), booted, check)


def mark_bad_now(cfg: Config, slot_name: Optional[str] = None) -> MarkOutcome:
    booted = detect_booted(cfg)
    slot = cfg.slot_table().by_name(slot_name) if slot_name else None
    return mark_bad(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), booted, slot,
                    targets=_targets(cfg), device_dir=cfg.system.device_dir)


def slot_status(cfg: Config) -> SlotStatusReport:
    """Never fails on a broken env or state: it reports them, so a technician can see why."""
    booted: Optional[BootedSlot] = None
    problem: Optional[str] = None
    try:
        booted = detect_booted(cfg)
    except OtadError as exc:
        problem = str(exc)
    return status(StateStore(cfg.system.state_dir), Bootchooser.from_config(cfg), booted, booted_problem=problem,
                  targets=_targets(cfg), device_dir=cfg.system.device_dir)
