"""otad's JSON state files read back, and the one policy for a file that cannot be read.

Each store is one small JSON object, written whole through otad.durable and read whole by
`read_object`: no file is None; a file that cannot be opened is a StateError; content that is
not one JSON object (over the store's cap, not UTF-8, not JSON, NaN or Infinity, nested deeper
than MAX_DEPTH, another type at the top) is StateCorrupt naming the file and what is wrong.
The store's parser then checks its fields (`JsonObject` gives typed access) and its errors
become StateCorrupt too. What an unreadable file does next depends on what the store is:

  record  state.json, outbox.json, actions.json: the only copy of what must reach its end (the
          trial to decide, a final result to report, an action never to install twice).
          `read_record`: StateCorrupt goes to the user, the file stays as it is until `otad
          state reset` sets it aside as FILE.corrupt (`set_aside_unreadable`) and that store
          starts empty.
  cache   resume.json, targets.json: losing it costs a download from byte 0 or an unknown
          install state. `read_cache`: one warning, read as absent; the process that owns the
          file sets it aside as FILE.corrupt (the last one kept) before it writes again;
          `otad status` only looks.
  view    daemon.json, writer.json: rewritten by their one writer, only shown by others
          (otad status, a refused writer): shown as unreadable or unknown, never changed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional, TypeVar

from otad.errors import StateCorrupt, StateError
from otad.smallfile import read_capped

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DEPTH = 16  # otad's deepest store (resume.json) nests 4 levels
ASIDE_SUFFIX = ".corrupt"


def read_object(path: str, *, limit: int) -> Optional[Dict[str, Any]]:
    """The JSON object in `path`, None when there is no file. StateError if it cannot be
    opened, StateCorrupt if its content is not one JSON object within the limits."""
    try:
        with open(path, "rb") as f:
            raw = read_capped(f, limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read: {exc.strerror or exc}", path) from exc
    if len(raw) > limit:
        raise StateCorrupt(f"expected a JSON object of at most {limit} bytes, got more", path)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise StateCorrupt(f"expected UTF-8, got byte {raw[exc.start]:#04x} at offset {exc.start}", path) from None
    except RecursionError:
        raise StateCorrupt(f"expected JSON nested at most {MAX_DEPTH} deep, got more", path) from None
    except ValueError as exc:
        raise StateCorrupt(f"not JSON: {exc}", path) from None
    if not isinstance(body, dict):
        raise StateCorrupt(f"expected a JSON object, got {type(body).__name__}", path)
    if _depth(body) > MAX_DEPTH:
        raise StateCorrupt(f"expected JSON nested at most {MAX_DEPTH} deep, got more", path)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deep lists and objects nest in `value` (an object of scalars: 1), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)) and level <= MAX_DEPTH:
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
        elif isinstance(item, (dict, list)):
            return level
    return deepest


def read_record(path: str, parse: Callable[[Dict[str, Any]], T], *, limit: int,
                consequence: str = "") -> Optional[T]:
    """A record's content, `parse`d (None: no file). StateError if it cannot be opened; content
    that `read_object` or `parse` (raising StateError) refuses is StateCorrupt saying that the
    file stays and how to go on (`consequence`: what setting it aside gives up)."""
    try:
        body = read_object(path, limit=limit)
    except StateCorrupt as exc:
        raise _kept(exc, path, consequence) from None
    if body is None:
        return None
    try:
        return parse(body)
    except StateError as exc:
        raise _kept(exc, path, consequence) from None


def _kept(exc: StateError, path: str, consequence: str = "") -> StateCorrupt:
    """The record policy's error: what is wrong, that the file stays, how to go on."""
    return StateCorrupt(f"{exc.what}; the file is kept as it is: `otad state reset` sets it aside"
                        f"{consequence}", _within(path, exc.where))


def _within(path: str, where: Optional[str]) -> str:
    """`where` (a field of the file, or the file itself) as a place in the file at `path`."""
    return path if not where else where if where.startswith(path) else f"{path}: {where}"


def read_cache(path: str, parse: Callable[[Dict[str, Any]], T], *, limit: int, owner: bool) -> Optional[T]:
    """A cache's content, `parse`d; None when there is none or it cannot be read (one warning).
    The `owner` (the process that writes the file) sets unreadable content aside first, so it is
    never lost silently; a reader that only looks (otad status) changes nothing."""
    try:
        body = read_object(path, limit=limit)
    except StateCorrupt as exc:
        _dropped(path, exc, owner)
        return None
    except StateError as exc:  # cannot be opened: nothing to set aside
        log.warning("%s: %s; taken as absent", path, exc.what)
        return None
    if body is None:
        return None
    try:
        return parse(body)
    except StateError as exc:
        _dropped(path, exc, owner)
        return None


def _dropped(path: str, exc: StateError, owner: bool) -> None:
    if not owner:
        log.warning("%s unreadable, taken as absent: %s", _within(path, exc.where), exc.what)
        return
    try:
        aside = set_aside(path)
    except OSError as err:
        log.warning("%s unreadable (%s) and cannot be set aside: %s", path, exc.what, err.strerror or err)
        return
    log.warning("%s unreadable, moved to %s and taken as absent: %s", _within(path, exc.where), aside, exc.what)


def set_aside_unreadable(path: str, load: Callable[[], object]) -> Optional[str]:
    """`otad state reset` for one record: if `load` finds its content unreadable (StateCorrupt),
    rename the file to FILE.corrupt and return that name; None when it reads (or is absent)."""
    try:
        load()
        return None
    except StateCorrupt:
        pass
    try:
        return set_aside(path)
    except OSError as exc:
        raise StateError(f"cannot set the unreadable file aside: {exc.strerror or exc}", path) from exc


def set_aside(path: str) -> str:
    """Rename `path` to `path.corrupt` (replacing an older one); return the new name."""
    aside = path + ASIDE_SUFFIX
    os.replace(path, aside)
    return aside


class JsonObject:
    """Typed access to one JSON object, naming the field in every error."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise StateError(f"expected an object, got {type(data).__name__}", where)
        self._data = data
        self._where = where

    def get(self, key: str, kind: Any) -> Any:
        if key not in self._data:
            raise StateError(f"{key}: missing", self._where)
        value = self._data[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StateError(f"{key}: wrong type {type(value).__name__}", self._where)
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise StateError(f"{key}: negative ({value})", self._where)
        return int(value)
