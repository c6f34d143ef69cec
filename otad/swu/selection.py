"""SWUpdate's lookup order: which parts of a parsed sw-description one selection installs.

Owns the four lookup paths of board and set/mode, `ref` links (SWUpdate's find_root and
set_find_path, with their limits), lists of entries spliced through links, `bootenv` before the
deprecated `uboot`, and embedded-script hooks; builds the Manifest from the entries it finds,
each read by otad.swu.entries. The syntax (libconfig, JSON) is otad.swu.manifest's.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, NoReturn, Optional, Protocol, Tuple

from otad.errors import CompatibilityError, ManifestError
from otad.swu.entries import EntryReader, read_file, read_image, read_script
from otad.swu.models import BootenvVar, Image, Manifest, Selection, describe_selection, show

log = logging.getLogger(__name__)

ROOT = "software"
# Names SWUpdate looks up under each section; they cannot name a set, mode or board.
RESERVED = frozenset({"version", "hardware-compatibility", "uboot", "bootenv", "files", "scripts",
                      "partitions", "images"})
_SECTION_KEYS = RESERVED | {"description", "bootloader_transaction_marker", "bootloader_state_marker",
                            "embedded-script"}
# SWUpdate's find_root() gives up after MAX_LINKS_DEPTH (10) calls: at most 8 links in a chain.
MAX_LINKS = 8
# SWUpdate's MAX_PARSED_NODES: a link may not lead deeper than this.
MAX_PATH_DEPTH = 20

_Path = Tuple[str, ...]


class Document(Protocol):
    """What a selection reads of a parsed sw-description (otad.swu.manifest.SwDescription)."""

    @property
    def source(self) -> str: ...

    @property
    def tree(self) -> Mapping[str, Any]: ...

    @property
    def syntax(self) -> str: ...


def boards(description: Document) -> Tuple[str, ...]:
    """Names under `software` that are board sections (hold sets, or sections directly)."""
    tree = _Tree(description)
    return tuple(name for name, _ in tree.groups((ROOT,))
                 if _is_section(tree.follow((ROOT, name))) or any(True for _ in tree.modes((ROOT, name))))


def selections(description: Document) -> Tuple[Selection, ...]:
    """Every (set, mode) pair available, under boards too, in file order."""
    return _selections(_Tree(description))


def select(description: Document, board: Optional[str], selection: Optional[Selection]) -> Manifest:
    """The manifest for `board` and `selection` (set, mode), found as SWUpdate finds it."""
    return _Selector(_Tree(description), board or None, selection).manifest()


class _Tree:
    """Lookups in the parsed document with SWUpdate's link (`ref`) semantics."""

    def __init__(self, description: Document) -> None:
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
            self.fail(f"{where}: expected a link like '#./name', got {show(ref)}")
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


def _selections(tree: _Tree) -> Tuple[Selection, ...]:
    found = list(tree.modes((ROOT,)))
    for board, _ in tree.groups((ROOT,)):
        found.extend(tree.modes((ROOT, board)))
    return tuple(dict.fromkeys(found))


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
        self.processed: List[EntryReader] = []  # every entry SWUpdate would run a `hook` on

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
        images = self.entries("images", read_image)
        files = self.entries("files", read_file)
        scripts = self.entries("scripts", read_script)
        bootenv, bootfiles = self.bootenv()
        self._check_hooks(script)
        if not (images or files or scripts or bootenv or bootfiles):
            raise CompatibilityError(f"found nothing to install for {describe_selection(self.board, self.selection)}"
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
        available = _selections(self.tree)
        return f" (available: {', '.join(','.join(s) for s in available)})" if available else ""

    def scalar(self, key: str, kind: type, expected: str) -> Any:
        found = self.find(key)
        if found is None:
            return None
        path, value = found
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.tree.fail(f"{_dotted(path)}: expected {expected}, got {show(value)}")
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
                           f"got {show(value)}")
        return tuple(v for v in value if v)  # SWUpdate skips empty strings

    def entries(self, key: str, build: Callable[[EntryReader], Any]) -> List[Tuple[EntryReader, Any]]:
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

    def expand(self, path: _Path, value: Any, stack: Tuple[_Path, ...]) -> Iterator[EntryReader]:
        """The entries of the list at `path`; an element `{ ref = "#..."; }` stands for the
        entries of the list it names (SWUpdate's parser_follow_link)."""
        for where, element in self._elements(path, value):
            if not isinstance(element, dict):
                self.tree.fail(f"{where}: expected an entry group {{ ... }}, got {show(element)}")
            if "ref" not in element:
                yield EntryReader(where, element, self.tree.source)
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
        self.tree.fail(f"{_dotted(path)}: expected a list ( {{ ... }}, ... ) of entries{hint}, got {show(value)}")

    def bootenv(self) -> Tuple[Tuple[BootenvVar, ...], List[Tuple[EntryReader, Image]]]:
        """`bootenv`, or the deprecated `uboot` only when no path has `bootenv` (SWUpdate)."""
        found = self.find("bootenv") or self.find("uboot")
        if found is None:
            return (), []
        variables: Dict[str, BootenvVar] = {}
        files: List[Tuple[EntryReader, Image]] = []
        for entry in self.expand(*found, stack=()):
            if "name" in entry.values:
                self.processed.append(entry)
                var = entry.bootenv_var()
                # SWUpdate walks the list backwards into a dictionary: the first one wins.
                variables.setdefault(var.name, var)
            elif entry.filename() is not None:
                self.processed.append(entry)
                files.append((entry, read_image(entry, bootloader=True)))
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


def _dotted(path: _Path) -> str:
    return ".".join(path)
