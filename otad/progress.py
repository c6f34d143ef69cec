"""Progress events: one stream that the CLI, the daemon's feedback and the watchdog consume.

The install pipeline emits `Progress` events; whoever listens decides what to do with them
(draw a bar, throttle hawkBit feedback, pet the watchdog). Listening never changes state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional


@dataclass(frozen=True)
class Progress:
    """Where an install is: `phase` (``verify``, ``image``, ``sync``, ``done``), the item
    being worked on, bytes of the bundle consumed so far and the bundle's size if known."""

    phase: str
    item: Optional[str] = None
    done_bytes: int = 0
    total_bytes: Optional[int] = None


ProgressListener = Callable[[Progress], None]


def fan_out(listeners: Iterable[Optional[ProgressListener]]) -> ProgressListener:
    """One listener that calls each of `listeners` (None entries are ignored) in order."""
    active = [listener for listener in listeners if listener is not None]

    def emit(event: Progress) -> None:
        for listener in active:
            listener(event)

    return emit


def ignore(_event: Progress) -> None:
    """A listener that does nothing."""
