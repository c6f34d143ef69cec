"""The A/B slot table and which slot is running.

Owns the slots of the device (name, block device, the env value that boots it, the sw-description
selection that installs into it), what the install records say a slot holds (`SlotInstall`,
handed over by otad.update), and finding the booted slot from the kernel command line or the
mounted root, never from the U-Boot env. Arming, confirming and detecting a fallback belong to
trial.py; reading and writing the env to ubootenv.py.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from otad.config import Config, SlotConfig, parse_selection, slot_problem
from otad.errors import ConfigError, SlotError

CMDLINE_PATH = "/proc/cmdline"
MOUNTINFO_PATH = "/proc/self/mountinfo"
# Kernel parameters the boot script (etc/boot.cmd) adds next to root=.
SLOT_PARAM = "otad.slot"
BOOT_VALUE_PARAM = "otad.rootpart"

__all__ = [
    "BOOT_VALUE_PARAM",
    "CMDLINE_PATH",
    "MOUNTINFO_PATH",
    "SLOT_PARAM",
    "BootedSlot",
    "Slot",
    "SlotInstall",
    "SlotTable",
    "booted_slot",
    "env_mismatch",
]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Slot:
    """One root slot: `device` holds it, the env's slot variable holds `boot_value` to boot it,
    and `selection` is the sw-description (set, mode) that installs into it."""

    name: str
    device: str
    boot_value: str
    selection: Optional[Tuple[str, str]] = None

    def __post_init__(self) -> None:
        problem = _slot_problem(self)
        if problem:
            raise ConfigError(problem, where=f"slot {self.name!r}")

    @classmethod
    def from_config(cls, config: SlotConfig) -> Slot:
        pair = parse_selection(config.selection) if config.selection is not None else None
        return cls(config.name, config.device, config.boot_value, pair)

    def describe(self) -> str:
        return f"{self.name} ({self.device}, boot value {self.boot_value!r})"


def _slot_problem(slot: Slot) -> Optional[str]:
    problem = slot_problem(slot.name, slot.device, slot.boot_value)
    if problem:
        return problem
    if slot.selection is not None:
        ok = isinstance(slot.selection, tuple) and len(slot.selection) == 2
        if not ok or not all(isinstance(s, str) and s for s in slot.selection):
            return f"selection: expected a (set, mode) pair of non-empty texts, got {slot.selection!r}"
    return None


@dataclass(frozen=True)
class SlotTable:
    """The device's slots: at least two, with unique names, devices and boot values."""

    slots: Tuple[Slot, ...]

    def __post_init__(self) -> None:
        problem = _table_problem(self.slots)
        if problem:
            raise ConfigError(problem, where="slots")

    @classmethod
    def from_config(cls, config: Config) -> SlotTable:
        """The configuration's `slots` section as the boot code uses it."""
        if not config.slots:
            raise ConfigError("no slots configured: A/B updates need a 'slots' section (see etc/otad.conf)",
                              config.source)
        return cls(tuple(Slot.from_config(s) for s in config.slots))

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    def by_name(self, name: str) -> Slot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise SlotError(f"no slot named {name!r}; known slots: {', '.join(self.names)}", where="slots")

    def by_boot_value(self, value: str) -> Optional[Slot]:
        for slot in self.slots:
            if slot.boot_value == value:
                return slot
        return None

    def other(self, slot: Slot) -> Slot:
        """The inactive slot of an A/B pair."""
        if slot not in self.slots:
            known = ", ".join(self.names)
            raise SlotError(f"slot {slot.describe()} is not in the table ({known})", where="slots")
        if len(self.slots) != 2:
            raise SlotError(
                f"the other slot is ambiguous: expected exactly 2 slots (A/B), got {len(self.slots)}: "
                f"{', '.join(self.names)}",
                where="slots",
            )
        return self.slots[1] if slot == self.slots[0] else self.slots[0]

    def describe(self) -> str:
        return ", ".join(f"{s.name}={s.device} ({s.boot_value})" for s in self.slots)


@dataclass(frozen=True)
class SlotInstall:
    """The install in one slot as otad's install records tell it; otad.update reads them (boot/
    reads none). `state` is install/status.py's, as `otad status` shows it: installing (a writer
    holding the lock writes the slot now), interrupted (stopped, or killed half-way), failed, or
    installed (written, hashed and synced: the only state whose `version` the slot holds)."""

    state: str
    version: Optional[str] = None
    reason: Optional[str] = None
    updated_at: Optional[float] = None  # wall clock, informational only

    @property
    def complete(self) -> bool:
        return self.state == "installed"

    @property
    def being_written(self) -> bool:
        return self.state == "installing"

    @property
    def interrupted(self) -> bool:
        return self.state == "interrupted"


def _table_problem(slots: Sequence[Slot]) -> Optional[str]:
    if not isinstance(slots, tuple) or not all(isinstance(s, Slot) for s in slots):
        return f"expected a tuple of Slot, got {slots!r}"
    if len(slots) < 2:
        return f"expected at least 2 slots, got {len(slots)}"
    for field in ("name", "device", "boot_value"):
        seen: Dict[str, str] = {}
        for slot in slots:
            value = getattr(slot, field)
            if value in seen:
                return f"slots {seen[value]!r} and {slot.name!r} share the {field.replace('_', ' ')} {value!r}"
            seen[value] = slot.name
    return None


# ------------------------------------------------------------------- the booted slot


@dataclass(frozen=True)
class BootedSlot:
    """The running slot and how we know: e.g. ``kernel command line root=PARTUUID=1234abcd-03``."""

    slot: Slot
    evidence: str


@dataclass(frozen=True)
class _Probe:
    """Where the booted-slot search looks: the cmdline's parameters and the filesystem."""

    table: SlotTable
    params: Dict[str, str]
    partuuid_dir: str
    device_dir: str
    stat: Callable[[str], os.stat_result]


def booted_slot(
    table: SlotTable,
    *,
    cmdline: str,
    mountinfo: Optional[str] = None,
    partuuid_dir: str = "/dev/disk/by-partuuid",
    device_dir: str = "/dev",
    stat: Callable[[str], os.stat_result] = os.stat,
) -> BootedSlot:
    """The slot the running system booted from, from /proc/cmdline text and, failing that, from
    /proc/self/mountinfo text; never from the env (which says what boots *next*).

    Order: ``otad.slot=NAME`` / ``otad.rootpart=VALUE`` (checked against ``root=`` when both
    resolve), ``root=/dev/...``, ``root=MAJ:MIN``, ``root=PARTUUID=...``, then the device number
    of the filesystem mounted at ``/``. Raises SlotError when nothing matches.
    """
    probe = _Probe(table, _cmdline_params(cmdline), partuuid_dir, device_dir, stat)
    notes: List[str] = []
    from_root = _from_root(probe, notes)
    explicit = _from_explicit(probe)
    if explicit is not None:
        if from_root is not None and from_root.slot != explicit.slot:
            raise SlotError(
                f"the kernel command line contradicts itself: {explicit.evidence} names slot "
                f"{explicit.slot.name!r} but {from_root.evidence} is slot {from_root.slot.name!r}",
                where=CMDLINE_PATH,
            )
        return explicit
    if from_root is not None:
        return from_root
    if mountinfo is not None:
        found = _from_mountinfo(probe, mountinfo, notes)
        if found is not None:
            return found
    else:
        notes.append("no mountinfo given")
    raise _unknown(probe, notes)


def _unknown(probe: _Probe, notes: List[str]) -> SlotError:
    root = probe.params.get("root")
    shown = f"root={root!r}" if root is not None else "no root= parameter"
    return SlotError(
        f"cannot tell which slot is booted: {shown} matches none of the slots "
        f"({probe.table.describe()}); {'; '.join(notes)}",
        where=CMDLINE_PATH,
    )


# -- the kernel command line


def _cmdline_params(cmdline: str) -> Dict[str, str]:
    """``name=value`` parameters as the kernel splits them (double quotes group blanks); a later
    one wins, as for root=; "--" ends the kernel's part (the rest goes to init)."""
    params: Dict[str, str] = {}
    for word in _cmdline_words(cmdline):
        if word == "--":
            break
        name, sep, value = word.replace('"', "").partition("=")
        if sep:
            params[name] = value
    return params


def _cmdline_words(cmdline: str) -> List[str]:
    words: List[str] = []
    current: List[str] = []
    quoted = False
    for char in cmdline:
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                words.append("".join(current))
            current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _from_explicit(probe: _Probe) -> Optional[BootedSlot]:
    """``otad.slot=NAME`` or ``otad.rootpart=VALUE``: set by the boot script; a bad one is an error."""
    found: List[BootedSlot] = []
    name = probe.params.get(SLOT_PARAM)
    if name is not None:
        slot = next((s for s in probe.table.slots if s.name == name), None)
        if slot is None:
            raise SlotError(
                f"{SLOT_PARAM}={name!r} names no slot; known slots: {', '.join(probe.table.names)}",
                where=CMDLINE_PATH,
            )
        found.append(BootedSlot(slot, f"kernel command line {SLOT_PARAM}={name}"))
    value = probe.params.get(BOOT_VALUE_PARAM)
    if value is not None:
        slot = probe.table.by_boot_value(value)
        if slot is None:
            known = ", ".join(f"{s.boot_value} ({s.name})" for s in probe.table.slots)
            raise SlotError(
                f"{BOOT_VALUE_PARAM}={value!r} is no slot's boot value; known: {known}", where=CMDLINE_PATH
            )
        found.append(BootedSlot(slot, f"kernel command line {BOOT_VALUE_PARAM}={value}"))
    if len(found) == 2 and found[0].slot != found[1].slot:
        raise SlotError(
            f"{found[0].evidence} and {found[1].evidence} name different slots "
            f"({found[0].slot.name!r}, {found[1].slot.name!r})",
            where=CMDLINE_PATH,
        )
    return found[0] if found else None


def _from_root(probe: _Probe, notes: List[str]) -> Optional[BootedSlot]:
    root = probe.params.get("root")
    if root is None:
        notes.append("the kernel command line has no root=")
        return None
    evidence = f"kernel command line root={root}"
    if root.startswith("/dev/"):
        slot = _slot_at_path(probe, _in_device_dir(root, probe.device_dir))
        if slot is None:
            notes.append(f"root={root} is not a slot device")
        return BootedSlot(slot, evidence) if slot else None
    if root.upper().startswith("PARTUUID="):
        return _from_partuuid(probe, root[len("PARTUUID="):], evidence, notes)
    number = _parse_dev_number(root)
    if number is not None:
        slot = _slot_with_rdev(probe, number, notes)
        return BootedSlot(slot, f"{evidence} (device {number[0]}:{number[1]})") if slot else None
    kind = root.split("=", 1)[0] if "=" in root else root
    notes.append(f"root={root} ({kind}) is not resolved by otad; set {SLOT_PARAM}= on the kernel command line")
    return None


def _in_device_dir(path: str, device_dir: str) -> str:
    """/dev/NAME → device_dir/NAME, so tests and the simulator can stand in for /dev."""
    if path.startswith("/dev/"):
        return os.path.join(device_dir, path[len("/dev/"):])
    return path


def _slot_at_path(probe: _Probe, path: str) -> Optional[Slot]:
    """The slot whose device is `path` or what `path` resolves to (symlinks followed)."""
    target = os.path.realpath(path)
    for slot in probe.table.slots:
        device = _in_device_dir(slot.device, probe.device_dir)
        if path == device or target == os.path.realpath(device):
            return slot
    return None


def _from_partuuid(probe: _Probe, partuuid: str, evidence: str, notes: List[str]) -> Optional[BootedSlot]:
    """PARTUUID values are case-insensitive; udev's by-partuuid links are lower case."""
    try:
        entries = os.listdir(probe.partuuid_dir)
    except OSError as exc:
        notes.append(f"cannot list {probe.partuuid_dir}: {exc.strerror or exc}")
        return None
    match = next((e for e in entries if e.lower() == partuuid.lower()), None)
    if match is None:
        notes.append(f"{probe.partuuid_dir} has no entry {partuuid.lower()!r}")
        return None
    link = os.path.join(probe.partuuid_dir, match)
    target = os.path.realpath(link)
    slot = _slot_at_path(probe, target)
    if slot is None:
        notes.append(f"{link} -> {target} is not a slot device")
        return None
    return BootedSlot(slot, f"{evidence} ({link} -> {target})")


def _parse_dev_number(text: str) -> Optional[Tuple[int, int]]:
    """``MAJ:MIN`` in decimal, as root= and mountinfo write it."""
    major, sep, minor = text.partition(":")
    if sep and major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii():
        return int(major), int(minor)
    return None


def _slot_with_rdev(probe: _Probe, number: Tuple[int, int], notes: List[str]) -> Optional[Slot]:
    """The slot whose block device has device number `number` (a regular file has none)."""
    for slot in probe.table.slots:
        device = _in_device_dir(slot.device, probe.device_dir)
        try:
            st = probe.stat(device)
        except OSError as exc:
            notes.append(f"cannot stat {device}: {exc.strerror or exc}")
            continue
        if not stat_mod.S_ISBLK(st.st_mode):
            notes.append(f"{device} is not a block device")
            continue
        if (os.major(st.st_rdev), os.minor(st.st_rdev)) == number:
            return slot
    return None


# -- /proc/self/mountinfo


def _from_mountinfo(probe: _Probe, mountinfo: str, notes: List[str]) -> Optional[BootedSlot]:
    root = _root_mount(mountinfo)
    if root is None:
        notes.append("mountinfo has no line for '/'")
        return None
    number, source = root
    slot = _slot_with_rdev(probe, number, notes)
    if slot is not None:
        return BootedSlot(slot, f"mountinfo: / is on device {number[0]}:{number[1]}, that of {slot.device}")
    if source.startswith("/dev/"):
        slot = _slot_at_path(probe, _in_device_dir(source, probe.device_dir))
        if slot is not None:
            return BootedSlot(slot, f"mountinfo: / is mounted from {source}")
    notes.append(f"mountinfo: / is on device {number[0]}:{number[1]} from {source!r}, not a slot")
    return None


def _root_mount(mountinfo: str) -> Optional[Tuple[Tuple[int, int], str]]:
    """Device number and source of the last mount at '/' (the one on top).

    Line: ``id parent MAJ:MIN root mountpoint options [optional...] - fstype source superopts``.
    """
    found: Optional[Tuple[Tuple[int, int], str]] = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or fields[4] != "/" or "-" not in fields[6:]:
            continue
        number = _parse_dev_number(fields[2])
        dash = fields.index("-", 6)
        if number is not None and dash + 2 < len(fields):
            found = (number, fields[dash + 2])
    return found


# --------------------------------------------------------------------- env vs booted


def env_mismatch(
    table: SlotTable, booted: BootedSlot, env_value: Optional[str], *, variable: str = "rootpart"
) -> Optional[str]:
    """A sentence when the env's slot variable would boot another slot than the running one
    (a trial, a fallback, or a manual boot: for the trial logic to judge), else None."""
    running = f"the running slot is {booted.slot.name} ({booted.evidence})"
    if env_value is None:
        return f"the U-Boot env has no {variable!r}; {running}"
    if env_value == booted.slot.boot_value:
        return None
    slot = table.by_boot_value(env_value)
    if slot is None:
        known = ", ".join(f"{s.boot_value} ({s.name})" for s in table.slots)
        return f"the U-Boot env's {variable}={env_value!r} is no slot's boot value (known: {known}); {running}"
    return f"the U-Boot env's {variable}={env_value!r} selects slot {slot.name} for the next boot; {running}"
