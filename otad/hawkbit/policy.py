"""Timing policy for talking to hawkBit: poll intervals and the server's time values.

Owns the arithmetic only (frozen dataclasses, pure functions, randomness passed in); sleeping,
clocks and HTTP belong to the callers. Parses `sleep` and `Retry-After` and clamps both. The
retry arithmetic shared with chunk fetching (Backoff, ResumePolicy) is otad.retry's.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
from dataclasses import dataclass
from typing import Optional

from otad.errors import MalformedResponse
from otad.retry import Backoff
from otad.retry import check_policy as _check

RETRY_AFTER_CAP_S = 3600.0  # a proxy's Retry-After is honoured up to an hour (hawkBit sends none)

_CLOCK = re.compile(r"(\d{1,9})(?::(\d{1,2}))?(?::(\d{1,2}))?")
_ISO = re.compile(r"P(?:(\d{1,9})W)?(?:(\d{1,9})D)?"
                  r"(?:T(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{1,9}(?:[.,]\d{1,9})?)S)?)?")
_DELTA = re.compile(r"\d{1,12}")


@dataclass(frozen=True)
class PollPolicy:
    """How long to wait between root polls, given the server's `sleep`.

    The server's value is clamped to [min_s, max_s]. Jitter only shortens the wait (sleep ×
    U(1 - jitter_fraction, 1)): hawkBit flags a target overdue after sleep + 5 min, never earlier.
    """

    min_s: float = 1.0  # hawkBit's own floor is 30 s; tests poll every second
    max_s: float = 86400.0
    jitter_fraction: float = 0.1
    first_poll_max_s: float = 60.0
    error_backoff_base_s: float = 1.0

    def __post_init__(self) -> None:
        _check(math.isfinite(self.min_s) and self.min_s > 0,
               f"PollPolicy.min_s: expected a number > 0, got {self.min_s!r}")
        _check(math.isfinite(self.max_s) and self.max_s >= self.min_s,
               f"PollPolicy.max_s: expected a number >= min_s ({self.min_s}), got {self.max_s!r}")
        _check(0.0 <= self.jitter_fraction < 1.0,
               f"PollPolicy.jitter_fraction: expected 0 <= j < 1, got {self.jitter_fraction!r}")
        _check(math.isfinite(self.first_poll_max_s) and self.first_poll_max_s >= 0,
               f"PollPolicy.first_poll_max_s: expected a number >= 0, got {self.first_poll_max_s!r}")
        _check(math.isfinite(self.error_backoff_base_s) and self.error_backoff_base_s > 0,
               f"PollPolicy.error_backoff_base_s: expected a number > 0, got {self.error_backoff_base_s!r}")

    def clamp(self, server_sleep_s: float) -> float:
        """The server's sleep limited to [min_s, max_s] (NaN counts as max_s)."""
        if math.isnan(server_sleep_s):
            return self.max_s
        return min(self.max_s, max(self.min_s, server_sleep_s))

    def interval(self, server_sleep_s: float, rng: random.Random) -> float:
        """Seconds until the next root poll."""
        sleep = self.clamp(server_sleep_s)
        return max(self.min_s, sleep * rng.uniform(1.0 - self.jitter_fraction, 1.0))

    def first_delay(self, server_sleep_s: float, rng: random.Random) -> float:
        """Seconds to wait before the first poll after boot, so a fleet does not poll in lockstep."""
        return rng.uniform(0.0, min(self.clamp(server_sleep_s), self.first_poll_max_s))

    def error_delay(self, attempt: int, server_sleep_s: float, rng: random.Random,
                    retry_after_s: Optional[float] = None) -> float:
        """Seconds to wait after failed poll number `attempt` (0-based).

        A server's Retry-After wins (already capped by `retry_after`); otherwise full-jitter
        backoff from `error_backoff_base_s` up to the poll interval, never faster than `min_s`.
        """
        if retry_after_s is not None:
            return max(self.min_s, min(retry_after_s, RETRY_AFTER_CAP_S))
        cap = max(self.clamp(server_sleep_s), self.error_backoff_base_s)
        backoff = Backoff(base_s=self.error_backoff_base_s, cap_s=cap)
        return max(self.min_s, backoff.next(attempt, rng))


def parse_sleep(text: str) -> float:
    """hawkBit's `config.polling.sleep` in seconds: HH:MM:SS, MM:SS, SS or ISO-8601 (PT26H, P1DT2H)."""
    value = text.strip() if isinstance(text, str) else text
    if isinstance(value, str):
        seconds = _parse_clock(value) if value[:1].isdigit() else _parse_iso(value)
        if seconds is not None:
            return seconds

    raise MalformedResponse("expected HH:MM:SS, MM:SS, SS or an ISO-8601 duration such as PT26H, "
                            f"got {text!r}", field="config.polling.sleep")


def _parse_clock(text: str) -> Optional[float]:
    match = _CLOCK.fullmatch(text)
    if match is None:
        return None
    parts = [int(p) for p in match.groups() if p is not None]
    # The leading unit is unbounded ("90" seconds, "26:00:00"); the following ones are < 60.
    if any(p >= 60 for p in parts[1:]):
        return None
    total = 0
    for part in parts:
        total = total * 60 + part
    return float(total)


def _parse_iso(text: str) -> Optional[float]:
    match = _ISO.fullmatch(text.upper())
    if match is None or text.upper().endswith("T") or all(g is None for g in match.groups()):
        return None
    weeks, days, hours, minutes, seconds = match.groups()
    total = float((seconds or "0").replace(",", "."))
    for value, unit in ((weeks, 604800), (days, 86400), (hours, 3600), (minutes, 60)):
        total += int(value or 0) * unit
    return total


def retry_after(header_value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), at most one hour.

    `now` is the wall clock (time.time()) for the date form. None when the header is absent or
    unreadable: the caller then uses its own backoff. A date in the past gives 0.
    """
    if header_value is None:
        return None
    value = header_value.strip()
    if _DELTA.fullmatch(value):
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # parsedate_to_datetime gives naive only for "-0000"
        return None
    return min(max(0.0, when.timestamp() - now), RETRY_AFTER_CAP_S)
