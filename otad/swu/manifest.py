"""sw-description → SwDescription → select() → Manifest, read the way SWUpdate 2022.12 reads it.

The way in, and the names callers import. Owns the syntax: libconfig first, JSON second (as
json-c reads it) and the root group `software`. Selecting is otad.swu.selection's, reading an
entry's attributes otad.swu.entries', #RE: matching otad.swu.posixregex's; the frozen types
live in otad.swu.models (below the code that builds them) and are handed on from here. It
checks values, not the world: signatures, version policy, handlers and cpio members belong to
others. Where SWUpdate would silently ignore or misread a value, otad refuses with a ManifestError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Tuple

from otad import libconfig
from otad.errors import ManifestError
from otad.swu import selection as lookup
from otad.swu.models import (BootenvVar, DeltaProperties, Entry, File, HardwareRevision, Image, Manifest, Script,
                              Selection, show)
from otad.swu.selection import ROOT

__all__ = ["BootenvVar", "DeltaProperties", "Entry", "File", "HardwareRevision", "Image", "Manifest", "Script", "Selection",
           "SwDescription", "parse"]

# json-c's default nesting limit; SWUpdate fails to parse deeper JSON.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class SwDescription:
    """A parsed sw-description before any selection: the tree under its root, unresolved."""

    source: str
    tree: Mapping[str, Any] = field(hash=False)  # the whole document; `software` is its root group
    syntax: str = "libconfig"  # or "json"

    def boards(self) -> Tuple[str, ...]:
        """Names under `software` that are board sections (hold sets, or sections directly)."""
        return lookup.boards(self)

    def selections(self) -> Tuple[Selection, ...]:
        """Every (set, mode) pair available, under boards too, in file order."""
        return lookup.selections(self)

    def select(self, board: Optional[str] = None, selection: Optional[Selection] = None) -> Manifest:
        """The manifest for `board` and `selection` (set, mode), found as SWUpdate finds it.

        CompatibilityError when the selection does not exist or it selects nothing to install;
        ManifestError for anything malformed on the way.
        """
        return lookup.select(self, board, selection)


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
            raise ManifestError(f"NUL character in JSON string {show(value)}", source)
        _check_json(value, source, depth + 1)
