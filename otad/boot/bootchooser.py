"""The env-level A/B switch for U-Boot with CONFIG_BOOTCOUNT_ENV (like RAUC's bootchooser.c).

Owns which env variables arm, commit and abort a trial (docs/architecture.md, "A/B, the boot
environment and the trial") and makes each of those one verified `UBootEnv.update`. When to do
which (state, health checks, the booted slot) is `otad.boot.trial`'s; the env's bytes are
`envimage`'s.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Tuple

from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.slots import Slot, SlotTable
from otad.boot.ubootenv import UBootEnv
from otad.errors import ConfigError, EnvError, SlotError

if TYPE_CHECKING:
    from otad.config import Config

log = logging.getLogger(__name__)

UPGRADE_AVAILABLE = "upgrade_available"
BOOTCOUNT = "bootcount"
BOOTLIMIT = "bootlimit"
# otad's own record of the slot a trial came from. U-Boot's altbootcmd leaves it alone; only
# arm_trial sets it and only mark_good/mark_bad drop it, so its presence says "otad's last
# write to the env was an arm" (otad.boot.trial relies on that after a power cut).
PREV = "otad_prev"
MAX_BOOTLIMIT = 99

_NO_EXTRA: Mapping[str, Optional[str]] = MappingProxyType({})


def env_ulong(value: Optional[str]) -> int:
    """A number as U-Boot's env_get_ulong(name, 10, 0) reads it: unset is 0, "0x" means hex,
    parsing stops at the first bad digit ("yes" is 0), and it wraps at 32 bits (the Pi's ulong)."""
    if value is None:
        return 0
    base, text = (16, value[2:]) if value[:2].lower() == "0x" else (10, value)
    result = 0
    for char in text:
        if char not in string.hexdigits or int(char, 16) >= base:
            break
        result = (result * base + int(char, 16)) & 0xFFFFFFFF
    return result


def _plain_number(value: Optional[str]) -> bool:
    """A number written as U-Boot writes one (decimal, or 0x hex), not text env_ulong reads part of."""
    if not value:
        return False
    digits, base = (value[2:], 16) if value[:2].lower() == "0x" else (value, 10)
    return bool(digits) and all(c in string.hexdigits and int(c, 16) < base for c in digits)


@dataclass(frozen=True)
class BootEnv:
    """What the env says about the A/B switch, from one read. `slot` is None when the slot
    variable is unset or holds no slot's boot value; numbers are read as U-Boot reads them."""

    slot_variable: str
    slot_value: Optional[str]
    slot: Optional[Slot]
    upgrade_available: bool
    bootcount: int
    bootlimit: int  # 0: unset or off (U-Boot then never falls back)
    prev_value: Optional[str]
    values: Mapping[str, Optional[str]]  # slot variable, upgrade_available, bootcount, bootlimit, otad_prev

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in self.values.items())


class Bootchooser:
    """Arms, commits and aborts bootcount trials in one U-Boot env (one write each)."""

    def __init__(self, env: UBootEnv, table: SlotTable, *, slot_variable: str = "rootpart",
                 bootlimit: int = 3) -> None:
        if not 1 <= bootlimit <= MAX_BOOTLIMIT:
            raise ConfigError(f"bootlimit: expected 1..{MAX_BOOTLIMIT}, got {bootlimit}", where="bootchooser")
        if slot_variable in (UPGRADE_AVAILABLE, BOOTCOUNT, BOOTLIMIT, PREV) or not slot_variable:
            raise ConfigError(f"slot variable: expected e.g. 'rootpart', got {slot_variable!r}", where="bootchooser")
        self.env = env
        self.table = table
        self.slot_variable = slot_variable
        self.bootlimit = bootlimit

    @classmethod
    def from_config(cls, config: "Config") -> "Bootchooser":
        """The env of `bootloader.fw_env_config` and the configured slots."""
        boot = config.bootloader
        env = UBootEnv(load_fw_env_config(boot.fw_env_config), lock_path=boot.lock_file)
        return cls(env, SlotTable.from_config(config), slot_variable=boot.slot_variable, bootlimit=boot.bootlimit)

    @property
    def protected(self) -> Tuple[str, ...]:
        """The trial variables: only otad (and U-Boot) set them; a bundle's bootenv may only agree."""
        return (self.slot_variable, UPGRADE_AVAILABLE, BOOTCOUNT, PREV)

    # -- reading

    def read(self) -> BootEnv:
        variables = self.env.read().variables
        names = (self.slot_variable, UPGRADE_AVAILABLE, BOOTCOUNT, BOOTLIMIT, PREV)
        value = variables.get(self.slot_variable)
        return BootEnv(
            slot_variable=self.slot_variable,
            slot_value=value,
            slot=self.table.by_boot_value(value) if value is not None else None,
            upgrade_available=env_ulong(variables.get(UPGRADE_AVAILABLE)) != 0,
            bootcount=env_ulong(variables.get(BOOTCOUNT)),
            bootlimit=env_ulong(variables.get(BOOTLIMIT)),
            prev_value=variables.get(PREV),
            values=MappingProxyType({name: variables.get(name) for name in names}),
        )

    def env_slot(self) -> Optional[Slot]:
        """The slot the env boots next (None: unset or not a slot's boot value)."""
        return self.read().slot

    def trial_armed(self) -> bool:
        """upgrade_available is non-zero: U-Boot counts boots and falls back past bootlimit."""
        return self.read().upgrade_available

    # -- writing

    def bundle_changes(self, bootenv: Mapping[str, Optional[str]], target: Slot) -> Dict[str, Optional[str]]:
        """A bundle's bootenv pairs ("" deletes) as the extra changes of the write that arms `target`.

        The usual SWUpdate A/B bundle switches slots itself (`rootpart = 2; upgrade_available = 1`).
        Trial variables are accepted when they say what the arming write says anyway (the slot
        variable names `target`, upgrade_available is on, bootcount is 0) and are then left to that
        write; otherwise the bundle is refused, as it is for `otad_prev` and a bootlimit that turns
        off the fallback. Returns the other pairs, None for a deletion.
        """
        self._known(target)
        changes: Dict[str, Optional[str]] = {}
        for name, value in bootenv.items():
            value = value or None
            problem = self._disagreement(name, value, target)
            if problem:
                raise EnvError(f"{name} = {value or ''!r}: {problem}", where="bootenv")
            if name not in self.protected:
                changes[name] = value
        return changes

    def _disagreement(self, name: str, value: Optional[str], target: Slot) -> Optional[str]:
        """Why `name = value` from a bundle cannot go into the write that arms `target`, if it cannot."""
        arming = f"otad arms a trial of slot {target.name} ({self.slot_variable}={target.boot_value})"
        if name == self.slot_variable:
            if value == target.boot_value:
                return None
            slot = self.table.by_boot_value(value) if value is not None else None
            said = ("deletes it" if value is None else f"boots slot {slot.name}" if slot is not None
                    else "names no configured slot")
            return f"the bundle {said}, but {arming}"
        if name == UPGRADE_AVAILABLE and not _plain_number(value):
            return f"expected a number U-Boot reads as non-zero; {arming} with {UPGRADE_AVAILABLE}=1"
        if name == UPGRADE_AVAILABLE and env_ulong(value) == 0:
            return f"0 turns the bootcount off, but {arming} with {UPGRADE_AVAILABLE}=1"
        if name == BOOTCOUNT and value is not None and not (_plain_number(value) and env_ulong(value) == 0):
            return f"expected 0 (or unset): {arming} with {BOOTCOUNT}=0"
        if name == PREV:
            return "refusing to set it from a bundle: it is otad's own record of the slot a trial came from"
        if name == BOOTLIMIT and not (value and value.isdigit() and 1 <= int(value) <= MAX_BOOTLIMIT):
            return f"expected 1..{MAX_BOOTLIMIT} (0 or unset would turn off the fallback)"
        return None

    def arm_trial(self, target: Slot, previous: Slot, extra: Mapping[str, Optional[str]] = _NO_EXTRA) -> None:
        """Boot `target` next with the bootcount armed (§6 row 2), `extra` (a bundle's bootenv, see
        `bundle_changes`) in the same write."""
        self._known(target)
        self._known(previous)
        if target == previous:
            raise SlotError(f"cannot arm a trial of slot {target.name}: it is also the previous slot")
        changes: Dict[str, Optional[str]] = self.bundle_changes(extra, target)
        current = self.read()
        if BOOTLIMIT not in changes and current.bootlimit == 0:
            # Without a bootlimit U-Boot never falls back: a bad slot would be tried forever.
            changes[BOOTLIMIT] = str(self.bootlimit)
        changes.update({self.slot_variable: target.boot_value, UPGRADE_AVAILABLE: "1", BOOTCOUNT: "0",
                        PREV: previous.boot_value})
        self.env.update(changes)
        log.info("bootchooser: trial of slot %s armed (previous %s)", target.name, previous.name)

    def mark_good(self) -> None:
        """Stop counting and forget the trial (§6 rows 5, 7); no write if that is the env already."""
        self.env.update({UPGRADE_AVAILABLE: "0", BOOTCOUNT: "0", PREV: None})

    def forget_trial_record(self) -> None:
        """Drop a stale `otad_prev` (left by a state reset or by hand) before a new arm."""
        self.env.update({PREV: None})

    def mark_bad(self, booted: Slot) -> Slot:
        """Switch away from `booted` now (§6 row 8): the other slot boots next, uncounted. Returns it."""
        self._known(booted)
        other = self.table.other(booted)
        self.env.update({self.slot_variable: other.boot_value, UPGRADE_AVAILABLE: "0", BOOTCOUNT: "0", PREV: None})
        log.info("bootchooser: slot %s marked bad, slot %s boots next", booted.name, other.name)
        return other

    def _known(self, slot: Slot) -> None:
        if slot not in self.table.slots:
            raise SlotError(f"slot {slot.describe()} is not one of the configured slots "
                           f"({self.table.describe()})")
