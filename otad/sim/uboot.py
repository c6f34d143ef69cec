"""A U-Boot emulator: what v2023.01 built with BOOTCOUNT_LIMIT + BOOTCOUNT_ENV does to the env at boot.

Owns the boot-time rules (env load or compiled-in default, bootcount_inc, bootcount_error, the A/B
altbootcmd given at the top of etc/boot.cmd) applied to a real env file through `UBootEnv`. Follows
include/bootcount.h, drivers/bootcount/bootcount_env.c, common/autoboot.c, env/common.c, env/fat.c and
lib/strto.c of v2023.01. The env's byte format is envimage's business; which slot runs, slots.py's.
"""

from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from otad.boot.ubootenv import UBootEnv
from otad.errors import ConfigError, EnvCorrupt

log = logging.getLogger(__name__)

# `ulong` is 32 bits on the Pi Zero's ARMv6 (64 on arm64 and sandbox): simple_strtoul and
# ++bootcount wrap there. `int` is 32 bits everywhere.
PI_ULONG_BITS = 32
INT_MASK = 0xFFFFFFFF
_BAD_DIGIT = 256  # decode_digit() for a non-hex character: larger than any base


@dataclass(frozen=True)
class BootDecision:
    """One emulated boot: the slot value bootcmd loads, the bootcount bootcount_inc left in RAM
    (1 when no trial is armed: RAM only), whether altbootcmd ran, whether saveenv ran (and how
    often: twice on a rollback boot), whether the compiled-in default env was used, and the
    console lines U-Boot would print about it. `slot_value` is "" if the variable is unset."""

    slot_value: str
    bootcount: int
    used_altbootcmd: bool
    env_written: bool
    default_env: bool
    env_writes: int = 0
    console: Tuple[str, ...] = ()


def simple_strtoul(text: str, base: int, *, bits: int = PI_ULONG_BITS) -> int:
    """U-Boot's simple_strtoul (lib/strto.c): a "0x" prefix means hex whatever `base` says, a
    leading "0" means octal only for base 0; no blanks or sign; stops at the first bad digit
    ("yes" and "" are 0); wraps at `bits` (the size of ulong)."""
    mask = (1 << bits) - 1
    if text[:1] == "0":
        if text[1:2].lower() == "x":
            base, text = 16, text[2:]
        elif base == 0:
            base = 8
    if base == 0:
        base = 10
    result = 0
    for char in text:
        digit = int(char, 16) if char in string.hexdigits else _BAD_DIGIT
        if digit >= base:
            break
        result = (result * base + digit) & mask
    return result


def env_get_ulong(
    env: Mapping[str, str], name: str, base: int, default: int, *, bits: int = PI_ULONG_BITS
) -> int:
    """env/common.c: the default only when the variable is unset."""
    value = env.get(name)
    return default if value is None else simple_strtoul(value, base, bits=bits)


class UBootEmulator:
    """Boots a simulated board once per `boot()` call, reading and writing `env` as U-Boot would.

    `default_env` is U-Boot's compiled-in default (CONFIG_EXTRA_ENV_SETTINGS etc.), used in RAM
    when no copy has a good CRC. `runtime_env` holds what board code sets in RAM on every boot
    before autoboot (on the Pi: fdtcontroladdr, fdt_addr, board_rev, serial#, ...): invisible
    unless something runs saveenv, which then stores it too. The altbootcmd is the one of
    etc/boot.cmd's header whatever the env's ``altbootcmd`` holds.
    """

    def __init__(
        self,
        env: UBootEnv,
        *,
        slot_variable: str = "rootpart",
        default_env: Mapping[str, str],
        alternatives: Tuple[str, str] = ("2", "3"),
        runtime_env: Optional[Mapping[str, str]] = None,
        ulong_bits: int = PI_ULONG_BITS,
    ) -> None:
        problem = _setup_problem(slot_variable, alternatives, ulong_bits)
        if problem:
            raise ConfigError(problem, where="U-Boot emulator")
        self.env = env
        self.slot_variable = slot_variable
        self.alternatives = alternatives
        self.default_env = _imported(default_env)
        self.runtime_env = dict(runtime_env or {})
        self.ulong_bits = ulong_bits
        self.boots = 0

    def boot(self) -> BootDecision:
        """One power-on or reset, up to the point where bootcmd (or altbootcmd) picks the slot."""
        self.boots += 1
        session = _Session.load(self)
        for name, value in self.runtime_env.items():  # env_set(): an empty value deletes
            if value:
                session.ram[name] = value
            else:
                session.ram.pop(name, None)
        bootcount = session.bootcount_inc()
        used_alt = session.bootcount_error()
        if used_alt:
            session.altbootcmd(self.slot_variable, self.alternatives)
        decision = BootDecision(
            slot_value=session.ram.get(self.slot_variable, ""),
            bootcount=bootcount,
            used_altbootcmd=used_alt,
            env_written=session.writes > 0,
            default_env=session.loaded_default,
            env_writes=session.writes,
            console=tuple(session.console),
        )
        log.info("sim u-boot: boot %d: %s", self.boots, decision)
        return decision


def _setup_problem(slot_variable: str, alternatives: Tuple[str, str], ulong_bits: int) -> Optional[str]:
    if not slot_variable or any(c.isspace() or c in "=\0" for c in slot_variable):
        return f"slot variable: expected a plain env name such as 'rootpart', got {slot_variable!r}"
    ok = isinstance(alternatives, tuple) and len(alternatives) == 2 and all(alternatives)
    if not ok or alternatives[0] == alternatives[1]:
        return f"alternatives: expected two different non-empty slot values, got {alternatives!r}"
    if ulong_bits not in (32, 64):
        return f"ulong_bits: expected 32 (ARMv6/v7) or 64 (arm64, sandbox), got {ulong_bits!r}"
    return None


def _imported(variables: Mapping[str, str]) -> Dict[str, str]:
    """What U-Boot's himport_r keeps: ``name=`` with an empty value deletes instead of storing."""
    return {name: value for name, value in variables.items() if value}


class _Session:
    """The RAM state of one boot: the env hash table and what has been saved."""

    def __init__(self, emulator: UBootEmulator, ram: Dict[str, str], on_disk: Optional[Dict[str, str]],
                 console: List[str]) -> None:
        self.emulator = emulator
        self.ram = ram
        self.on_disk = on_disk  # None: no valid copy, U-Boot runs on its default env
        self.loaded_default = on_disk is None
        self.console = console
        self.writes = 0

    @classmethod
    def load(cls, emulator: UBootEmulator) -> "_Session":
        """env_relocate() → env_fat_load(): the stored env, or the default env in RAM, which
        reaches the card only if something runs saveenv."""
        console = ["Loading Environment from FAT..."]
        try:
            snapshot = emulator.env.read()
        except EnvCorrupt:
            console.extend(_load_failure_lines(emulator.env))
            return cls(emulator, dict(emulator.default_env), None, console)
        console.extend(_partial_redundant_lines(emulator.env))
        console.append("OK")
        variables = dict(snapshot.variables)
        return cls(emulator, _imported(variables), variables, console)

    # -- include/bootcount.h, drivers/bootcount/bootcount_env.c

    def _ulong(self, name: str) -> int:
        return env_get_ulong(self.ram, name, 10, 0, bits=self.emulator.ulong_bits)

    def _upgrade_available(self) -> bool:
        # bootcount_env.c stores the ulong in an `int`: only the low 32 bits count.
        return (self._ulong("upgrade_available") & INT_MASK) != 0

    def bootcount_load(self) -> int:
        """0 unless a trial is armed: then the stored count (decimal, "0x" hex)."""
        return self._ulong("bootcount") if self._upgrade_available() else 0

    def bootcount_inc(self) -> int:
        """Count this boot: saved only while upgrade_available is non-zero, else RAM only."""
        bootcount = (self.bootcount_load() + 1) & ((1 << self.emulator.ulong_bits) - 1)
        if self._upgrade_available():  # bootcount_store()
            self.ram["bootcount"] = str(bootcount)
            self.saveenv()
        self.ram["bootcount"] = str(bootcount)  # env_set_ulong(): decimal, in RAM in any case
        return bootcount

    def bootcount_error(self) -> bool:
        """bootcount > bootlimit (decimal, 0 or unset: off); re-reads the count like U-Boot does."""
        bootlimit = self._ulong("bootlimit")
        if bootlimit and self.bootcount_load() > bootlimit:
            self.console.append(f"Warning: Bootlimit ({bootlimit}) exceeded. Using altbootcmd.")
            return True
        return False

    # -- the A/B altbootcmd (the one at the top of etc/boot.cmd)

    def altbootcmd(self, variable: str, alternatives: Tuple[str, str]) -> None:
        """``if test "${rootpart}" = "2"; then setenv rootpart 3; else setenv rootpart 2; fi;
        setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd``."""
        first, second = alternatives
        self.ram[variable] = second if self.ram.get(variable) == first else first
        self.ram["upgrade_available"] = "0"
        self.ram["bootcount"] = "0"
        self.saveenv()

    # -- env/fat.c env_fat_save()

    def saveenv(self) -> None:
        """Store the whole RAM env in one write (a redundant env: into the other copy)."""
        base = self.on_disk
        if base is None:
            self.emulator.env.update(dict(self.ram), allow_default=self.ram)
        else:
            changes: Dict[str, Optional[str]] = {k: v for k, v in self.ram.items() if base.get(k) != v}
            changes.update({k: None for k in base if k not in self.ram})
            self.emulator.env.update(changes)
        self.on_disk = dict(self.ram)
        self.writes += 1
        self.console.append("Saving Environment to FAT... OK")


def _load_failure_lines(env: UBootEnv) -> List[str]:
    """What env_fat_load() prints when no copy is usable (a missing file is a failed read)."""
    copies = env.layout.copies
    missing = [not os.path.exists(c.device) for c in copies]
    if len(copies) == 1:
        if missing[0]:
            name = os.path.basename(copies[0].device)
            return [f'Unable to read "{name}" from mmc0:1...']
        return ["*** Warning - bad CRC, using default environment"]
    if all(missing):
        return ["*** Error - No Valid Environment Area found",
                "*** Warning - bad env area, using default environment"]
    lines = _partial_redundant_lines(env) if any(missing) else []
    return lines + ["*** Warning - bad CRC, using default environment"]


def _partial_redundant_lines(env: UBootEnv) -> List[str]:
    if any(not os.path.exists(c.device) for c in env.layout.copies):
        return ["*** Warning - some problems detected reading environment; recovered successfully"]
    return []
