"""sw-description → typed, frozen dataclasses, read the way SWUpdate 2022.12 reads it.

Owns the syntax (libconfig first, JSON second), the four-path selection of board/set/mode,
`ref` links, entry attributes with their defaults, and hardware compatibility. It checks
values, not the world: signatures, version policy, handlers and cpio members belong to others.
Where SWUpdate would silently ignore or misread a value, otad refuses with a ManifestError.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Mapping, NoReturn, Optional, Tuple, Union

from otad import libconfig
from otad.errors import CompatibilityError, ConfigError, ManifestError

log = logging.getLogger(__name__)

ROOT = "software"
REGEX_PREFIX = "#RE:"
# Names SWUpdate looks up under each section; they cannot name a set, mode or board.
RESERVED = frozenset({"version", "hardware-compatibility", "uboot", "bootenv", "files", "scripts",
                      "partitions", "images"})
_SECTION_KEYS = RESERVED | {"description", "bootloader_transaction_marker", "bootloader_state_marker",
                            "embedded-script"}
# SWUpdate's find_root() gives up after MAX_LINKS_DEPTH (10) calls: at most 8 links in a chain.
MAX_LINKS = 8
# SWUpdate's MAX_PARSED_NODES: a link may not lead deeper than this.
MAX_PATH_DEPTH = 20
# json-c's default nesting limit; SWUpdate fails to parse deeper JSON.
MAX_JSON_DEPTH = 32

_Path = Tuple[str, ...]
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
            raise ConfigError(f"expected one line 'board revision', got {_show(text)}", source)
        return cls(words[0], words[1])


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

    def is_hardware_compatible(self, revision: str) -> bool:
        """True when `revision` equals an element or matches one written `#RE:<POSIX ERE>`.

        Like SWUpdate's regexec() the regex is not anchored (`#RE:1\\.0` matches `21.05`), and
        a regex that does not compile never matches.
        """
        for allowed in self.hardware_compatibility:
            if allowed.startswith(REGEX_PREFIX):
                regex = _compile_ere(allowed[len(REGEX_PREFIX):])
                if regex is not None and regex.search(revision):
                    return True
            elif allowed == revision:
                return True
        return False

    def check_hardware(self, hw: HardwareRevision) -> None:
        """Refuse (CompatibilityError) unless `hw.revision` is in hardware-compatibility."""
        if not self.hardware_compatibility:
            raise CompatibilityError(f"no hardware-compatibility for {_describe(self.board, self.selection)}: "
                                     f"cannot check board {hw.board!r} revision {hw.revision!r}", self.source)
        if not self.is_hardware_compatible(hw.revision):
            raise CompatibilityError(f"hardware revision {hw.revision!r} of board {hw.board!r} is not in "
                                     f"hardware-compatibility {list(self.hardware_compatibility)}", self.source)


@dataclass(frozen=True)
class SwDescription:
    """A parsed sw-description before any selection: the tree under its root, unresolved."""

    source: str
    tree: Mapping[str, Any] = field(hash=False)  # the whole document; `software` is its root group
    syntax: str = "libconfig"  # or "json"

    def boards(self) -> Tuple[str, ...]:
        """Names under `software` that are board sections (hold sets, or sections directly)."""
        tree = _Tree(self)
        return tuple(name for name, _ in tree.groups((ROOT,))
                     if _is_section(tree.follow((ROOT, name))) or any(True for _ in tree.modes((ROOT, name))))

    def selections(self) -> Tuple[Selection, ...]:
        """Every (set, mode) pair available, under boards too, in file order."""
        tree = _Tree(self)
        found = list(tree.modes((ROOT,)))
        for board, _ in tree.groups((ROOT,)):
            found.extend(tree.modes((ROOT, board)))
        return tuple(dict.fromkeys(found))

    def select(self, board: Optional[str] = None, selection: Optional[Selection] = None) -> Manifest:
        """The manifest for `board` and `selection` (set, mode), found as SWUpdate finds it.

        CompatibilityError when the selection does not exist or it selects nothing to install;
        ManifestError for anything malformed on the way.
        """
        return _Selector(_Tree(self), board or None, selection).manifest()


def parse(data: bytes, *, source: str = "sw-description") -> SwDescription:
    """Parse sw-description bytes: libconfig first, JSON second (like SWUpdate).

    The root group `software` is required; what is under it is checked by `select()`.
    """
    try:
        root: Any = libconfig.loads(data, source=source, error=ManifestError)
        syntax = "libconfig"
    except ManifestError:
        text = _utf8_or_none(data)
        if text is None or not text.lstrip(" \t\r\n").startswith("{"):
            raise
        root, syntax = _load_json(text, source), "json"
    if not isinstance(root, dict) or not isinstance(root.get(ROOT), dict):
        raise ManifestError(f"no root group {ROOT!r}: expected `{ROOT} = {{ ... }};`", source)
    return SwDescription(source, root, syntax)


def _utf8_or_none(data: bytes) -> Optional[str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _load_json(text: str, source: str) -> Any:
    def pairs(items: List[Tuple[str, Any]]) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ManifestError(f"duplicate key {key!r} in a JSON object", source)
            result[key] = value
        return result

    def constant(name: str) -> NoReturn:
        raise ManifestError(f"{name} is not a JSON number", source)

    try:
        root = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"JSON syntax error: {exc.msg} at column {exc.colno}", f"{source}:{exc.lineno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ManifestError(f"JSON not readable: {exc}", source) from None
    _check_json(root, source, 1)
    return root


def _check_json(node: Any, source: str, depth: int) -> None:
    """Refuse what json-c (SWUpdate's JSON parser) reads differently: deep nesting, NUL in strings."""
    if depth > MAX_JSON_DEPTH:
        raise ManifestError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", source)
    children: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        if isinstance(value, str) and "\0" in value or isinstance(key, str) and "\0" in key:
            raise ManifestError(f"NUL character in JSON string {_show(value)}", source)
        _check_json(value, source, depth + 1)


class _Tree:
    """Lookups in the parsed document with SWUpdate's link (`ref`) semantics."""

    def __init__(self, description: SwDescription) -> None:
        self.root = description.tree
        self.source = description.source
        self.syntax = description.syntax

    def fail(self, what: str) -> NoReturn:
        raise ManifestError(what, self.source)

    def get(self, path: _Path) -> Any:
        """The node at `path` without following links, None when there is none."""
        node: Any = self.root
        for name in path:
            if not isinstance(node, dict):
                return None
            node = node.get(name)
        return node

    def follow(self, path: _Path) -> Optional[Tuple[_Path, Any]]:
        """SWUpdate's find_root(): the node at `path` and where it really is after links.

        A group holding a `ref` string stands for what the link names. None when `path` names
        nothing; a dangling link, a cycle or a chain of more than MAX_LINKS is an error (SWUpdate
        would silently go on with the next lookup path).
        """
        node = self.get(path)
        chain = [path]
        while isinstance(node, dict) and "ref" in node:
            where = f"{_dotted(path)}.ref"
            path = self.link(path, node["ref"], where)
            if path in chain:
                self.fail(f"{where}: links form a cycle: {' -> '.join(_dotted(p) for p in chain + [path])}")
            if len(chain) > MAX_LINKS:
                self.fail(f"{where}: more than {MAX_LINKS} links in a chain starting at {_dotted(chain[0])}")
            chain.append(path)
            node = self.get(path)
            if node is None:
                self.fail(f"{where}: {_dotted(chain[-2])} links to {_dotted(path)}, which does not exist")
        return None if node is None else (path, node)

    def link(self, nodes: _Path, ref: Any, where: str) -> _Path:
        """SWUpdate's set_find_path(): the path a `ref` names, seen from `nodes`.

        `nodes` is the path of the group holding `ref` (for an entry of a list: of the list).
        `.` is the group containing that one, each `..` climbs one more level, a first
        component that is a name starts at the document root. Empty components are skipped.
        """
        if not isinstance(ref, str) or not ref.startswith("#") or len(ref) < 3:
            self.fail(f"{where}: expected a link like '#./name', got {_show(ref)}")
        result, count, named = list(nodes), len(nodes) - 1, False
        for index, token in enumerate(part for part in ref[1:].split("/") if part):
            if token == "..":
                if count == 0:
                    self.fail(f"{where}: {ref!r} climbs above the document root")
                count -= 1
            elif token != ".":
                count = 0 if index == 0 else count
                del result[count:]
                result.append(token)
                count, named = count + 1, True
                if count >= MAX_PATH_DEPTH:
                    self.fail(f"{where}: {ref!r} leads deeper than {MAX_PATH_DEPTH} levels")
        if not named:
            self.fail(f"{where}: {ref!r} names no setting")
        return tuple(result)

    def groups(self, path: _Path) -> Iterator[Tuple[str, Any]]:
        """The groups directly under `path` (no link followed) that may be a board or a set."""
        node = self.get(path)
        for name, child in (node.items() if isinstance(node, dict) else ()):
            if name not in _SECTION_KEYS and isinstance(child, dict):
                yield name, child

    def modes(self, path: _Path) -> Iterator[Selection]:
        """(set, mode) pairs directly under `path`: path.<set>.<mode> holds sections."""
        for set_name, _ in self.groups(path):
            for mode, _ in self.groups(path + (set_name,)):
                if _is_section(self.follow(path + (set_name, mode))):
                    yield set_name, mode


def _is_section(found: Optional[Tuple[_Path, Any]]) -> bool:
    return found is not None and isinstance(found[1], dict) and any(key in found[1] for key in _SECTION_KEYS)


class _Selector:
    """One selection: looks each key up along SWUpdate's four paths and builds the Manifest."""

    def __init__(self, tree: _Tree, board: Optional[str], selection: Optional[Selection]) -> None:
        self.tree = tree
        self.board = board
        self.selection = selection
        self.bases: List[_Path] = []
        if board and selection:
            self.bases.append((ROOT, board, *selection))
        if selection:
            self.bases.append((ROOT, *selection))
        if board:
            self.bases.append((ROOT, board))
        self.bases.append((ROOT,))
        self.processed: List[_Entry] = []  # every entry SWUpdate would run a `hook` on

    def find(self, key: str) -> Optional[Tuple[_Path, Any]]:
        """The first hit of `key` along the lookup paths, links followed, and where it is."""
        for base in self.bases:
            found = self.tree.follow(base)
            if found is not None:
                hit = self.tree.follow(found[0] + (key,))
                if hit is not None:
                    return hit
        return None

    def manifest(self) -> Manifest:
        self._check_names()
        self._check_selection_exists()
        version = self.scalar("version", str, "a string")
        script = self.scalar("embedded-script", str, "a string (Lua)")
        partitions = self.find("partitions")
        if partitions is not None and partitions[1]:
            self.tree.fail(f"{_dotted(partitions[0])}: 'partitions' (UBI volume layout) is not supported by otad")
        images = self.entries("images", _image)
        files = self.entries("files", _file)
        scripts = self.entries("scripts", _script)
        bootenv, bootfiles = self.bootenv()
        self._check_hooks(script)
        if not (images or files or scripts or bootenv or bootfiles):
            raise CompatibilityError(f"found nothing to install for {_describe(self.board, self.selection)}"
                                     f"{self._available()}", self.tree.source)
        if version is None:
            self.tree.fail(f"{ROOT}.version: missing (a string is required)")
        return Manifest(
            version=version,
            description=self.scalar("description", str, "a string") or "",
            hardware_compatibility=self.hardware_compatibility(),
            images=tuple(e for _, e in images) + tuple(e for _, e in bootfiles),
            files=tuple(e for _, e in files),
            scripts=tuple(e for _, e in scripts),
            bootenv=bootenv,
            transaction_marker=self.flag("bootloader_transaction_marker"),
            state_marker=self.flag("bootloader_state_marker"),
            board=self.board,
            selection=self.selection,
            source=self.tree.source,
        )

    def _check_names(self) -> None:
        """libconfig would read '.', ':' or '/' in a name as a deeper path: refuse rather than guess."""
        if self.selection is not None and (len(self.selection) != 2 or not all(self.selection)):
            raise CompatibilityError(f"selection must be (set, mode), got {self.selection!r}")
        if self.tree.syntax != "libconfig":
            return
        for name in (self.board, *(self.selection or ())):
            if name is not None and (re.search(r"[.:/]", name) or name.startswith("[")):
                raise CompatibilityError(f"{name!r} cannot name a libconfig setting (board, set and mode "
                                         "names have no '.', ':' or '/')", self.tree.source)

    def _check_selection_exists(self) -> None:
        if self.selection is None:
            return
        for base in self.bases:
            found = self.tree.follow(base) if len(base) > 2 else None  # paths 1 and 2 name the selection
            if found is not None and isinstance(found[1], dict):
                return
        raise CompatibilityError(f"selection {','.join(self.selection)!r} is not in sw-description"
                                 f"{self._available()}", self.tree.source)

    def _available(self) -> str:
        available = SwDescription(self.tree.source, self.tree.root, self.tree.syntax).selections()
        return f" (available: {', '.join(','.join(s) for s in available)})" if available else ""

    def scalar(self, key: str, kind: type, expected: str) -> Any:
        found = self.find(key)
        if found is None:
            return None
        path, value = found
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.tree.fail(f"{_dotted(path)}: expected {expected}, got {_show(value)}")
        return value

    def flag(self, key: str) -> bool:
        value = self.scalar(key, bool, "true or false")
        return True if value is None else bool(value)

    def hardware_compatibility(self) -> Tuple[str, ...]:
        found = self.find("hardware-compatibility")
        if found is None:
            return ()
        path, value = found
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            self.tree.fail(f"{_dotted(path)}: expected an array of strings like [\"1.0\", \"#RE:^2\\.\"], "
                           f"got {_show(value)}")
        return tuple(v for v in value if v)  # SWUpdate skips empty strings

    def entries(self, key: str, build: Callable[[_Entry], Any]) -> List[Tuple[_Entry, Any]]:
        """The entries of list `key` (links spliced in), each with its built dataclass.

        Entries without `filename` are skipped, as SWUpdate does.
        """
        found = self.find(key)
        if found is None:
            return []
        result = []
        for entry in self.expand(*found, stack=()):
            if entry.filename() is not None:
                self.processed.append(entry)
                result.append((entry, build(entry)))
        return result

    def expand(self, path: _Path, value: Any, stack: Tuple[_Path, ...]) -> Iterator[_Entry]:
        """The entries of the list at `path`; an element `{ ref = "#..."; }` stands for the
        entries of the list it names (SWUpdate's parser_follow_link)."""
        for where, element in self._elements(path, value):
            if not isinstance(element, dict):
                self.tree.fail(f"{where}: expected an entry group {{ ... }}, got {_show(element)}")
            if "ref" not in element:
                yield _Entry(where, element, self.tree.source)
                continue
            named = self.tree.link(path, element["ref"], f"{where}.ref")
            target = self.tree.follow(named)
            if target is None:
                self.tree.fail(f"{where}.ref: {element['ref']!r} links to {_dotted(named)}, which does not exist")
            if target[0] in stack + (path,) or len(stack) >= MAX_LINKS:
                self.tree.fail(f"{where}.ref: {element['ref']!r} links lists of entries in a cycle "
                               f"or deeper than {MAX_LINKS}")
            yield from self.expand(target[0], target[1], stack + (path,))

    def _elements(self, path: _Path, value: Any) -> List[Tuple[str, Any]]:
        """A list's elements, named for messages. libconfig's SWUpdate also walks a group's
        members as a list; otad allows that only when every member is a group, because
        SWUpdate would silently skip the others (`images = { filename = ...; }` installs nothing)."""
        if isinstance(value, (list, tuple)):
            return [(f"{_dotted(path)}[{index}]", element) for index, element in enumerate(value)]
        if isinstance(value, dict) and self.tree.syntax == "libconfig" and all(
                isinstance(member, dict) for member in value.values()):
            return [(f"{_dotted(path)}.{name}", member) for name, member in value.items()]
        hint = " (a single entry needs parentheses: ( { ... } ))" if isinstance(value, dict) else ""
        self.tree.fail(f"{_dotted(path)}: expected a list ( {{ ... }}, ... ) of entries{hint}, got {_show(value)}")

    def bootenv(self) -> Tuple[Tuple[BootenvVar, ...], List[Tuple[_Entry, Image]]]:
        """`bootenv`, or the deprecated `uboot` only when no path has `bootenv` (SWUpdate)."""
        found = self.find("bootenv") or self.find("uboot")
        if found is None:
            return (), []
        variables: Dict[str, BootenvVar] = {}
        files: List[Tuple[_Entry, Image]] = []
        for entry in self.expand(*found, stack=()):
            if "name" in entry.values:
                self.processed.append(entry)
                var = entry.bootenv_var()
                # SWUpdate walks the list backwards into a dictionary: the first one wins.
                variables.setdefault(var.name, var)
            elif entry.filename() is not None:
                self.processed.append(entry)
                files.append((entry, _image(entry, bootloader=True)))
        return tuple(variables.values()), files

    def _check_hooks(self, script: Optional[str]) -> None:
        """SWUpdate runs each entry's `hook` from `embedded-script` (Lua) at parse time; otad has
        no Lua, so it refuses when that would change the result and ignores the script otherwise.
        Without embedded-script SWUpdate ignores hooks, and so does otad."""
        if script is None:
            return
        for entry in self.processed:
            if "hook" in entry.values:
                self.tree.fail(f"{entry.where}.hook: Lua hooks from embedded-script are not supported by otad")
        log.info("%s: embedded-script ignored (no entry has a hook)", self.tree.source)


_OFFSET = re.compile(r"(?P<number>0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?P<unit>[KkMG](?:iB|i)?)?")
_UNITS = {"K": 1024, "k": 1024, "M": 1024**2, "G": 1024**3}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


class _Entry:
    """Typed reads of one entry's attributes; every error names the full key path."""

    def __init__(self, where: str, values: Mapping[str, Any], source: str) -> None:
        self.where = where
        self.values = values
        self.source = source

    def fail(self, key: str, expected: str, value: Any) -> NoReturn:
        raise ManifestError(f"{self.where}.{key}: expected {expected}, got {_show(value)}", self.source)

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
        value = self.values.get("offset", 0)
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
        name = self.text("name")
        value = self.text("value") or ""
        if not name or "=" in name or any(ord(c) <= 0x20 or c == "\x7f" for c in name):
            self.fail("name", "a variable name (no '=', spaces or control characters)", name)
        return BootenvVar(name, value)


def _offset_number(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    return int(text, 8) if text.startswith("0") else int(text, 10)


_COMMON = frozenset({"filename", "type", "sha256", "encrypted", "ivt", "data", "properties", "hook"})
_VERSIONED = frozenset({"name", "version", "install-if-different", "install-if-higher", "compressed", "device"})
_IMAGE_KEYS = _COMMON | _VERSIONED | {"installed-directly", "offset", "size", "volume"}
_FILE_KEYS = _COMMON | _VERSIONED | {"path", "filesystem", "preserve-attributes"}


def _image(entry: _Entry, bootloader: bool = False) -> Image:
    volume = entry.text("volume") or None
    device = entry.device()
    # SWUpdate picks ubivol for a volume, raw for a device, and refuses an entry with neither.
    kind = entry.kind("" if bootloader else "ubivol" if volume else "raw" if device else "")
    if not kind:
        entry.fail("type", "a handler name (or a device to write raw)", entry.values.get("type"))
    return Image(
        filename=str(entry.filename()), type=kind, device=device,
        sha256=entry.hexdigits("sha256", _HEX64, 64), compressed=entry.compressed(),
        encrypted=entry.flag("encrypted"), ivt=entry.hexdigits("ivt", _HEX32, 32),
        installed_directly=entry.flag("installed-directly"), offset=entry.offset(), size=entry.size(),
        name=entry.text("name"), version=entry.text("version"),
        install_if_different=entry.flag("install-if-different"),
        install_if_higher=entry.flag("install-if-higher"), properties=entry.properties(),
        data=entry.text("data"), volume=volume, extra=entry.extra(_IMAGE_KEYS),
    )


def _file(entry: _Entry) -> File:
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


def _script(entry: _Entry) -> Script:
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


def _dotted(path: _Path) -> str:
    return ".".join(path)


def _describe(board: Optional[str], selection: Optional[Selection]) -> str:
    parts = [f"board {board!r}" if board else "no board",
             f"selection {','.join(selection)!r}" if selection else "no selection"]
    return ", ".join(parts)


def _show(value: Any) -> str:
    """A short quote of a bad value for an error message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = repr(list(value))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# POSIX bracket-expression classes, as Python character-class bodies.
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "0-9A-Za-z", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": re.escape(string.punctuation),
    "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e", "cntrl": "\\x00-\\x1f\\x7f", "xdigit": "0-9A-Fa-f",
}
_RE_DUP_MAX = 0x7FFF  # glibc's limit for a {m,n} count
# Escapes that glibc's regcomp() gives a meaning in an ERE; any other `\c` is the character c.
_ERE_ESCAPES = {"w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B",
                "<": r"\b", ">": r"\b", "`": r"\A", "'": r"\Z"}


@functools.lru_cache(maxsize=64)
def _compile_ere(pattern: str) -> "Optional[re.Pattern[str]]":
    """A POSIX extended regex (glibc regcomp, REG_EXTENDED) as a Python regex; None if invalid."""
    try:
        return re.compile(_ere_to_python(pattern), re.DOTALL)
    except (ValueError, KeyError, OverflowError, RecursionError, re.error):
        log.warning("hardware-compatibility: %r is not a valid POSIX extended regex; it matches nothing",
                    pattern)
        return None


def _ere_to_python(pattern: str) -> str:
    out: List[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 == len(pattern):
                raise ValueError("trailing backslash")
            d = pattern[i + 1]
            out.append(_ERE_ESCAPES.get(d) or (f"\\{d}" if d in "123456789" else re.escape(d)))
            i += 2
        elif c == "[":
            body, i = _ere_bracket(pattern, i + 1)
            out.append(body)
        elif c == "(" and pattern.startswith("(?", i):
            raise ValueError("'(?' has no meaning in a POSIX regex")
        elif c == "{" and any(int(n) > _RE_DUP_MAX for n in re.findall(r"[0-9]+", _interval(pattern, i))):
            raise ValueError("repetition count above RE_DUP_MAX")
        else:
            out.append(r"\Z" if c == "$" else c)  # POSIX `$` never matches before a final newline
            i += 1
    return "".join(out)


def _interval(pattern: str, i: int) -> str:
    m = re.match(r"\{[0-9]*(?:,[0-9]*)?\}", pattern[i:])
    return m.group() if m else ""


def _ere_bracket(pattern: str, i: int) -> Tuple[str, int]:
    """The bracket expression starting after `[` at `i`: a backslash is literal inside it, `]`
    first is literal, `[:class:]` names a class. Returns the Python class and the next index."""
    parts = ["[^" if pattern.startswith("^", i) else "["]
    i += 1 if pattern.startswith("^", i) else 0
    start = i
    while True:
        if i >= len(pattern):
            raise ValueError("unterminated bracket expression")
        c = pattern[i]
        if c == "]" and i > start:
            return "".join(parts) + "]", i + 1
        if c == "[" and pattern[i + 1:i + 2] in (":", "=", "."):
            delimiter = pattern[i + 1]
            end = pattern.find(delimiter + "]", i + 2)
            if end < 0:
                raise ValueError("unterminated [: :] in a bracket expression")
            name = pattern[i + 2:end]
            parts.append(_POSIX_CLASSES[name] if delimiter == ":" else re.escape(name))
            i = end + 2
        else:
            parts.append("-" if c == "-" else re.escape(c))
            i += 1
