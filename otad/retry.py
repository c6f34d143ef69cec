"""Retry arithmetic shared by every download: capped backoff, and when a broken transfer is given up.

Owns frozen policy objects only (randomness passed in); sleeping, clocks and HTTP belong to the
callers: the hawkBit artifact download (otad.hawkbit.download) and chunk fetching (otad.delta.fetch),
which both import it from here, below them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from otad.errors import ConfigError

MAX_EXPONENT = 62  # 2**62 s is far past any cap: keeps base * 2**attempt a finite float


def check_policy(ok: bool, what: str) -> None:
    """A policy value out of range is a ConfigError naming it (policies come from otad.conf)."""
    if not ok:
        raise ConfigError(what)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: attempt 0 waits up to `base_s`, each next one twice as long.

    `jitter="full"` draws U(0, ceiling) (AWS's "full jitter": a fleet that failed together
    spreads out); `"none"` returns the ceiling itself.
    """

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: str = "full"

    def __post_init__(self) -> None:
        check_policy(math.isfinite(self.base_s) and self.base_s > 0,
                     f"Backoff.base_s: expected a number > 0, got {self.base_s!r}")
        check_policy(math.isfinite(self.cap_s) and self.cap_s >= self.base_s,
                     f"Backoff.cap_s: expected a number >= base_s ({self.base_s}), got {self.cap_s!r}")
        check_policy(self.jitter in ("full", "none"),
                     f"Backoff.jitter: expected 'full' or 'none', got {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` (0-based)."""
        if attempt < 0:
            raise ValueError(f"attempt: expected >= 0, got {attempt}")
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt, MAX_EXPONENT))

    def next(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        top = self.ceiling(attempt)
        return rng.uniform(0.0, top) if self.jitter == "full" else top


@dataclass(frozen=True)
class ResumePolicy:
    """When a broken artifact download is resumed, and when it is given up.

    `max_attempts` and `max_stall_s` count from the last byte received, so a long download over
    a flaky link goes on as long as it advances; `max_reopens` bounds the whole download, so a
    server that drops every connection after a few bytes still ends it.
    """

    max_attempts: int = 10
    max_stall_s: float = 900.0
    max_reopens: int = 1000
    backoff: Backoff = Backoff(base_s=1.0, cap_s=60.0)

    def __post_init__(self) -> None:
        check_policy(self.max_attempts >= 1, f"ResumePolicy.max_attempts: expected >= 1, got {self.max_attempts!r}")
        check_policy(math.isfinite(self.max_stall_s) and self.max_stall_s > 0,
                     f"ResumePolicy.max_stall_s: expected a number > 0, got {self.max_stall_s!r}")
        check_policy(self.max_reopens >= self.max_attempts,
                     f"ResumePolicy.max_reopens: expected >= max_attempts ({self.max_attempts}), "
               f"got {self.max_reopens!r}")
