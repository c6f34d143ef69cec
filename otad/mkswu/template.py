"""The sw-description template: read, substituted, located, and edited as text.

swugenerator's @@VARIABLE@@ and $swupdate_get_sha256/size() substitutions, the entries that
name an artifact (any group with a `filename`, checked), and the edits swugenerator makes
(filename, sha256, ivt, sizes) written into the text in place, comments and layout kept, then
read back to prove nothing else changed. How the artifacts are stored is otad.mkswu.staging's.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from otad.errors import ConfigError
from otad.mkswu.inputs import chunks, find_artifact, open_source, read_input
from otad.mkswu.staging import Digest, StoredArtifact

DESCRIPTION = "sw-description"
SIG_NAME = "sw-description.sig"
COMPRESSIONS = ("zlib", "zstd")

_Path = Tuple[Union[str, int], ...]


def load_variables(path: str) -> Dict[str, str]:
    """swugenerator's `-c` file: `variables = { NAME = "value"; };` for @@NAME@@ in the template."""
    from otad import libconfig

    group = libconfig.loads(read_input(path, "configuration file"), source=path).get("variables", {})
    if not isinstance(group, dict):
        raise ConfigError('variables: expected a group { NAME = "value"; }', path)
    for name, value in group.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"variables.{name}: expected a string, got {value!r}", path)
    return {name: str(value) for name, value in group.items()}


_VARIABLE = re.compile(r"@@(\w+)@@")
_FUNCTION = re.compile(r"\$(swupdate_get_sha256|swupdate_get_size)\(([^()\n]*)\)")
# Enough of libconfig's scanner to find spans in a text that `libconfig.loads` accepted.
_SCAN = re.compile(r"""(?P<space>[ \t\r\n\f]+)
    | (?P<comment>/\*.*?\*/|(?:\#|//)[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<punct>[{}()\[\]=:;,])
    | (?P<atom>[-+.*\w]+)""", re.VERBOSE | re.DOTALL)
_LINE_COMMENT = re.compile(r"[ \t]*(?:(?:#|//).*)?")
_CLOSE = {"{": "}", "(": ")", "[": "]"}


@dataclass
class _Node:
    """A group, list or array as written: offsets of its brackets, its settings or items."""

    kind: str
    start: int
    end: int = -1
    settings: Dict[str, "_Setting"] = field(default_factory=dict)
    items: List["_Value"] = field(default_factory=list)


@dataclass
class _Value:
    start: int
    end: int
    node: Optional[_Node] = None


@dataclass
class _Setting:
    name: str
    start: int
    value: _Value
    end: int  # after the `;` or `,` if there is one
    terminated: bool


class _Scanner:
    """Recursive descent over tokens; the grammar was already checked by `libconfig.loads`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: List[Tuple[str, int, int]] = []
        pos = 0
        while pos < len(text):
            m = _SCAN.match(text, pos)
            assert m is not None, f"libconfig accepted a text mkswu cannot scan at offset {pos}"
            kind = str(m.lastgroup)
            if kind not in ("space", "comment"):
                self.tokens.append((m.group() if kind == "punct" else kind, m.start(), m.end()))
            pos = m.end()
        self.i = 0

    def peek(self) -> str:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else ""

    def take(self) -> Tuple[str, int, int]:
        self.i += 1
        return self.tokens[self.i - 1]

    def root(self, size: int) -> _Node:
        node = _Node("{", -1, size)
        self.settings(node)
        assert self.i == len(self.tokens), "tokens left after the last setting"
        return node

    def settings(self, node: _Node) -> None:
        while self.peek() == "atom":
            _, start, end = self.take()
            name = self.text[start:end]
            self.take()  # '=' or ':'
            value = self.value()
            terminated = self.peek() in (";", ",")
            after = self.take()[2] if terminated else value.end
            node.settings[name] = _Setting(name, start, value, after, terminated)

    def value(self) -> _Value:
        kind, start, end = self.take()
        if kind in _CLOSE:
            node = _Node(kind, start)
            if kind == "{":
                self.settings(node)
            while self.peek() != _CLOSE[kind]:
                node.items.append(self.value())
                if self.peek() == ",":
                    self.take()
            node.end = self.take()[1]
            return _Value(start, node.end + 1, node)
        while kind == "string" and self.peek() == "string":  # adjacent literals are one value
            end = self.take()[2]
        return _Value(start, end)


@dataclass(frozen=True)
class Template:
    """The template after @@VAR@@/$function substitution, its tree and its written layout."""

    source: str
    text: str
    tree: Mapping[str, Any] = field(hash=False)
    root: _Node = field(hash=False, compare=False)


def read_template(path: str, variables: Mapping[str, str], dirs: Sequence[str]) -> Template:
    from otad import libconfig

    raw = read_input(path, "template")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not valid UTF-8: byte {raw[exc.start]:#04x}", f"{path}:{line}") from None
    text = "\n".join(_substitute(line, f"{path}:{n}", variables, dirs)
                     for n, line in enumerate(text.split("\n"), 1))
    tree = libconfig.loads(text, source=path, error=ConfigError)
    if not isinstance(tree.get("software"), dict):
        raise ConfigError("no root group 'software': expected `software = { ... };`", path)
    return Template(path, text, tree, _Scanner(text).root(len(text)))


def _substitute(line: str, where: str, variables: Mapping[str, str], dirs: Sequence[str]) -> str:
    """swugenerator's @@NAME@@ variables, then its $swupdate_get_sha256/size(artifact) functions."""
    def variable(m: "re.Match[str]") -> str:
        if m.group(1) not in variables:
            hint = "" if variables else " (no -c file with a `variables` group was given)"
            raise ConfigError(f"@@{m.group(1)}@@ is not defined{hint}", where)
        return variables[m.group(1)]

    def function(m: "re.Match[str]") -> str:
        path = find_artifact(m.group(2).strip(), dirs, where)
        if m.group(1) == "swupdate_get_size":
            return str(os.path.getsize(path))
        with open_source(path) as src:
            return Digest().feed(chunks(src, path)).sha256.hexdigest()

    return _FUNCTION.sub(function, _VARIABLE.sub(variable, line))


def _lookup(tree: Any, path: _Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _label(path: _Path) -> str:
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


# --- entries: the groups that name an artifact --------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A group under `software` that has a `filename` (images, files, scripts, any section)."""

    label: str  # software.stable.copy2.images[0]
    where: str  # template:line of its filename
    path: _Path
    node: _Node = field(compare=False, repr=False)
    filename: str
    compression: Optional[str]  # what `compressed` asks for
    encrypted: bool
    type: Optional[str]
    values: Mapping[str, Any] = field(compare=False, repr=False)  # the entry's settings as read

    @property
    def ubivol(self) -> bool:
        return self.type == "ubivol"

    @property
    def delta(self) -> bool:
        return self.type == "delta"

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.label} {self.filename!r}: {what}", self.where)


def _groups_with_filename(node: _Node, path: _Path) -> Iterator[Tuple[_Path, _Node]]:
    """Like swugenerator: every group at any depth that holds a `filename`, in file order."""
    if node.kind == "{" and "filename" in node.settings:
        yield path, node
    children: List[Tuple[Union[str, int], _Value]] = [(k, s.value) for k, s in node.settings.items()]
    children += list(enumerate(node.items))
    for key, value in children:
        if value.node is not None:
            yield from _groups_with_filename(value.node, path + (key,))


def find_entries(template: Template) -> List[Entry]:
    software = template.root.settings["software"].value.node
    assert software is not None
    return [_entry(template, path, node) for path, node in _groups_with_filename(software, ("software",))]


def _entry(template: Template, path: _Path, node: _Node) -> Entry:
    from otad.swu.cpio import name_problem

    values = _lookup(template.tree, path)
    line = template.text.count("\n", 0, node.settings["filename"].start) + 1
    where, label, filename = f"{template.source}:{line}", _label(path), values["filename"]

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{label} {filename!r}: {what}", where)

    if not isinstance(filename, str):
        raise ConfigError(f"{label}.filename: expected a string, got {filename!r}", where)
    problem = name_problem(filename) or ("reserved for the bundle's own members"
                                         if filename in (DESCRIPTION, SIG_NAME) else "")
    if problem:
        raise fail(f"filename: {problem}")
    compressed, encrypted = values.get("compressed"), values.get("encrypted", False)
    if compressed is not None and compressed not in COMPRESSIONS and not isinstance(compressed, bool):
        raise fail(f"compressed: unknown compression {compressed!r}: expected 'zlib' or 'zstd'")
    if not isinstance(encrypted, bool):
        raise fail(f"encrypted: expected true or false, got {encrypted!r}")
    if not isinstance(values.get("properties", {}), dict):
        raise fail('properties: expected a group { key = "value"; }')
    kind = values.get("type")
    compression = "zlib" if compressed is True else compressed or None  # true: SWUpdate's legacy zlib
    return Entry(label, where, path, node, filename, compression, encrypted, kind if isinstance(kind, str) else None,
                 values)


# --- editing the template text ---------------------------------------------------------------

@dataclass(frozen=True)
class Set:
    """Set `name` to `value` (a string, or a boolean written bare), or merge `children` into the group `name`."""

    name: str
    value: Union[str, bool] = ""
    children: Tuple["Set", ...] = ()


def entry_updates(entry: Entry, stored: StoredArtifact) -> Tuple[Set, ...]:
    """What swugenerator writes into an entry: filename, sha256, ivt and size properties."""
    sets = [Set("filename", stored.member)] if stored.member != entry.filename else []
    sets.append(Set("sha256", stored.sha256))
    properties = []
    if entry.ubivol and stored.compression:  # ubivol sizes the volume before it decompresses
        properties.append(Set("decompressed-size", str(stored.source_size)))
    if stored.ivt:
        sets.append(Set("ivt", stored.ivt))
        properties.append(Set("decrypted-size", str(stored.plain_size)))
    if properties:
        sets.append(Set("properties", children=tuple(properties)))
    return tuple(sets)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f"}


def _quote(value: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or c == "\x7f" else c)
                         for c in value) + '"'


def _render(s: Set) -> str:
    if s.children:
        return f"{s.name} = {{ {' '.join(map(_render, s.children))} }};"
    if isinstance(s.value, bool):
        return f"{s.name} = {'true' if s.value else 'false'};"
    return f"{s.name} = {_quote(s.value)};"


Edit = Tuple[int, int, str]


def _group_edits(text: str, node: _Node, sets: Sequence[Set]) -> List[Edit]:
    edits: List[Edit] = []
    new: List[str] = []
    for s in sets:
        setting = node.settings.get(s.name)
        if setting is None:
            new.append(_render(s))
        elif not s.children:
            edits.append((setting.value.start, setting.value.end, _render(s).split(" = ", 1)[1][:-1]))
        else:
            assert setting.value.node is not None and setting.value.node.kind == "{", "checked by _entry"
            edits += _group_edits(text, setting.value.node, s.children)
    return edits + (_insertion(text, node, new) if new else [])


def _insertion(text: str, node: _Node, new: Sequence[str]) -> List[Edit]:
    """New settings after the group's last one, on new lines when the group is written that way."""
    if not node.settings:
        return [(node.start + 1, node.start + 1, " " + " ".join(new) + " ")]
    last = max(node.settings.values(), key=lambda s: s.start)
    semicolon = "" if last.terminated else ";"
    indent = text[text.rfind("\n", 0, last.start) + 1:last.start]
    if indent.strip(" \t"):  # the group is written on one line: continue it
        return [(last.end, last.end, semicolon + "".join(" " + s for s in new))]
    lines = "".join(("\r\n" if "\r\n" in text else "\n") + indent + s for s in new)
    line_end = text.find("\n", last.end)
    rest = text[last.end:len(text) if line_end < 0 else line_end].rstrip("\r")
    if rest and _LINE_COMMENT.fullmatch(rest):  # a comment after the last setting stays on its line
        return [(last.end, last.end, semicolon), (last.end + len(rest), last.end + len(rest), lines)]
    return [(last.end, last.end, semicolon + lines)]


def _apply(text: str, edits: List[Edit]) -> str:
    pieces, pos = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        assert start >= pos, f"overlapping template edits at offset {start}"
        pieces += [text[pos:start], new]
        pos = end
    return "".join(pieces + [text[pos:]])


def _set_values(group: Dict[str, Any], sets: Sequence[Set]) -> None:
    for s in sets:
        if s.children:
            _set_values(group.setdefault(s.name, {}), s.children)
        else:
            group[s.name] = s.value


# --- new modes: a copy of a mode with some of its entries written anew ---------------------------

@dataclass(frozen=True)
class Replacement:
    """An entry as a copied mode holds it: its settings but those in `drop` (names, or
    `properties.NAME`), then `sets` (top-level settings only)."""

    entry: Entry
    drop: FrozenSet[str]
    sets: Tuple[Set, ...]


@dataclass(frozen=True)
class ModeCopy:
    """A new mode `name` in the same set as the mode at `mode`: that mode as edited, with the
    entries of `replacements` (all inside it) replaced."""

    mode: _Path
    name: str
    replacements: Tuple[Replacement, ...]


def _value_at(node: _Node, path: _Path) -> _Value:
    value: Optional[_Value] = None
    for key in path:
        assert node is not None, f"{_label(path)}: not a group or list"
        value = node.settings[key].value if isinstance(key, str) else node.items[key]
        node = value.node  # type: ignore[assignment]
    assert value is not None
    return value


def _setting_text(text: str, setting: _Setting) -> str:
    return text[setting.start:setting.end] + ("" if setting.terminated else ";")


def _entry_text(text: str, r: Replacement) -> str:
    names = {s.name for s in r.sets}
    parts = []
    for name, setting in r.entry.node.settings.items():
        if name in r.drop or name in names:
            continue
        group = setting.value.node
        if name == "properties" and group is not None:
            kept = [_setting_text(text, p) for n, p in group.settings.items() if f"properties.{n}" not in r.drop]
            parts += [f"properties = {{ {' '.join(kept)} }};"] if kept else []
            continue
        parts.append(_setting_text(text, setting))
    return "{ " + " ".join(parts + [_render(s) for s in r.sets]) + " }"


def _copy_text(template: Template, c: ModeCopy, edits: Sequence[Edit]) -> str:
    """The mode's text with the entry edits inside it and the replaced entries written anew."""
    mode = _value_at(template.root, c.mode)
    spans = {r.entry.node.start: (r.entry.node.start, r.entry.node.end + 1, r) for r in c.replacements}
    local: List[Edit] = [(a - mode.start, b - mode.start, _entry_text(template.text, r)) for a, b, r in spans.values()]
    for start, end, new in edits:
        inside = mode.start <= start and end <= mode.end
        if inside and not any(a <= start and end <= b for a, b, _ in spans.values()):
            local.append((start - mode.start, end - mode.start, new))
    return _apply(template.text[mode.start:mode.end], local)


def _copy_value(expected: Dict[str, Any], c: ModeCopy) -> Any:
    mode = copy.deepcopy(_lookup(expected, c.mode))
    for r in c.replacements:
        entry = _lookup(mode, r.entry.path[len(c.mode):])
        kept = {k: v for k, v in entry.items() if k not in r.drop and k != "properties"}
        properties = {k: v for k, v in entry.get("properties", {}).items() if f"properties.{k}" not in r.drop}
        kept.update({"properties": properties} if properties else {})
        kept.update({s.name: s.value for s in r.sets})
        entry.clear()
        entry.update(kept)
    return mode


def edit_template(template: Template, entries: Sequence[Entry], updates: Sequence[Tuple[Set, ...]],
                  copies: Sequence[ModeCopy] = ()) -> str:
    """The template text with every entry updated and the new modes added beside theirs;
    re-read to prove nothing else changed."""
    from otad import libconfig

    edits = [e for entry, sets in zip(entries, updates) for e in _group_edits(template.text, entry.node, sets)]
    by_set: Dict[_Path, List[str]] = {}
    for c in copies:
        by_set.setdefault(c.mode[:-1], []).append(f"{c.name} = {_copy_text(template, c, edits)};")
    for set_path, new in by_set.items():
        node = _value_at(template.root, set_path).node
        assert node is not None and node.kind == "{", f"{_label(set_path)}: not a group"
        edits += _insertion(template.text, node, new)
    text = _apply(template.text, edits)
    expected = copy.deepcopy(dict(template.tree))
    for entry, sets in zip(entries, updates):
        _set_values(_lookup(expected, entry.path), sets)
    for c in copies:
        _lookup(expected, c.mode[:-1])[c.name] = _copy_value(expected, c)
    assert libconfig.loads(text, source=template.source) == expected, "template edit went wrong"
    return text
