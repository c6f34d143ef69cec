"""/etc/otad/otad.conf (libconfig) → a frozen, typed `Config`, parsed once.

One dataclass per section; field names carry their units. Every path otad touches is a field,
which is what lets tests and the simulator run the real code against files. An unknown
section or key, or a value of the wrong type, is a ConfigError naming file:line.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

from otad import RELEASE_DATE
from otad.errors import ConfigError

DEFAULT_PATH = "/etc/otad/otad.conf"

SIGNATURE_METHODS = ("cms", "rsa")
CERT_PURPOSES = ("emailProtection", "codeSigning", "any")


@dataclass(frozen=True)
class SystemConfig:
    """Where the device keeps things."""

    state_dir: str = "/var/lib/otad"
    device_dir: str = "/dev"  # sw-description's /dev/NAME resolves to device_dir/NAME
    hwrevision_file: str = "/etc/hwrevision"
    hardware: Optional[str] = None  # "board:revision"; overrides hwrevision_file


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
    chunk_kib: int = 1024
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
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    source: Optional[str] = None

    def replace(self, section: str, **changes: Any) -> "Config":
        """A copy with some keys of one section changed (command-line flags override the file)."""
        updated = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: updated})


SECTIONS: Dict[str, Type[Any]] = {"system": SystemConfig, "install": InstallConfig}


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
    sections: Dict[str, Any] = {}
    for name, values in tree.items():
        cls = SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown section {name!r} (expected one of: {', '.join(SECTIONS)})",
                              _where(source, text, name))
        if not isinstance(values, Mapping):
            raise ConfigError(f"{name}: expected a group {{ ... }}", _where(source, text, name))
        sections[name] = _section(cls, name, values, text, source)
    return Config(source=source, **sections)


T = TypeVar("T")

_TYPES: Dict[str, Tuple[type, ...]] = {
    "str": (str,), "Optional[str]": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
}


def _section(cls: Type[T], name: str, values: Mapping[str, Any], text: str, source: str) -> T:
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        where = _where(source, text, key)
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{name}.{key}: unknown setting (expected one of: {', '.join(known)})", where)
        wanted = _TYPES[str(f.type)]
        if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
            raise ConfigError(f"{name}.{key}: expected {str(f.type).replace('Optional[str]', 'str')}, "
                              f"got {value!r}", where)
        kwargs[key] = None if f.type == "Optional[str]" and value == "" else value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(exc.what, source) from None


def _where(source: str, text: str, key: str) -> str:
    """file:line of the first line that sets `key` (libconf keeps no positions)."""
    match = re.search(rf"^\s*{re.escape(key)}\s*[=:]", text, re.MULTILINE)
    if match is None:
        return source
    return f"{source}:{text.count(chr(10), 0, match.start()) + 1}"


def _one_of(key: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def _in_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: expected {low}..{high}, got {value}")


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
