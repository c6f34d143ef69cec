"""/etc/otad/otad.conf (libconfig) → a frozen, typed `Config`, parsed once: data and validation.

One dataclass per section (`slots` is a list of groups); field names carry their units. Every
path otad touches is a field, which is what lets tests and the simulator run the real code
against files. An unknown section or key, a value of the wrong type or a bad value is a
ConfigError naming file:line. Whether a named file or device exists is checked where it is used.
Loading reads the one file and writes nothing; what the values mean is the users' business (the
slot table: otad.boot.slots, swupdate.cfg's defaults: otad.hawkbit.suricatta), so this module
imports none of them.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Literal, Mapping, Optional, Sequence, Tuple, Type, \
    TypeVar, Union, cast, get_args

from otad import RELEASE_DATE
from otad.errors import ConfigError

if TYPE_CHECKING:  # otad.libconfig loads libconf: imported when a file is parsed
    from otad.libconfig import Locator

DEFAULT_PATH = "/etc/otad/otad.conf"
MAX_CONFIG_BYTES = 1 << 20  # otad.conf with every key and its comments is a few KiB

# The choices a key offers: the type of its field, and the words the file may say.
SignatureMethod = Literal["cms", "rsa"]
CertPurpose = Literal["emailProtection", "codeSigning", "any"]
FilesVia = Literal["auto", "mount", "debugfs"]  # mount when root
HawkbitAuth = Literal["none", "target_token", "gateway_token"]
SIGNATURE_METHODS: Tuple[str, ...] = get_args(SignatureMethod)
CERT_PURPOSES: Tuple[str, ...] = get_args(CertPurpose)
FILES_VIA: Tuple[str, ...] = get_args(FilesVia)
# The env variables of the bootcount trial: the slot variable must not be one of them.
TRIAL_VARIABLES = ("upgrade_available", "bootcount", "bootlimit", "altbootcmd", "otad_prev")

# A key path into the config: ("bootloader", "bootlimit") or ("slots", 1, "device").
KeyPath = Tuple[Union[str, int], ...]


class BadValue(ConfigError):
    """A value that parsed but is not allowed; `path` lets the parser (or `Config.where`) name
    its file:line."""

    def __init__(self, what: str, path: KeyPath) -> None:
        self.path = path
        super().__init__(what)


def _one_of(key: str, value: str, allowed: Tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadValue(f"{key}: expected one of {', '.join(allowed)}, got {value!r}", _key_path(key))


def _in_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise BadValue(f"{key}: expected {low}..{high}, got {value}", _key_path(key))


def _positive(path: KeyPath, value: float) -> None:
    if not value > 0:
        raise BadValue(f"{_dotted(path)}: expected a number > 0, got {value!r}", path)


def _non_empty(path: KeyPath, value: str) -> None:
    if not value:
        raise BadValue(f"{_dotted(path)}: expected a path, got ''", path)


def _env_name(path: KeyPath, value: str) -> None:
    if not value or any(c.isspace() or c in "=\"'\\\0" or ord(c) < 0x20 for c in value) or value[0] == "#":
        raise BadValue(f"{_dotted(path)}: expected a plain U-Boot variable name such as 'rootpart', "
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
    run_dir: Optional[str] = None  # volatile status (daemon.json); "/run/otad" spares the SD card; None: state_dir
    device_dir: str = "/dev"  # sw-description's /dev/NAME resolves to device_dir/NAME
    hwrevision_file: str = "/etc/hwrevision"
    hardware: Optional[str] = None  # "board:revision"; overrides hwrevision_file
    reboot_command: str = "reboot"  # run when a decision needs the other slot booted now
    sw_versions_file: str = "/etc/sw-versions"  # "name version" lines for install-if-different/-higher

    @property
    def status_file(self) -> str:
        """What the running daemon publishes for `otad status`."""
        return os.path.join(self.run_dir or self.state_dir, "daemon.json")


@dataclass(frozen=True)
class InstallConfig:
    """How bundles are checked and streamed."""

    signature: SignatureMethod = "cms"
    trust_file: str = "/etc/otad/ca.pem"  # CA certificates (cms) or the public key (rsa)
    cert_purpose: CertPurpose = "emailProtection"
    forced_signer_name: Optional[str] = None
    allow_unsigned: bool = False
    time_floor: str = RELEASE_DATE  # certificate validity is never checked before this day
    check_hardware: bool = True
    selection: Optional[str] = None  # "set,mode" when no slot decides it
    chunk_kib: int = 256  # 1024 costs ~2.5 MB more peak RSS for no measurable speed (docs/performance.md)
    zstd_max_window_mib: int = 128
    aes_key_file: Optional[str] = None  # SWUpdate -K: "<hex key> <hex iv>" (or swugenerator's key=/iv=)
    min_version: Optional[str] = None  # SWUpdate -N: refuse bundles with a lower version (anti-rollback)
    max_version: Optional[str] = None  # SWUpdate --max-version: refuse bundles with a higher version
    no_reinstall: Optional[str] = None  # SWUpdate -R: refuse a bundle whose version string is exactly this
    # files and scripts:
    ext4_resize: bool = False  # grow `type = "ext4"` images to their partition (properties.resize overrides)
    script_timeout_s: float = 300.0  # per script; its process group is killed after it
    files_via: FilesVia = "auto"  # files into a device: "mount", "debugfs" (rawfile on ext2/3/4, no root) or "auto"

    def __post_init__(self) -> None:
        _one_of("install.signature", self.signature, SIGNATURE_METHODS)
        _one_of("install.cert_purpose", self.cert_purpose, CERT_PURPOSES)
        _in_range("install.chunk_kib", self.chunk_kib, 4, 16384)
        _in_range("install.zstd_max_window_mib", self.zstd_max_window_mib, 1, 2048)
        parse_date("install.time_floor", self.time_floor)
        if self.selection is not None:
            parse_selection(self.selection)
        _check_versions(self)
        _positive(("install", "script_timeout_s"), self.script_timeout_s)
        _one_of("install.files_via", self.files_via, FILES_VIA)

    @property
    def time_floor_datetime(self) -> datetime.datetime:
        return parse_date("install.time_floor", self.time_floor)

    @property
    def selection_pair(self) -> Optional[Tuple[str, str]]:
        return parse_selection(self.selection) if self.selection else None


def _check_versions(install: InstallConfig) -> None:
    for key in ("min_version", "max_version", "no_reinstall"):
        value = getattr(install, key)
        if value is not None and (not value or any(c.isspace() or ord(c) < 0x20 for c in value)):
            raise BadValue(f"install.{key}: expected a version such as \"2.1.0\", got {value!r}", ("install", key))
    if install.min_version is not None and install.max_version is not None:
        from otad.swu.version import compare

        if compare(install.min_version, install.max_version) > 0:
            raise BadValue(f"install.max_version: {install.max_version!r} is lower than install.min_version "
                           f"{install.min_version!r}; no bundle could be installed", ("install", "max_version"))


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
            raise BadValue(f"bootloader.slot_variable: {self.slot_variable!r} is a bootcount variable; "
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
                raise BadValue(f"slots.{exc.what}", ("slots", "selection")) from None
        problem = slot_problem(self.name, self.device, self.boot_value)
        if problem:
            # slot_problem words its problems "name: ...", "boot value: ...", "device: ...".
            label, _, rest = problem.partition(": ")
            key = label.replace(" ", "_")
            if key not in _SLOT_KEYS:
                raise BadValue(f"slots: {problem}", ("slots", "name"))
            raise BadValue(f"slots.{key}: {rest}", ("slots", key))


_SLOT_KEYS = ("name", "device", "boot_value", "selection")


def slot_problem(name: object, device: object, boot_value: object) -> Optional[str]:
    """What is wrong with a slot's name, device or boot value ("name: ...", "boot value: ...",
    "device: ..."), or None. The slot table (otad.boot.slots) holds its slots to the same rules."""
    problem = _word_problem("name", name) or _word_problem("boot value", boot_value)
    if problem:
        return problem
    if not isinstance(device, str) or not device.startswith("/") or "\0" in device:
        return f"device: expected an absolute path such as '/dev/mmcblk0p2', got {device!r}"
    return None


def _word_problem(field: str, value: object) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return f"{field}: expected a non-empty text, got {value!r}"
    if any(c.isspace() or c in "=\"'\0" for c in value):
        return f"{field}: expected no blanks, quotes, '=' or NUL, got {value!r}"
    return None


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
                raise BadValue(f"health.checks: expected non-empty shell commands, got {command!r}",
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


HAWKBIT_AUTH_MODES: Tuple[str, ...] = get_args(HawkbitAuth)
MAX_ATTRIBUTES = 100  # hawkBit's configData limit (ddi.MAX_CONFIG_ENTRIES)
MAX_ATTRIBUTE_CHARS = 128
_ATTRIBUTE_TEXT = re.compile(r"[\x20-\x5f\x61-\x7d]*")  # printable ASCII without ` (0x60) and ~ (0x7e)
HAWKBIT_PAIRS = (("client_cert", "client_key"),)  # keys given both or neither


@dataclass(frozen=True)
class HawkbitConfig:
    """The hawkBit server otad polls (its DDI API; docs/architecture.md, "The daemon"). `url`
    None: no server, `otad run` refuses.

    Secrets never sit here: a token is read from `token_file` at every request. With
    `swupdate_cfg`, that file's `suricatta` section supplies defaults, merged when `otad run`
    starts (otad.hawkbit.suricatta); until then only each key's own value is checked, as the
    keys that belong together (url and controller id, auth and token file, ...) may come from
    there. The merged section has no `swupdate_cfg` left.
    """

    url: Optional[str] = None  # http(s)://host[:port][/path], without the tenant
    tenant: str = "DEFAULT"
    controller_id: Optional[str] = None
    controller_id_from: Optional[str] = None  # a file whose first line is the id, e.g. /etc/machine-id
    auth: HawkbitAuth = "none"
    token_file: Optional[str] = None  # required unless auth = none; read at every request
    ca_file: Optional[str] = None  # CA bundle for the server's certificate (default: the system's)
    client_cert: Optional[str] = None  # TLS client certificate and key: both or neither
    client_key: Optional[str] = None
    verify_tls: bool = True
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0
    download_without_token: bool = False  # artifacts on a CDN that refuses hawkBit's Authorization
    poll_min_s: float = 30.0  # floor for the server's `sleep` (hawkBit's own floor; tests use 1)
    poll_max_s: float = 86400.0
    poll_jitter: float = 0.1  # polls come up to this fraction early, never late
    backoff_cap_s: float = 300.0  # longest wait after failed requests
    feedback_interval_s: float = 10.0  # least time between two intermediate feedbacks of an action
    max_download_attempts: int = 10
    resume_checkpoint_mib: int = 16  # a download interrupted by a restart goes on from the last such point
    attributes: Tuple[Tuple[str, str], ...] = ()  # configData sent besides otad's own
    swupdate_cfg: Optional[str] = None  # an existing swupdate.cfg whose suricatta section gives defaults

    def __post_init__(self) -> None:
        if self.url is not None:
            _http_url(("hawkbit", "url"), self.url)
        for key in ("tenant", "controller_id"):
            value = getattr(self, key)
            if value is not None and (not value or "/" in value or any(c.isspace() for c in value)):
                raise BadValue(f"hawkbit.{key}: expected a non-empty name without '/' or blanks, got {value!r}",
                               ("hawkbit", key))
        _one_of("hawkbit.auth", self.auth, HAWKBIT_AUTH_MODES)
        self._check_numbers()
        _check_attributes(self.attributes)
        if self.swupdate_cfg is None:
            self._check_together()

    def _check_together(self) -> None:
        """The keys that belong together, once nothing is left to merge."""
        self._check_identity()
        if self.auth != "none" and not self.token_file:
            raise BadValue(f"hawkbit.token_file: required with auth = {self.auth!r} (the token itself is "
                           "never written into otad.conf)", ("hawkbit", "auth"))
        if self.auth == "none" and self.token_file:
            raise BadValue("hawkbit.token_file: given but auth = 'none'; expected auth = \"target_token\" "
                           "or \"gateway_token\"", ("hawkbit", "token_file"))
        for first, second in HAWKBIT_PAIRS:
            if bool(getattr(self, first)) != bool(getattr(self, second)):
                given, missing = (first, second) if getattr(self, first) else (second, first)
                raise BadValue(f"hawkbit.{given}: given without hawkbit.{missing}; expected both or neither",
                               ("hawkbit", given))
        if self.poll_max_s < self.poll_min_s:
            raise BadValue(f"hawkbit.poll_max_s: expected a number >= poll_min_s ({self.poll_min_s}), "
                           f"got {self.poll_max_s!r}", ("hawkbit", "poll_max_s"))

    def _check_identity(self) -> None:
        if self.controller_id is not None and self.controller_id_from is not None:
            raise BadValue("hawkbit.controller_id_from: given together with hawkbit.controller_id; "
                           "expected exactly one of them", ("hawkbit", "controller_id_from"))
        if self.url is not None and self.controller_id is None and self.controller_id_from is None:
            raise BadValue("hawkbit: url is set but no controller id; expected controller_id or "
                           "controller_id_from (e.g. \"/etc/machine-id\")", ("hawkbit", "url"))

    def _check_numbers(self) -> None:
        for key in ("connect_timeout_s", "read_timeout_s", "poll_min_s", "backoff_cap_s"):
            _positive(("hawkbit", key), getattr(self, key))
        if not math.isfinite(self.poll_max_s):
            raise BadValue(f"hawkbit.poll_max_s: expected a number >= poll_min_s ({self.poll_min_s}), "
                           f"got {self.poll_max_s!r}", ("hawkbit", "poll_max_s"))
        if not 0.0 <= self.poll_jitter <= 0.5:
            raise BadValue(f"hawkbit.poll_jitter: expected 0..0.5, got {self.poll_jitter!r}",
                           ("hawkbit", "poll_jitter"))
        if not (math.isfinite(self.feedback_interval_s) and self.feedback_interval_s >= 0):
            raise BadValue(f"hawkbit.feedback_interval_s: expected a number >= 0, got {self.feedback_interval_s!r}",
                           ("hawkbit", "feedback_interval_s"))
        _in_range("hawkbit.max_download_attempts", self.max_download_attempts, 1, 1000)
        _in_range("hawkbit.resume_checkpoint_mib", self.resume_checkpoint_mib, 1, 4096)

    @property
    def enabled(self) -> bool:
        """A server is configured: `otad run` has something to poll."""
        return self.url is not None

    def resolved_controller_id(self) -> str:
        """`controller_id`, or the first line of `controller_id_from` (read now, ConfigError naming it)."""
        if self.controller_id is not None:
            return self.controller_id
        path = self.controller_id_from
        if path is None:
            raise ConfigError("hawkbit: no controller id; expected controller_id or controller_id_from")
        from otad.smallfile import read_text

        first = read_text(path, "the controller id (hawkbit.controller_id_from)", limit=64 << 10,
                          error=ConfigError).splitlines()
        value = first[0].strip() if first else ""
        if not value or "/" in value or any(c.isspace() for c in value):
            raise ConfigError(f"hawkbit.controller_id_from: expected a first line with a name without '/' "
                              f"or blanks, got {value!r}", path)
        return value


def _http_url(path: KeyPath, value: str) -> None:
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # urllib: "Invalid IPv6 URL" for an unbalanced '[' or ']'
        raise BadValue(f"{_dotted(path)}: expected http(s)://host[:port][/path], got {value!r}", path) from None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise BadValue(f"{_dotted(path)}: expected http(s)://host[:port][/path], got {value!r}", path)


def _check_attributes(attributes: Tuple[Tuple[str, str], ...]) -> None:
    path: KeyPath = ("hawkbit", "attributes")
    if len(attributes) > MAX_ATTRIBUTES:
        raise BadValue(f"hawkbit.attributes: expected at most {MAX_ATTRIBUTES}, got {len(attributes)}", path)
    for key, value in attributes:
        for what, text in (("name", key), ("value", value)):
            if not isinstance(text, str) or len(text) > MAX_ATTRIBUTE_CHARS or not _ATTRIBUTE_TEXT.fullmatch(text) \
                    or (what == "name" and not text):
                raise BadValue(f"hawkbit.attributes.{key}: expected a {what} of up to {MAX_ATTRIBUTE_CHARS} "
                               f"printable ASCII characters without ` and ~, got {text!r}", (*path, str(key)))


@dataclass(frozen=True)
class DeltaConfig:
    """Delta images (`type = "delta"`, docs/delta.md): how chunks are fetched and sources indexed."""

    max_ranges: int = 50  # ranges per request unless the bundle's max-ranges says; never above 100
    min_interval_s: float = 0.1  # between two chunk requests (hawkBit's DoS filter allows 200/s)
    libzck: bool = True  # index a source without a cached index with Debian's libzck1 (16 s/GiB on x86)
    python_index: bool = False  # ... else with the pure-Python chunker: correct but slow (minutes per GiB)
    checkpoint_mib: int = 4  # a delta install goes on after a restart from the last such point
    ca_file: Optional[str] = None  # CA bundle for a bundle's static chunk URL (default: the system's)

    def __post_init__(self) -> None:
        _in_range("delta.max_ranges", self.max_ranges, 1, 100)
        if not (math.isfinite(self.min_interval_s) and 0 <= self.min_interval_s <= 60):
            raise BadValue(f"delta.min_interval_s: expected 0..60, got {self.min_interval_s!r}",
                           ("delta", "min_interval_s"))
        _in_range("delta.checkpoint_mib", self.checkpoint_mib, 1, 1024)


@dataclass(frozen=True)
class Origin:
    """Where a parsed Config came from: `where(*key_path)` is file:line of a key, `given` the
    keys each group section set (defaults merged in later, swupdate.cfg's, yield to them)."""

    where: "Locator"
    given: Mapping[str, FrozenSet[str]]


@dataclass(frozen=True)
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    bootloader: BootloaderConfig = field(default_factory=BootloaderConfig)
    slots: Tuple[SlotConfig, ...] = ()  # none: plain installs, no A/B switch (etc/otad.conf has the Pi's)
    health: HealthConfig = field(default_factory=HealthConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    hawkbit: HawkbitConfig = field(default_factory=HawkbitConfig)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    source: Optional[str] = None
    origin: Optional[Origin] = field(default=None, repr=False, compare=False)  # None: built in code

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

    def where(self, *path: Union[str, int]) -> Optional[str]:
        """file:line of a key, for a check made after parsing (the file alone where not known)."""
        return self.origin.where(*path) if self.origin is not None else self.source

    def given(self, section: str) -> FrozenSet[str]:
        """The keys of group `section` that the file set (built in code: those not at their default)."""
        if self.origin is not None:
            return self.origin.given.get(section, frozenset())
        values = getattr(self, section)
        return frozenset(f.name for f in dataclasses.fields(values) if getattr(values, f.name) != f.default)


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
    "hawkbit": HawkbitConfig,
    "delta": DeltaConfig,
}


def _check_slots(slots: Tuple[SlotConfig, ...]) -> None:
    """Exactly two slots (A/B) with unique names, devices and boot values."""
    if not isinstance(slots, tuple) or len(slots) != 2:
        count = len(slots) if isinstance(slots, (tuple, list)) else slots
        raise BadValue(f"slots: expected exactly 2 slots (A/B), got {count}", ("slots",))
    for key in ("name", "device", "boot_value"):
        first, second = (getattr(s, key) for s in slots)
        if first == second:
            raise BadValue(f"slots: both slots have the {key.replace('_', ' ')} {first!r}; expected "
                           "different ones", ("slots", 1, key))


def load(path: Optional[str]) -> Config:
    """Read `path`; None means the built-in defaults."""
    if path is None:
        return Config()
    from otad.smallfile import read_text

    return parse(read_text(path, "the configuration", limit=MAX_CONFIG_BYTES, error=ConfigError), source=path)


def parse(text: str, *, source: str) -> Config:
    from otad import libconfig

    tree = libconfig.loads(text, source=source, error=ConfigError)
    where = libconfig.Locator(source, text)
    sections: Dict[str, Any] = {}
    given: Dict[str, FrozenSet[str]] = {}
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
            given[name] = frozenset(values)
    try:
        return Config(source=source, origin=Origin(where, given), **sections)
    except BadValue as exc:
        raise ConfigError(exc.what, where(*exc.path)) from None


T = TypeVar("T")

_TYPES: Dict[str, Tuple[type, ...]] = {
    "str": (str,), "Optional[str]": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
    "Tuple[str, ...]": (list, tuple), "Tuple[Tuple[str, str], ...]": (dict,),
    # the choices: a string whose word the section's __post_init__ checks
    "SignatureMethod": (str,), "CertPurpose": (str,), "FilesVia": (str,), "HawkbitAuth": (str,),
}
_SHOWN_TYPES = {"Optional[str]": "str", "SignatureMethod": "str", "CertPurpose": "str", "FilesVia": "str",
                "HawkbitAuth": "str", "Tuple[str, ...]": "a list of strings ( \"...\", ... )",
                "Tuple[Tuple[str, str], ...]": "a group { name = \"value\"; ... }"}


def _section(cls: Type[T], name: str, values: Mapping[str, Any], where: "Locator",
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
    except BadValue as exc:
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
    if kind == "Tuple[Tuple[str, str], ...]":
        pairs = tuple(cast(Mapping[str, Any], value).items())  # a group: its names are libconfig names
        _strings([v for _, v in pairs], label, where)
        return pairs
    return None if kind == "Optional[str]" and value == "" else value


def _strings(items: Sequence[Any], label: str, where: str) -> Tuple[str, ...]:
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise ConfigError(f"{label}: expected strings only, got {bad[0]!r}", where)
    return tuple(items)


def _list_section(cls: Type[T], name: str, values: Any, where: "Locator") -> Tuple[T, ...]:
    if not isinstance(values, list):
        raise ConfigError(f"{name}: expected a list of groups ( {{ ... }}, {{ ... }} )", where(name))
    items: List[T] = []
    for index, item in enumerate(values):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}[{index}]: expected a group {{ ... }}, got {item!r}", where(name, index))
        items.append(_section(cls, name, item, where, index))
    return tuple(items)
