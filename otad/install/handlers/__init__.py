"""The handler registry: which handler class installs which sw-description `type`.

An explicit dict, never filled as a side effect of importing. A handler turns an entry into
a `Target` before anything is written (`plan`, where every check that can fail early runs)
and opens a `Sink` for it (`open`). Types missing here are refused before the first write.
"""

from __future__ import annotations

from typing import ContextManager, Dict, Protocol, Type

from otad.install.handlers.raw import RawHandler
from otad.install.pipeline import Sink
from otad.swu.manifest import Image


class Target(Protocol):
    description: str
    capacity: int


class Handler(Protocol):
    def __init__(self, device_dir: str) -> None: ...

    def plan(self, entry: Image) -> Target: ...

    def open(self, target: Target, *, dry_run: bool) -> ContextManager[Sink]: ...


HANDLERS: Dict[str, Type[RawHandler]] = {
    "raw": RawHandler,
}
