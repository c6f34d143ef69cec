"""One entry group of sw-description → a frozen Image, File, Script or BootenvVar.

Each attribute is read with the type and default SWUpdate 2022.12 gives it (`compressed = true`
is zlib, an offset like "16K", a bare device name under /dev); a value SWUpdate would misread or
silently drop is refused with a ManifestError naming the entry's full key path. Where an entry
sits, and which entries one selection installs, is otad.swu.selection's.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Callable, FrozenSet, Mapping, NoReturn, Optional

from otad.errors import ManifestError
from otad.swu.models import BootenvVar, DeltaProperties, File, Image, Script, show

MAX_BOOTENV_NAME = 255  # bytes SWUpdate 2022.12 keeps of a bootenv name (struct sw_version.name)
MAX_BOOTENV_VALUE = 256  # ... and of a value (measured with Debian's swupdate: longer ones are cut)
_OFFSET = re.compile(r"(?P<number>0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?P<unit>[KkMG](?:iB|i)?)?")
_UNITS = {"K": 1024, "k": 1024, "M": 1024**2, "G": 1024**3}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


class EntryReader:
    """Typed reads of one entry's attributes; every error names the full key path."""

    def __init__(self, where: str, values: Mapping[str, Any], source: str) -> None:
        self.where = where
        self.values = values
        self.source = source

    def fail(self, key: str, expected: str, value: Any) -> NoReturn:
        raise ManifestError(f"{self.where}.{key}: expected {expected}, got {show(value)}", self.source)

    def text(self, key: str) -> Optional[str]:
        value = self.values.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(key, "a string", value)
        return value

    def flag(self, key: str) -> bool:
        value = self.values.get(key, False)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def filename(self) -> Optional[str]:
        value = self.text("filename")
        if value is not None and (not value or value.startswith("/") or ".." in value.split("/")
                                  or any(ord(c) < 0x20 or c == "\x7f" for c in value)):
            self.fail("filename", "a cpio member name (not empty, not absolute, no '..', no control characters)",
                      value)
        return value

    def kind(self, default: str) -> str:
        return self.text("type") or default

    def hexdigits(self, key: str, pattern: "re.Pattern[str]", count: int) -> Optional[str]:
        value = self.text(key)
        if value and not pattern.fullmatch(value):
            self.fail(key, f"{count} hex digits", value)
        return value.lower() if value else None  # SWUpdate treats "" as not given

    def compressed(self) -> Optional[str]:
        value = self.values.get("compressed")
        if value is None or value is False:
            return None
        if value is True:
            return "zlib"  # the legacy form
        if value not in ("zlib", "zstd"):
            self.fail("compressed", "'zlib', 'zstd' or a boolean", value)
        return str(value)

    def offset(self) -> int:
        """A number, or a string as SWUpdate's ustrtoull(…, 0) reads it: 0x hex, leading-0 octal,
        K/k, M, G suffix (×1024 each), optionally followed by i or iB."""
        value: object = self.values.get("offset", 0)
        expected = "a number or a string like '16K'"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.fail("offset", expected, value)
        if isinstance(value, str):
            m = _OFFSET.fullmatch(value) if len(value) <= 40 else None
            if value and m is None:
                self.fail("offset", expected, value)
            value = _offset_number(m.group("number")) * _UNITS.get((m.group("unit") or " ")[0], 1) if m else 0
        if not 0 <= value < 2**63:
            self.fail("offset", "a number from 0 to 2**63-1", value)
        return value

    def size(self) -> Optional[int]:
        value = self.values.get("size")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            self.fail("size", "a non-negative number", value)
        return value

    def device(self) -> Optional[str]:
        """Absolute paths as given; a bare name (`mmcblk0p2`) is under /dev."""
        value = self.text("device")
        if not value:
            return None
        if not value.startswith("/") and ".." in value.split("/"):
            self.fail("device", "an absolute path or a name under /dev", value)
        return value if value.startswith("/") else f"/dev/{value}"

    def properties(self) -> Mapping[str, str]:
        value = self.values.get("properties", {})
        if not isinstance(value, dict):
            self.fail("properties", "a group of strings { key = \"value\"; }", value)
        for key, item in value.items():
            if not isinstance(item, str):
                # SWUpdate silently drops a non-string property (`atomic-install = true;`).
                self.fail(f"properties.{key}", "a string (e.g. \"true\")", item)
        return MappingProxyType(dict(value))

    def extra(self, known: FrozenSet[str]) -> Mapping[str, Any]:
        return MappingProxyType({key: _freeze(v) for key, v in self.values.items() if key not in known})

    def bootenv_var(self) -> BootenvVar:
        """SWUpdate 2022.12 hands each pair to libubootenv as a `name=value` line: a line break
        would start another pair, a name starting with '#' is skipped as a comment, and its
        parser keeps 255 bytes of a name (a longer one runs into the value) and 256 of a value.
        What it would store differently from what is written is refused."""
        name = self.text("name")
        value = self.text("value") or ""
        if (not name or "=" in name or name.startswith("#") or any(ord(c) <= 0x20 or c == "\x7f" for c in name)
                or len(_utf8(name)) > MAX_BOOTENV_NAME):
            self.fail("name", f"a variable name of at most {MAX_BOOTENV_NAME} bytes (no '=', spaces or control "
                              "characters, not starting with '#')", name)
        if "\n" in value or "\r" in value or len(_utf8(value)) > MAX_BOOTENV_VALUE:
            self.fail("value", f"one line of at most {MAX_BOOTENV_VALUE} bytes (SWUpdate would cut it or read "
                               "a line break as the start of another variable)", value)
        return BootenvVar(name, value)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _offset_number(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    return int(text, 8) if text.startswith("0") else int(text, 10)


_COMMON = frozenset({"filename", "type", "sha256", "encrypted", "ivt", "data", "properties", "hook"})
_VERSIONED = frozenset({"name", "version", "install-if-different", "install-if-higher", "compressed", "device"})
_IMAGE_KEYS = _COMMON | _VERSIONED | {"installed-directly", "offset", "size", "volume"}
_FILE_KEYS = _COMMON | _VERSIONED | {"path", "filesystem", "preserve-attributes"}


def read_image(entry: EntryReader, bootloader: bool = False) -> Image:
    volume = entry.text("volume") or None
    device = entry.device()
    # SWUpdate picks ubivol for a volume, raw for a device, and refuses an entry with neither.
    kind = entry.kind("" if bootloader else "ubivol" if volume else "raw" if device else "")
    if not kind:
        entry.fail("type", "a handler name (or a device to write raw)", entry.values.get("type"))
    properties = entry.properties()
    return Image(
        filename=str(entry.filename()), type=kind, device=device,
        sha256=entry.hexdigits("sha256", _HEX64, 64), compressed=entry.compressed(),
        encrypted=entry.flag("encrypted"), ivt=entry.hexdigits("ivt", _HEX32, 32),
        installed_directly=entry.flag("installed-directly"), offset=entry.offset(), size=entry.size(),
        name=entry.text("name"), version=entry.text("version"),
        install_if_different=entry.flag("install-if-different"),
        install_if_higher=entry.flag("install-if-higher"), properties=properties,
        data=entry.text("data"), volume=volume, extra=entry.extra(_IMAGE_KEYS),
        delta=read_delta(entry, properties) if kind == DELTA else None,
    )


DELTA = "delta"
DELTA_CHAINS = ("raw",)  # the image handlers a delta can feed (SWUpdate also allows rawfile: a file path)
DYNAMIC_URL = "dynamic"


def read_delta(entry: EntryReader, properties: Mapping[str, str]) -> DeltaProperties:
    """SWUpdate's delta handler properties (delta_retrieve_attributes), refused where SWUpdate would
    fail later or guess: its member is the zchunk header, which must be read whole and checked first."""
    def fail(key: str, expected: str, value: Any) -> NoReturn:
        entry.fail(f"properties.{key}" if key else "type", expected, value)

    if entry.flag("installed-directly"):
        entry.fail("installed-directly", "false for a delta image (its member is the zchunk header, read "
                   "whole and checked before the image is assembled; SWUpdate refuses it too)", True)
    for key in ("compressed", "encrypted"):
        if entry.values.get(key) not in (None, False):
            entry.fail(key, "nothing for a delta image (its member is the zchunk header, stored plain)",
                       entry.values.get(key))
    chain, source = properties.get("chain"), properties.get("source")
    if not chain or chain == DELTA:
        fail("chain", "the handler that writes the assembled image, e.g. \"raw\" (not \"delta\")", chain)
    if chain not in DELTA_CHAINS:
        fail("chain", f"one of {', '.join(DELTA_CHAINS)} (otad assembles delta images into raw images only)",
             chain)
    if not source:
        fail("source", "the device to take unchanged chunks from: the running slot, e.g. \"/dev/mmcblk0p2\"",
             source)
    url = properties.get("url") or None
    zckfile = properties.get("zckfile") or None
    if url == DYNAMIC_URL:
        url = None
    if url is None and zckfile is None:
        fail("url", "the URL of the .zck, or \"dynamic\" with properties.zckfile naming it", properties.get("url"))
    if zckfile is not None and ("/" in zckfile or zckfile in (".", "..")):
        fail("zckfile", "a file name (an artifact of the deployment or a member of this bundle)", zckfile)
    image_sha256 = properties.get("image-sha256")
    if image_sha256 is not None and not _HEX64.fullmatch(image_sha256):
        fail("image-sha256", "64 hex digits", image_sha256)
    return DeltaProperties(chain=chain, source=source, url=url, zckfile=zckfile,
                           source_size=_source_size(properties.get("source-size"), fail),
                           max_ranges=_max_ranges(properties.get("max-ranges"), fail),
                           image_sha256=image_sha256.lower() if image_sha256 else None)


def _source_size(text: Optional[str], fail: Callable[[str, str, Any], NoReturn]) -> Optional[int]:
    """"detect" (or absent): None, the filesystem's size; else a byte count as SWUpdate's ustrtoull reads it."""
    if text is None or text == "detect":
        return None
    m = _OFFSET.fullmatch(text) if len(text) <= 40 else None
    if m is None:
        fail("source-size", "\"detect\" or a number of bytes (K, M, G suffixes allowed)", text)
    size = _offset_number(m.group("number")) * _UNITS.get((m.group("unit") or " ")[0], 1)
    if not 0 < size < 2**63:
        fail("source-size", "a number of bytes above 0", text)
    return size


def _max_ranges(text: Optional[str], fail: Callable[[str, str, Any], NoReturn]) -> Optional[int]:
    """SWUpdate falls back to its default (150, which Starlette answers with the whole file) on a
    value it cannot read; otad refuses it instead. Values above 100 are lowered when fetching."""
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) < 1 << 32:
        fail("max-ranges", "a number of ranges per request above 0", text)
    return int(text)


def read_file(entry: EntryReader) -> File:
    return File(
        filename=str(entry.filename()), type=entry.kind("rawfile"), path=entry.text("path") or None,
        device=entry.device(), filesystem=entry.text("filesystem") or None,
        sha256=entry.hexdigits("sha256", _HEX64, 64), compressed=entry.compressed(),
        encrypted=entry.flag("encrypted"), ivt=entry.hexdigits("ivt", _HEX32, 32),
        preserve_attributes=entry.flag("preserve-attributes"), name=entry.text("name"),
        version=entry.text("version"), install_if_different=entry.flag("install-if-different"),
        install_if_higher=entry.flag("install-if-higher"), properties=entry.properties(),
        data=entry.text("data"), extra=entry.extra(_FILE_KEYS),
    )


def read_script(entry: EntryReader) -> Script:
    return Script(
        filename=str(entry.filename()), type=entry.kind("lua"), sha256=entry.hexdigits("sha256", _HEX64, 64),
        encrypted=entry.flag("encrypted"), ivt=entry.hexdigits("ivt", _HEX32, 32), data=entry.text("data"),
        properties=entry.properties(), extra=entry.extra(_COMMON),
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(v) for key, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value
