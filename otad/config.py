"""/etc/otad/otad.conf (libconfig) → a frozen, typed `Config`, parsed once.

One dataclass per section (`slots` is a list of groups); field names carry their units. Every
path otad touches is a field, which is what lets tests and the simulator run the real code
against files. An unknown section or key, a value of the wrong type or a bad value is a
ConfigError naming file:line. Whether a named file or device exists is checked where it is used.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union, cast

from otad import RELEASE_DATE
from otad.boot.slots import Slot, SlotTable
from otad.errors import ConfigError

DEFAULT_PATH = "/etc/otad/otad.conf"

SIGNATURE_METHODS = ("cms", "rsa")
CERT_PURPOSES = ("emailProtection", "codeSigning", "any")
# The env variables of the bootcount trial: the slot variable must not be one of them.
TRIAL_VARIABLES = ("upgrade_available", "bootcount", "bootlimit", "altbootcmd", "otad_prev")

# A key path into the config: ("bootloader", "bootlimit") or ("slots", 1, "device").
KeyPath = Tuple[Union[str, int], ...]


class _BadValue(ConfigError):
    """A value that parsed but is not allowed; `path` lets the parser name its file:line."""

    def __init__(self, what: str, path: KeyPath) -> None:
        self.path = path
        super().__init__(what)


def _one_of(key: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise _BadValue(f"{key}: expected one of {', '.join(allowed)}, got {value!r}", _key_path(key))


def _in_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _BadValue(f"{key}: expected {low}..{high}, got {value}", _key_path(key))


def _positive(path: KeyPath, value: float) -> None:
    if not value > 0:
        raise _BadValue(f"{_dotted(path)}: expected a number > 0, got {value!r}", path)


def _non_empty(path: KeyPath, value: str) -> None:
    if not value:
        raise _BadValue(f"{_dotted(path)}: expected a path, got ''", path)


def _env_name(path: KeyPath, value: str) -> None:
    if not value or any(c.isspace() or c in "=\"'\\\0" or ord(c) < 0x20 for c in value) or value[0] == "#":
        raise _BadValue(f"{_dotted(path)}: expected a plain U-Boot variable name such as 'rootpart', "
                        f"got {value!r}", path)


def _key_path(dotted: str) -> KeyPath:
    return tuple(dotted.split("."))


def _dotted(path: Sequence[Union[str, int]]) -> str:
    return ".".join(str(p) for p in path)


def parse_date(key: str, text: str) -> datetime.datetime:
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a date YYYY-MM-DD, got {text!r}") from None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc)


def parse_selection(text: str) -> Tuple[str, str]:
    """`set,mode` as given to -e."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"selection: expected SET,MODE (e.g. stable,copy1), got {text!r}")
    return parts[0].strip(), parts[1].strip()


@dataclass(frozen=True)
class SystemConfig:
    """Where the device keeps things."""

    state_dir: str = "/var/lib/otad"
    device_dir: str = "/dev"  # sw-description's /dev/NAME resolves to device_dir/NAME
    hwrevision_file: str = "/etc/hwrevision"
    hardware: Optional[str] = None  # "board:revision"; overrides hwrevision_file
    reboot_command: str = "reboot"  # run when a decision needs the other slot booted now


@dataclass(frozen=True)
class InstallConfig:
    """How bundles are checked and streamed."""

    signature: str = "cms"
    trust_file: str = "/etc/otad/ca.pem"  # CA certificates (cms) or the public key (rsa)
    cert_purpose: str = "emailProtection"
    forced_signer_name: Optional[str] = None
    allow_unsigned: bool = False
    time_floor: str = RELEASE_DATE  # certificate validity is never checked before this day
    check_hardware: bool = True
    selection: Optional[str] = None  # "set,mode" when no slot decides it
    chunk_kib: int = 256  # 1024 costs ~2.5 MB more peak RSS for no measurable speed (docs/performance.md)
    zstd_max_window_mib: int = 128

    def __post_init__(self) -> None:
        _one_of("install.signature", self.signature, SIGNATURE_METHODS)
        _one_of("install.cert_purpose", self.cert_purpose, CERT_PURPOSES)
        _in_range("install.chunk_kib", self.chunk_kib, 4, 16384)
        _in_range("install.zstd_max_window_mib", self.zstd_max_window_mib, 1, 2048)
        parse_date("install.time_floor", self.time_floor)
        if self.selection is not None:
            parse_selection(self.selection)

    @property
    def time_floor_datetime(self) -> datetime.datetime:
        return parse_date("install.time_floor", self.time_floor)

    @property
    def selection_pair(self) -> Optional[Tuple[str, str]]:
        return parse_selection(self.selection) if self.selection else None


@dataclass(frozen=True)
class BootloaderConfig:
    """The U-Boot env that switches slots, and where the running system says what booted."""

    fw_env_config: str = "/etc/fw_env.config"
    lock_file: str = "/var/lock/fw_printenv.lock"  # the flock fw_printenv/fw_setenv take
    slot_variable: str = "rootpart"  # env variable whose value picks the slot (a slot's boot_value)
    bootlimit: int = 3  # trial boots before altbootcmd falls back; written only if the env has none
    cmdline: str = "/proc/cmdline"
    mountinfo: Optional[str] = "/proc/self/mountinfo"  # "" = don't fall back to the root mount
    partuuid_dir: str = "/dev/disk/by-partuuid"

    def __post_init__(self) -> None:
        for key in ("fw_env_config", "lock_file", "cmdline", "partuuid_dir"):
            _non_empty(("bootloader", key), getattr(self, key))
        _env_name(("bootloader", "slot_variable"), self.slot_variable)
        if self.slot_variable in TRIAL_VARIABLES:
            raise _BadValue(f"bootloader.slot_variable: {self.slot_variable!r} is a bootcount variable; "
                            "expected the variable that picks the slot, such as 'rootpart'",
                            ("bootloader", "slot_variable"))
        _in_range("bootloader.bootlimit", self.bootlimit, 1, 99)


@dataclass(frozen=True)
class SlotConfig:
    """One A/B root slot: its block device, the slot variable's value that boots it, and the
    sw-description selection ("set,mode") that installs into it."""

    name: str
    device: str
    boot_value: str
    selection: Optional[str] = None

    def __post_init__(self) -> None:
        if self.selection is not None:
            try:
                parse_selection(self.selection)
            except ConfigError as exc:
                raise _BadValue(f"slots.{exc.what}", ("slots", "selection")) from None
        try:
            self.to_slot()
        except ConfigError as exc:
            # slots.Slot words its problems "name: ...", "boot value: ...", "device: ...".
            label, _, rest = exc.what.partition(": ")
            key = label.replace(" ", "_")
            if key not in _SLOT_KEYS:
                raise _BadValue(f"slots: {exc.what}", ("slots", "name")) from None
            raise _BadValue(f"slots.{key}: {rest}", ("slots", key)) from None

    def to_slot(self) -> Slot:
        pair = parse_selection(self.selection) if self.selection is not None else None
        return Slot(self.name, self.device, self.boot_value, pair)


_SLOT_KEYS = ("name", "device", "boot_value", "selection")

PI_SLOTS = (
    SlotConfig("a", "/dev/mmcblk0p2", "2", "stable,copy1"),
    SlotConfig("b", "/dev/mmcblk0p3", "3", "stable,copy2"),
)


@dataclass(frozen=True)
class HealthConfig:
    """Checks a trial slot must pass before otad commits it: shell commands, exit 0 = healthy."""

    timeout_s: float = 60.0  # per command; the command's process group is killed after it
    checks: Tuple[str, ...] = ()  # none = healthy

    def __post_init__(self) -> None:
        _positive(("health", "timeout_s"), self.timeout_s)
        for command in self.checks:
            if not isinstance(command, str) or not command.strip():
                raise _BadValue(f"health.checks: expected non-empty shell commands, got {command!r}",
                                ("health", "checks"))


@dataclass(frozen=True)
class WatchdogConfig:
    """The hardware watchdog otad pets (off by default: only one process may own it)."""

    enabled: bool = False
    device: str = "/dev/watchdog"
    timeout_s: int = 15  # asked for; the driver may grant less (the Pi: at most 15)
    nowayout: bool = False  # the kernel cannot stop the timer: never write the magic 'V'

    def __post_init__(self) -> None:
        _non_empty(("watchdog", "device"), self.device)
        _positive(("watchdog", "timeout_s"), self.timeout_s)


@dataclass(frozen=True)
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    bootloader: BootloaderConfig = field(default_factory=BootloaderConfig)
    slots: Tuple[SlotConfig, ...] = ()  # none: plain installs, no A/B switch (etc/otad.conf has the Pi's)
    health: HealthConfig = field(default_factory=HealthConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    source: Optional[str] = None

    def __post_init__(self) -> None:
        if self.slots:
            _check_slots(self.slots)

    @property
    def ab_enabled(self) -> bool:
        """A/B switching is on when the configuration names the slots."""
        return bool(self.slots)

    def replace(self, section: str, **changes: Any) -> "Config":
        """A copy with some keys of one section changed (command-line flags override the file)."""
        updated = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: updated})

    def slot_table(self) -> SlotTable:
        """The slots as the boot code uses them."""
        if not self.slots:
            raise ConfigError("no slots configured: A/B updates need a 'slots' section (see etc/otad.conf)",
                              self.source)
        return SlotTable(tuple(s.to_slot() for s in self.slots))


@dataclass(frozen=True)
class ListOf:
    """A section that is a list of groups `( { ... }, { ... } )`, each read as `item`."""

    item: Type[Any]


SECTIONS: Dict[str, Union[Type[Any], ListOf]] = {
    "system": SystemConfig,
    "install": InstallConfig,
    "bootloader": BootloaderConfig,
    "slots": ListOf(SlotConfig),
    "health": HealthConfig,
    "watchdog": WatchdogConfig,
}


def _check_slots(slots: Tuple[SlotConfig, ...]) -> None:
    """Exactly two slots (A/B) with unique names, devices and boot values."""
    if not isinstance(slots, tuple) or len(slots) != 2:
        count = len(slots) if isinstance(slots, (tuple, list)) else slots
        raise _BadValue(f"slots: expected exactly 2 slots (A/B), got {count}", ("slots",))
    for key in ("name", "device", "boot_value"):
        first, second = (getattr(s, key) for s in slots)
        if first == second:
            raise _BadValue(f"slots: both slots have the {key.replace('_', ' ')} {first!r}; expected "
                            "different ones", ("slots", 1, key))


def load(path: Optional[str]) -> Config:
    """Read `path`; None means the built-in defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path) from exc
    return parse(text, source=path)


def parse(text: str, *, source: str) -> Config:
    from otad import libconfig

    tree = libconfig.loads(text, source=source, error=ConfigError)
    where = _Locator(source, text)
    sections: Dict[str, Any] = {}
    for name, values in tree.items():
        kind = SECTIONS.get(name)
        if kind is None:
            raise ConfigError(f"unknown section {name!r} (expected one of: {', '.join(SECTIONS)})",
                              where(name))
        if isinstance(kind, ListOf):
            sections[name] = _list_section(kind.item, name, values, where)
        elif not isinstance(values, Mapping):
            raise ConfigError(f"{name}: expected a group {{ ... }}", where(name))
        else:
            sections[name] = _section(kind, name, values, where)
    try:
        return Config(source=source, **sections)
    except _BadValue as exc:
        raise ConfigError(exc.what, where(*exc.path)) from None


T = TypeVar("T")

_TYPES: Dict[str, Tuple[type, ...]] = {
    "str": (str,), "Optional[str]": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
    "Tuple[str, ...]": (list, tuple),
}
_SHOWN_TYPES = {"Optional[str]": "str", "Tuple[str, ...]": "a list of strings ( \"...\", ... )"}


def _section(cls: Type[T], name: str, values: Mapping[str, Any], where: "_Locator",
             index: Optional[int] = None) -> T:
    """One group read as `cls`; `index` places a group that is an element of a list section."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    label = name if index is None else f"{name}[{index}]"
    base: KeyPath = (name,) if index is None else (name, index)
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{label}.{key}: unknown setting (expected one of: {', '.join(known)})",
                              where(*base, key))
        kwargs[key] = _value(f, value, f"{label}.{key}", where(*base, key))
    missing = [n for n, f in known.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{label}: missing setting {', '.join(missing)}", where(*base))
    try:
        return cls(**kwargs)
    except _BadValue as exc:
        what = exc.what if index is None else re.sub(rf"^{re.escape(name)}\b", label, exc.what)
        raise ConfigError(what, where(*base, *exc.path[1:])) from None
    except ConfigError as exc:
        # Checks shared with the command line word their message "key: ..." or "section.key: ...".
        key = exc.what.split(":", 1)[0].rsplit(".", 1)[-1]
        raise ConfigError(exc.what, where(*base, key) if key in known else where.source) from None


def _value(f: "dataclasses.Field[Any]", value: Any, label: str, where: str) -> Any:
    """`value` checked against the field's annotation (a string: `from __future__ import annotations`)."""
    kind = str(f.type)
    wanted = _TYPES[kind]
    if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
        raise ConfigError(f"{label}: expected {_SHOWN_TYPES.get(kind, kind)}, got {value!r}", where)
    if kind == "Tuple[str, ...]":
        return _strings(cast(Sequence[Any], value), label, where)  # a list ( ) or an array [ ]
    return None if kind == "Optional[str]" and value == "" else value


def _strings(items: Sequence[Any], label: str, where: str) -> Tuple[str, ...]:
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise ConfigError(f"{label}: expected strings only, got {bad[0]!r}", where)
    return tuple(items)


def _list_section(cls: Type[T], name: str, values: Any, where: "_Locator") -> Tuple[T, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"{name}: expected a list of groups ( {{ ... }}, {{ ... }} )", where(name))
    items: List[T] = []
    for index, item in enumerate(values):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}[{index}]: expected a group {{ ... }}, got {item!r}", where(name, index))
        items.append(_section(cls, name, item, where, index))
    return tuple(items)


class _Locator:
    """file:line of a key path (libconf keeps no positions, so the text is scanned again).

    Strings and comments are blanked out first, so a key is found only where it is set, in
    the group it belongs to (`watchdog.timeout_s`, not `health.timeout_s`).
    """

    _NOT_CODE = re.compile(r'"(?:[^"\\]|\\.)*"?|/\*.*?(?:\*/|\Z)|(?://|#)[^\n]*', re.DOTALL)
    _SETTING = re.compile(r"([A-Za-z*][-A-Za-z0-9_*]*)\s*[=:]")

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.code = self._NOT_CODE.sub(self._blank, text)

    @staticmethod
    def _blank(match: "re.Match[str]") -> str:
        """Spaces for a comment; a string keeps its quotes, so it still counts as a value."""
        text = match.group()
        inner = re.sub(r"[^\n]", " ", text)
        return f'"{inner[1:-1]}"' if text.startswith('"') and len(text) > 1 and text.endswith('"') else inner

    def __call__(self, *path: Union[str, int]) -> str:
        """The line of the deepest part of `path` that is found (the file alone if none is)."""
        span = (0, len(self.code))
        found: Optional[int] = None
        for part in path:
            located = self._find(part, span)
            if located is None:
                break
            found, span = located
        if found is None:
            return self.source
        return f"{self.source}:{self.code.count(chr(10), 0, found) + 1}"

    def _find(self, part: Union[str, int], span: Tuple[int, int]) -> Optional[Tuple[int, Tuple[int, int]]]:
        """Where `part` starts inside `span`, and the span of its value (inside brackets)."""
        if isinstance(part, int):
            elements = self._elements(span)
            return elements[part] if part < len(elements) else None
        settings = self._settings(span)
        return settings.get(part)

    def _settings(self, span: Tuple[int, int]) -> Dict[str, Tuple[int, Tuple[int, int]]]:
        """The settings of one group level: name → (offset, span of its value)."""
        out: Dict[str, Tuple[int, Tuple[int, int]]] = {}
        pos, end = span
        while pos < end:
            m = self._SETTING.search(self.code, pos, end)
            if m is None:
                break
            pos, inner = self._value(m.end(), end)
            out.setdefault(m.group(1), (m.start(), inner))
        return out

    def _elements(self, span: Tuple[int, int]) -> List[Tuple[int, Tuple[int, int]]]:
        """The elements of a list `( a, b )`: offset and span of each."""
        out: List[Tuple[int, Tuple[int, int]]] = []
        pos, end = span
        while True:
            while pos < end and self.code[pos] in " \t\r\n\f,":
                pos += 1
            if pos >= end:
                return out
            start = pos
            pos, inner = self._value(pos, end)
            out.append((start, inner))

    def _value(self, pos: int, end: int) -> Tuple[int, Tuple[int, int]]:
        """For the value starting at `pos`: where scanning goes on after it, and the span to
        search inside it (between the brackets of a group, list or array)."""
        while pos < end and self.code[pos] in " \t\r\n\f":
            pos += 1
        depth = 0
        for i in range(pos, end):
            char = self.code[i]
            if char in "{([":
                depth += 1
            elif char in "})]":
                depth -= 1
                if depth == 0:
                    return i + 1, (pos + 1, i)
                if depth < 0:
                    return i, (pos, i)
            elif char in ";," and depth == 0:
                return i + 1, (pos, i)
        return end, (pos, end)
