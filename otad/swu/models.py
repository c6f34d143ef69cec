"""What one selection of a sw-description asks to install, as frozen data.

A `Manifest` of typed entries (`Image`, `File`, `Script`, `BootenvVar`) and the device's
`HardwareRevision` that it is checked against. Nothing here reads sw-description: the code that
builds these (otad.swu.selection, otad.swu.entries) imports them, so they sit below it, and
otad.swu.manifest hands them on to callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from otad.errors import CompatibilityError, ConfigError
from otad.swu.posixregex import compile_ere

REGEX_PREFIX = "#RE:"

Selection = Tuple[str, str]


def _no_properties() -> Mapping[str, str]:
    return MappingProxyType({})


def _no_extra() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class HardwareRevision:
    """The device's board name and revision, as SWUpdate's -H or /etc/hwrevision give them."""

    board: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> HardwareRevision:
        """`board:revision` (SWUpdate's -H): split at the first ':', both parts non-empty."""
        board, colon, revision = text.partition(":")
        if not colon or not board or not revision:
            raise ConfigError(f"hardware revision: expected 'board:revision', got {text!r}")
        return cls(board, revision)

    @classmethod
    def from_hwrevision_file(cls, text: str, source: str) -> HardwareRevision:
        """/etc/hwrevision: the first two words (`board revision`), as SWUpdate's fscanf reads them."""
        words = text.split()
        if len(words) < 2:
            raise ConfigError(f"expected one line 'board revision', got {show(text)}", source)
        return cls(words[0], words[1])


@dataclass(frozen=True)
class DeltaProperties:
    """The properties of a `type = "delta"` image (SWUpdate's delta handler): its member is the
    zchunk header of the image; the chunks come from `url`, or (`url` "dynamic" or absent) from
    the file named `zckfile`: a hawkBit artifact of the deployment or a member of this bundle."""

    chain: str  # the handler that writes the assembled image ("raw")
    source: str  # the device (or file) the reused chunks are read from: the running slot
    url: Optional[str] = None  # a static URL of the whole .zck; None: `zckfile` names it
    zckfile: Optional[str] = None
    source_size: Optional[int] = None  # bytes of `source` to index; None: "detect" (the filesystem's size)
    max_ranges: Optional[int] = None  # ranges per request; None: otad.conf's delta.max_ranges
    image_sha256: Optional[str] = None  # otad-only: the whole assembled image, checked after writing


@dataclass(frozen=True)
class Image:
    """An `images` entry: an artifact a handler writes to a device."""

    filename: str
    type: str = "raw"
    device: Optional[str] = None
    sha256: Optional[str] = None
    compressed: Optional[str] = None
    encrypted: bool = False
    ivt: Optional[str] = None
    installed_directly: bool = False
    offset: int = 0
    size: Optional[int] = None
    name: Optional[str] = None
    version: Optional[str] = None
    install_if_different: bool = False
    install_if_higher: bool = False
    properties: Mapping[str, str] = field(default_factory=_no_properties, hash=False)
    data: Optional[str] = None
    volume: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra, hash=False)
    delta: Optional[DeltaProperties] = None  # set for `type = "delta"` only


@dataclass(frozen=True)
class File:
    """A `files` entry: an artifact written as a file or unpacked at `path`."""

    filename: str
    type: str = "rawfile"
    path: Optional[str] = None
    device: Optional[str] = None
    filesystem: Optional[str] = None
    sha256: Optional[str] = None
    compressed: Optional[str] = None
    encrypted: bool = False
    ivt: Optional[str] = None
    preserve_attributes: bool = False
    name: Optional[str] = None
    version: Optional[str] = None
    install_if_different: bool = False
    install_if_higher: bool = False
    properties: Mapping[str, str] = field(default_factory=_no_properties, hash=False)
    data: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra, hash=False)


@dataclass(frozen=True)
class Script:
    """A `scripts` entry (lua, shellscript, preinstall, postinstall)."""

    filename: str
    type: str = "lua"
    sha256: Optional[str] = None
    encrypted: bool = False
    ivt: Optional[str] = None
    data: Optional[str] = None
    properties: Mapping[str, str] = field(default_factory=_no_properties, hash=False)
    extra: Mapping[str, Any] = field(default_factory=_no_extra, hash=False)


@dataclass(frozen=True)
class BootenvVar:
    """One bootloader environment variable; an empty value deletes it."""

    name: str
    value: str


Entry = Union[Image, File, Script]


@dataclass(frozen=True)
class Manifest:
    """What one selection of a sw-description asks to install."""

    version: str
    description: str = ""
    hardware_compatibility: Tuple[str, ...] = ()  # empty: none given
    images: Tuple[Image, ...] = ()
    files: Tuple[File, ...] = ()
    scripts: Tuple[Script, ...] = ()
    bootenv: Tuple[BootenvVar, ...] = ()
    transaction_marker: bool = True
    state_marker: bool = True
    board: Optional[str] = None  # what it was selected for
    selection: Optional[Selection] = None
    source: str = "sw-description"

    def entries(self) -> Tuple[Entry, ...]:
        """Every entry that references a cpio member."""
        return (*self.images, *self.files, *self.scripts)

    def bootenv_changes(self) -> Dict[str, Optional[str]]:
        """`bootenv` as changes to the env: name → value, None where an empty value deletes it."""
        return {var.name: var.value or None for var in self.bootenv}

    def is_hardware_compatible(self, revision: str) -> bool:
        """True when `revision` equals an element or matches one written `#RE:<POSIX ERE>`.

        Like SWUpdate's regexec() the regex is not anchored (`#RE:1\\.0` matches `21.05`), and
        a regex that does not compile never matches.
        """
        for allowed in self.hardware_compatibility:
            if allowed.startswith(REGEX_PREFIX):
                regex = compile_ere(allowed[len(REGEX_PREFIX):])
                if regex is not None and regex.search(revision):
                    return True
            elif allowed == revision:
                return True
        return False

    def check_hardware(self, hw: HardwareRevision) -> None:
        """Refuse (CompatibilityError) unless `hw.revision` is in hardware-compatibility."""
        if not self.hardware_compatibility:
            raise CompatibilityError(f"no hardware-compatibility for {describe_selection(self.board, self.selection)}: "
                                     f"cannot check board {hw.board!r} revision {hw.revision!r}", self.source)
        if not self.is_hardware_compatible(hw.revision):
            raise CompatibilityError(f"hardware revision {hw.revision!r} of board {hw.board!r} is not in "
                                     f"hardware-compatibility {list(self.hardware_compatibility)}", self.source)


def describe_selection(board: Optional[str], selection: Optional[Selection]) -> str:
    parts = [f"board {board!r}" if board else "no board",
             f"selection {','.join(selection)!r}" if selection else "no selection"]
    return ", ".join(parts)


def show(value: Any) -> str:
    """A short quote of a bad value for an error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = repr(list(value))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
